"""The command line as a user meets it: version, help, completion, and the errors around the
happy path (each runs the installed `chainer` as a process and asserts what a user sees)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest
from helpers import CHAINER, provider_env

from chainer.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "run",
    "resume",
    "status",
    "plan",
    "validate",
    "submit",
    "worker",
    "archive",
    "adopt",
    "providers",
    "schema",
    "sim",
]


def chainer(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`chainer ARGS` as a user runs it: no Kling settings from this machine, bounded by its work."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
    return subprocess.run(
        [CHAINER, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_version_is_the_installed_distributions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kling-chainer"  # `chainer` on PyPI is Preferred Networks' framework
    for flag in ("--version", "-V"):
        done = chainer(flag)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"chainer {project['version']}"


def test_short_help_flag_and_every_command_listed_in_order() -> None:
    done = chainer("-h")
    assert done.returncode == 0
    listed = re.findall(r"^  (\w+)\s{2,}", done.stdout.split("Commands:")[1], flags=re.M)
    assert listed == COMMANDS
    for command in COMMANDS:
        sub = chainer(command, "-h")
        assert sub.returncode == 0, (command, sub.stderr)
        assert sub.stdout.startswith(f"Usage: chainer {command}")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_with_whole_option_names_and_plain_types(command: str) -> None:
    done = chainer(command, "--help", COLUMNS="80")
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert not re.search(r"<(str|int|bool|float|path|list\[)", done.stdout, flags=re.I), done.stdout
    # every option's whole name is on a line of its own column (nothing cut to "--resend-unkn…")
    from typer.main import get_command

    from chainer.cli import app

    group = get_command(app)
    command_obj = group.commands[command]  # type: ignore[attr-defined]
    for param in command_obj.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                assert re.search(rf"(^|\s|, ){re.escape(opt)}(\s|$|/| [A-Z])", done.stdout, flags=re.M), opt


def test_shell_completion_completes_commands_and_options() -> None:
    # --show-completion finds the shell by walking the process tree, which a test runner's
    # tree need not contain; the variable below is the shell-free way to the same script.
    script = chainer(_CHAINER_COMPLETE="source_bash")
    assert script.returncode == 0 and "_chainer_completion" in script.stdout
    words = chainer(_CHAINER_COMPLETE="complete_bash", COMP_WORDS="chainer re", COMP_CWORD="1")
    assert set(words.stdout.split()) == {"resume"}
    flags = chainer(_CHAINER_COMPLETE="complete_bash", COMP_WORDS="chainer run --resend", COMP_CWORD="2")
    assert flags.stdout.split() == ["--resend-unknown"]


def test_schema_into_a_missing_folder_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "x.json"
    done = chainer("schema", "-o", str(target))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot write {target}" in done.stderr and "folder" in done.stderr
    assert not target.parent.exists()  # not made behind the user's back
    ok = chainer("schema", "-o", str(tmp_path / "s.json"))
    assert ok.returncode == 0 and (tmp_path / "s.json").read_text().startswith("{")


def test_sim_with_an_unknown_dialect_names_the_choices() -> None:
    done = chainer("sim", "--dialect", "foo")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'foo' is not one of 'official', 'proxy'" in done.stderr


def test_sim_on_a_busy_port_says_so_before_announcing_a_url() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = chainer("sim", "--port", str(port))
    assert done.returncode == 2
    assert "Kling simulator" not in done.stdout  # no URL that does not work
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_archive_of_an_unknown_chain_is_an_error(tmp_path: Path) -> None:
    done = chainer("archive", "NOSUCH", cwd=tmp_path)
    assert done.returncode == 2
    assert "no chain named NOSUCH in .chainer" in done.stderr
    assert "saved" not in done.stdout


def test_a_huge_storyboard_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as f:  # 21 MB of valid YAML: parsing it took a minute and 500 MB
        f.write('name: big\nstart:\n  text2video: {prompt: "x", model: kling-v1-6}\nsegments:\n')
        f.writelines(f'  - prompt: "segment {i} {"y" * 200}"\n' for i in range(100_000))
    assert big.stat().st_size > 20_000_000
    done = chainer("validate", str(big))
    assert done.returncode == 2
    assert re.search(r"big\.yaml:1:1: the file is 2\d\.\d MB; a storyboard is at most 1 MB", done.stderr)
    run = chainer("run", str(big), cwd=tmp_path)
    assert run.returncode == 2 and "at most 1 MB" in run.stderr
    assert not (tmp_path / ".chainer").exists()


def test_an_unclosed_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    sb = tmp_path / "q.yaml"
    sb.write_text(
        'name: q\nstart:\n  text2video:\n    prompt: "A lonely lighthouse\n    model: kling-v1-6\n'
        "segments:\n  - prompt: waves\n  - prompt: night\n"
    )
    done = chainer("validate", str(sb))
    assert done.returncode == 2
    assert f"{sb}:4:13: YAML syntax error: a quoted string opened here is never closed" in done.stderr
    assert "gave up at line 9" in done.stderr


def test_a_model_typo_gets_did_you_mean_and_no_omni_hint(tmp_path: Path) -> None:
    sb = tmp_path / "m.yaml"
    sb.write_text("name: m\nstart:\n  text2video: {prompt: x, model: kling-v16}\nsegments:\n  - prompt: y\n")
    done = chainer("validate", str(sb))
    assert done.returncode == 2
    assert "(did you mean kling-v1-6?)" in done.stderr
    assert "Omni" not in done.stderr and "cannot be extended" not in done.stderr
    existing = tmp_path / "e.yaml"
    existing.write_text(
        "name: e\nstart:\n  video: {video_id: v, task_id: t, model: kling-v1.6}\nsegments:\n  - prompt: y\n"
    )
    done = chainer("validate", str(existing))
    assert "'kling-v1.6' is not a Kling video model (did you mean kling-v1-6?)" in done.stderr
    assert "Omni" not in done.stderr


def test_a_too_long_prompt_says_its_length(tmp_path: Path) -> None:
    sb = tmp_path / "p.yaml"
    sb.write_text(
        "name: p\nstart:\n  text2video: {prompt: x, model: kling-v1-6}\nsegments:\n"
        f'  - prompt: "{"a" * 2600}"\n'
    )
    done = chainer("validate", str(sb))
    assert done.returncode == 2
    assert (
        "segment 1 prompt has 2600 characters; Kling accepts at most 2500: shorten it by 100" in done.stderr
    )


def test_placeholder_ids_are_flagged_by_plan_and_refused_by_run_before_anything_starts(
    sim: Simulator, tmp_path: Path
) -> None:
    shutil.copy(ROOT / "storyboards" / "existing-video.yaml", tmp_path)
    where = "existing-video.yaml:7:15: 'replace-with-your-video-id' looks like a placeholder"
    plan = chainer("plan", "existing-video.yaml", cwd=tmp_path)
    assert plan.returncode == 0 and f"warning: {where}" in plan.stderr
    assert "existing-video.yaml:8:14: 'replace-with-its-task-id' looks like a placeholder" in plan.stderr
    alone = chainer("run", "existing-video.yaml", cwd=tmp_path, **provider_env(sim))
    assert alone.returncode == 2 and where in alone.stderr and "nothing was sent" in alone.stderr
    assert not (tmp_path / ".chainer").exists() and not sim.state.creates

    # in a batch the template is refused, the others run
    (tmp_path / "good.yaml").write_text(
        "name: good\nstart:\n  text2video: {prompt: x}\nsegments:\n  - prompt: y\n"
    )
    both = chainer("run", "existing-video.yaml", "good.yaml", cwd=tmp_path, **provider_env(sim))
    assert both.returncode == 1
    flat = " ".join(both.stdout.split())
    assert "good done" in flat and "continue-my-video failed" in flat and "looks like a placeholder" in flat
    assert len(sim.state.creates) == 2


def test_a_state_folder_that_cannot_be_made_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    shutil.copy(ROOT / "storyboards" / "lighthouse.yaml", tmp_path)
    (tmp_path / "taken").write_text("a file where the folder should go")
    done = chainer("run", "lighthouse.yaml", "--state-dir", str(tmp_path / "taken" / "state"), cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot create the state folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_simulators_video_size_is_set_by_chainer_sim_size(tmp_path: Path) -> None:
    from chainer import media

    shutil.copy(ROOT / "storyboards" / "lighthouse.yaml", tmp_path / "lighthouse.yaml")
    bad = chainer("run", "lighthouse.yaml", cwd=tmp_path, CHAINER_SIM_SIZE="big")
    assert bad.returncode == 2 and "CHAINER_SIM_SIZE='big': expected WIDTHxHEIGHT" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "out").exists()
    done = chainer(
        "run",
        "lighthouse.yaml",
        "--quiet",
        cwd=tmp_path,
        CHAINER_SIM_SIZE="161x91",
        CHAINER_SIM_TIME_SCALE="0.0001",
    )
    assert done.returncode == 0, done.stderr
    info = media.probe(tmp_path / "out" / "lighthouse.simulated.mp4")
    assert (info.width, info.height) == (160, 90)  # made even, as H.264 wants
