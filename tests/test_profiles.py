"""Every built-in profile end to end against a simulator that behaves like that provider,
plus validation before any request, and no secret in anything chainer writes."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import anyio
import pytest
from helpers import CHAINER

from chainer import load_plan, profiles
from chainer.errors import StoryboardError
from chainer.session import Session
from chainer.simulator import SimConfig, Simulator

FAST = {"time_scale": 0.0005, "width": 160, "height": 96}


def storyboard(tmp_path: Path, profile: str) -> Path:
    path = tmp_path / f"{profile}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: via-{profile}
        provider: {profile}
        start:
          text2video: {{prompt: "opening", model: kling-v1-6, duration: 5}}
        defaults: {{negative_prompt: "blur"}}
        segments:
          - prompt: "one"
          - prompt: "two"
            cfg_scale: 0.7
          - prompt: "three"
        output: {tmp_path / "out.mp4"}
        """)
    )
    return path


def credentials(sim: Simulator, profile: profiles.Profile) -> dict[str, str]:
    if profile.auth == "jwt":
        return {
            "KLING_ACCESS_KEY": sim.config.access_key,
            "KLING_SECRET_KEY": sim.config.secret_key,
            "KLING_BASE_URL": sim.base_url,
        }
    return {"KLING_API_KEY": sim.config.api_key, "KLING_BASE_URL": sim.base_url}


@pytest.mark.parametrize("name", sorted(profiles.BUILTIN))
def test_each_builtin_profile_end_to_end(name: str, tmp_path: Path) -> None:
    profile = profiles.BUILTIN[name]
    with Simulator(profile.simulator_config(SimConfig(**FAST)), data_dir=tmp_path / "sim", admin=True) as sim:
        env = {**credentials(sim, profile), "CHAINER_TIME_SCALE": str(sim.config.time_scale)}
        provider = profiles.from_environment(env, profile=profile)
        assert provider is not None and provider.name == name

        async def main() -> None:
            async with Session.open(
                state_dir=tmp_path / "s", archive_dir=tmp_path / "a", provider=provider
            ) as s:
                await s.run(load_plan(storyboard(tmp_path, name)))

        anyio.run(main)
        creates = sim.state.creates
        tasks = [sim.state.tasks[c.task_id] for c in creates]
    ext = re.compile(r"^chainer-[0-9a-f]{12}-\d{3}-a1-[0-9a-f]{10}$")
    assert all(ext.match(c.body["external_task_id"]) for c in creates)
    bodies = [{k: v for k, v in c.body.items() if k != "external_task_id"} for c in creates]
    assert bodies[0] == {
        "model_name": "kling-v1-6",
        "mode": "std",
        "duration": "5",
        "prompt": "opening",
        "aspect_ratio": "16:9",
    }
    for n, (body, prompt) in enumerate(zip(bodies[1:], ["one", "two", "three"], strict=True), start=1):
        want: dict[str, object] = {
            "video_id": tasks[n - 1].video_id,
            "prompt": prompt,
            "negative_prompt": "blur",
        }
        if prompt == "two":
            want["cfg_scale"] = 0.7
        if profile.send_parent_task_id:
            want["task_id"] = tasks[n - 1].task_id  # the task that produced the video being extended
        assert body == want, f"{name}: step {n}"
    assert (tmp_path / "out.mp4").is_file()


def test_provider_rules_are_checked_before_any_request(tmp_path: Path) -> None:
    cases = {
        "long.yaml": (
            "provider: cometapi\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: '" + "x" * 501 + "'}]",
            "cometapi accepts at most 500",
        ),
        "v15.yaml": (
            "provider: dmxapi\nstart: {video: {video_id: v, task_id: t, model: kling-v1-5, duration: 5}}\n"
            "segments: [{prompt: a}]",
            "does not extend videos made by kling-v1-5",
        ),
        "parent.yaml": (
            "provider: elkapi\nstart: {video: {video_id: v, model: kling-v1, duration: 5}}\n"
            "segments: [{prompt: a}]",
            "add `task_id`",
        ),
    }
    for file, (body, needle) in cases.items():
        path = tmp_path / file
        path.write_text(f"name: x\n{body}\n")
        with pytest.raises(StoryboardError) as caught:
            load_plan(path)
        assert any(needle in str(p) for p in caught.value.problems), (file, caught.value.problems)


