"""The account's balance before spending, and a simulator clients cannot tell from Kling (issue 19)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from conftest import FAST
from helpers import CHAINER, provider_env, write_storyboard

from chainer.simulator import SimConfig, Simulator

STORY = """
name: paid
start:
  text2video: {prompt: "a quiet pier", model: kling-v1-6}
segments:
  - prompt: "waves"
  - prompt: "a gull lands"
"""


def chainer(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`chainer ARGS` as a process (bounded by its work; the timeout is a safety net)."""
    return subprocess.run([CHAINER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_the_packs_cannot_cover_is_refused_before_any_create_and_goes_on_when_told(
    sim_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(unit_budget=2)
    write_storyboard(tmp_path, STORY, "paid.yaml")
    refused = chainer(tmp_path, provider_env(sim), "run", "paid.yaml")
    assert refused.returncode == 2
    assert "Account: 2 units left in 1 online video pack" in refused.stdout
    assert "needs about 3 units, but the account's online video packs hold 2 (short by 1)" in refused.stderr
    assert "--ignore-balance" in refused.stderr and "Nothing was sent" in refused.stderr
    assert not sim.state.creates

    told = chainer(tmp_path, provider_env(sim), "run", "paid.yaml", "--ignore-balance")
    assert told.returncode == 1
    assert "going on as asked (--ignore-balance)" in told.stderr
    assert "1102" in told.stderr
    assert "every task already paid for is archived; the rest needs about 1 units" in told.stderr
    assert "the video so far (steps 0-1" in told.stderr
    assert len(sim.state.creates) == 2, "the two steps the pack could pay for, then nothing"
    # what was paid for is archived, and the video so far is written
    assert len(list((tmp_path / "archive" / "paid").glob("*.mp4"))) == 2
    assert (tmp_path / "out" / "paid.partial.mp4").is_file()


def test_a_pack_that_expires_during_the_run_is_named_with_its_date(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(pack_valid_days=0.002, pack_age_days=0)  # valid for about 3 minutes more
    write_storyboard(tmp_path, STORY, "paid.yaml")
    # at Kling's real pace (time scale 1) this chain takes about 5 minutes: past the pack's end
    plan = chainer(tmp_path, provider_env(sim, CHAINER_TIME_SCALE="1"), "plan", "paid.yaml")
    assert plan.returncode == 0, plan.stderr
    assert "Account: 100000 units left in 1 online video pack; Simulated video pack" in plan.stdout
    ends = dt.datetime.fromtimestamp(sim.state.started_ms / 1000 + 0.002 * 86_400).astimezone()
    assert f"resource pack Simulated video pack (100000 units) expires {ends:%Y-%m-%d %H:%M}" in plan.stderr
    assert "before this run is expected to end" in plan.stderr
    check = chainer(tmp_path, provider_env(sim), "providers", "check", "kling", "--base-url", sim.base_url)
    assert check.returncode == 0, check.stderr
    assert "Simulated video pack (video): 100000 of 100000 units left, online, valid until" in check.stdout


def test_a_proxy_has_no_account_endpoint_and_the_run_goes_on(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(dialect="proxy", path_prefix="/kling", send_parent_task_id=True, prompt_max_chars=500)
    env = provider_env(sim)
    for key in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY"):
        env.pop(key)
    env.update(KLING_API_KEY="sim-api-key")
    write_storyboard(tmp_path, STORY.replace("name: paid", "name: paid\nprovider: cometapi"), "paid.yaml")
    done = chainer(tmp_path, env, "run", "paid.yaml")
    assert done.returncode == 0, done.stderr
    assert "Account balance: not available (cometapi bills its own credit)" in done.stdout


def test_a_chain_runs_through_the_simulator_over_https_with_verification_on(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sim = Simulator(
        SimConfig(**FAST),  # type: ignore[arg-type]
        data_dir=tmp_path / "sim",
        admin=True,
        ssl_certfile=tmp_path / "server.pem",
        ssl_keyfile=tmp_path / "server.pem",
    ).start()
    try:
        assert sim.base_url.startswith("https://")
        write_storyboard(tmp_path, STORY, "paid.yaml")
        untrusted = chainer(tmp_path, provider_env(sim), "run", "paid.yaml")
        assert untrusted.returncode != 0 and "TLS handshake failed" in untrusted.stderr
        assert not sim.state.creates
        trusted = chainer(
            tmp_path, provider_env(sim, SSL_CERT_FILE=str(tmp_path / "ca.pem")), "run", "paid.yaml"
        )
        assert trusted.returncode == 0, trusted.stderr
        assert len(sim.state.creates) == 3
        from chainer.journal import Journal

        with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
            urls = [r.video_url or "" for r in journal.steps("paid")]
        assert all(u.startswith(sim.base_url + "/files/") for u in urls), urls  # signed urls are https too
        assert (tmp_path / "out" / "paid.mp4").stat().st_size > 0
    finally:
        sim.stop()