@pytest.mark.parametrize("profile_name", ["kling", "cometapi"])
def test_no_secret_in_anything_chainer_writes(profile_name: str, tmp_path: Path) -> None:
    profile = profiles.BUILTIN[profile_name]
    secrets = {
        "access_key": "AKsecret-1234567890",
        "secret_key": "SKsecret-abcdefghijklmnopqrstuvwxyz012345",
        "api_key": "APIsecret-9876543210",
    }
    config = profile.simulator_config(SimConfig(**FAST, **secrets))
    work = tmp_path / "work"
    work.mkdir()
    with Simulator(config, data_dir=tmp_path / "sim", admin=True) as sim:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
        env.update(credentials(sim, profile), CHAINER_TIME_SCALE="0.0005")
        storyboard(work, profile_name)
        proc = subprocess.run(
            [CHAINER, "run", f"{profile_name}.yaml", "--verbose"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    used = [secrets["access_key"], secrets["secret_key"]] if profile.auth == "jwt" else [secrets["api_key"]]
    written = [proc.stdout, proc.stderr] + [
        p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()
    ]
    assert any("manifest.json" in str(p) for p in work.rglob("*"))
    for text in written:
        for secret in used:
            assert secret not in text
        assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+", text), "a JWT was written somewhere"


def test_user_profiles_override_and_extend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from chainer.cli import app

    file = tmp_path / "providers.toml"
    file.write_text(
        '[providers.cometapi]\nprompt_max_chars = 400\n\n[providers.mine]\nbase_url = "https://k.example"\n'
        'path_prefix = "/k"\nauth = "bearer"\nextend_fields = ["prompt"]\n'
    )
    monkeypatch.setenv("CHAINER_PROVIDERS", str(file))
    found = profiles.registry()
    assert found["cometapi"].prompt_max_chars == 400 and found["cometapi"].send_parent_task_id
    assert found["mine"].path_prefix == "/k" and found["mine"].extend_fields == ("prompt",)
    listing = CliRunner().invoke(app, ["providers"])
    assert listing.exit_code == 0 and "mine: user profile mine" in listing.output
    assert "prompt_max_chars = 400" in listing.output
    # a storyboard naming the user profile gets its limits, and fields it drops are warned about
    sb = tmp_path / "s.yaml"
    sb.write_text(
        "name: m\nprovider: mine\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: a, cfg_scale: 0.3}]\n"
    )
    p = load_plan(sb)
    assert p.steps[1].fields == {"prompt": "a"}
    assert any("mine ignores cfg_scale" in str(w) for w in p.warnings)
    file.write_text("[providers.bad]\nauth = 'carrier pigeon'\n")
    broken = CliRunner().invoke(app, ["providers"])
    assert broken.exit_code == 2 and "[providers.bad]" in broken.output


def test_user_profiles_are_read_once_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch plans every storyboard against the registry: the file is parsed once, and an
    edit (same size, a later mtime) is seen by the next plan."""
    file = tmp_path / "providers.toml"
    file.write_text("[providers.cometapi]\nprompt_max_chars = 400\n")
    monkeypatch.setenv("CHAINER_PROVIDERS", str(file))
    reads: list[Path] = []
    real = profiles._read
    monkeypatch.setattr(profiles, "_read", lambda path: reads.append(path) or real(path))
    assert [profiles.registry()["cometapi"].prompt_max_chars for _ in range(3)] == [400] * 3
    assert reads == [file]
    profiles.registry()["cometapi"] = profiles.BUILTIN["kling"]  # a caller's copy, not the cache's
    assert profiles.registry()["cometapi"].prompt_max_chars == 400
    stat = file.stat()
    file.write_text("[providers.cometapi]\nprompt_max_chars = 300\n")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert profiles.registry()["cometapi"].prompt_max_chars == 300 and len(reads) == 2
    file.unlink()
    assert profiles.registry()["cometapi"].prompt_max_chars == profiles.BUILTIN["cometapi"].prompt_max_chars


def test_providers_check_makes_one_cheap_read(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chainer.cli import app

    with Simulator(SimConfig(**FAST), data_dir=tmp_path / "sim", admin=True) as sim:
        env = credentials(sim, profiles.BUILTIN["kling"])
        ok = CliRunner().invoke(app, ["providers", "check", "kling"], env=env)
        assert ok.exit_code == 0, ok.output
        assert "credentials and base URL work" in ok.output
        bad = CliRunner().invoke(
            app, ["providers", "check", "kling"], env={**env, "KLING_SECRET_KEY": "wrong-" * 6}
        )
        assert bad.exit_code == 1 and "1002" in bad.output
        assert not sim.state.creates, "checking spends nothing"
    none = CliRunner().invoke(
        app, ["providers", "check", "cometapi"], env={"KLING_ACCESS_KEY": "", "KLING_API_KEY": ""}
    )
    assert none.exit_code == 2 and "needs KLING_API_KEY" in none.output
