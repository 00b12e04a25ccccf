"""`chainer status` and `chainer resume` against a test simulator, in-process."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from helpers import CHAINER, provider_env
from helpers import cli_in_process as cli

from chainer.chain import STALL_AFTER_S
from chainer.journal import Journal
from chainer.simulator import Simulator

STORYBOARD = """
name: {name}
start:
  text2video: {{prompt: "start {name}"}}
segments:
  - prompt: "one"
  - prompt: "{second}"
output: {name}.mp4
"""


def test_status_shows_each_chain_and_what_needs_attention(sim: Simulator, workdir: Path) -> None:
    for name, second in (("good", "two"), ("bad", "two [sim:fail]")):
        (workdir / f"{name}.yaml").write_text(textwrap.dedent(STORYBOARD).format(name=name, second=second))
    assert cli(sim, "run", "good.yaml")[0] == 0
    code, output = cli(sim, "run", "bad.yaml")
    assert code == 1 and "content-safety" in output

    code, output = cli(sim, "status")
    assert code == 1, "status exits non-zero while a chain needs attention"
    lines = {line.split()[0]: line for line in output.splitlines() if line.split()}
    assert "done" in lines["good"] and "3/3" in lines["good"]
    assert "failed" in lines["bad"] and "step 2 failed" in lines["bad"]
    flat = " ".join(output.split())
    assert "use --retry-failed" in flat.replace("- -", "--")


def test_resume_finishes_unfinished_chains_from_another_directory(sim: Simulator, workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(textwrap.dedent(STORYBOARD).format(name="bad", second="two [sim:fail]"))
    assert cli(sim, "run", "bad.yaml")[0] == 1
    sim.config.fail_marker = "[never]"
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    code, output = cli(sim, "resume", "--state-dir", str(workdir / ".chainer"), "--retry-failed")
    assert code == 0, output
    assert (workdir / "bad.mp4").is_file(), "the output goes where the chain was started"
    # the archive the state dir recorded at its first run, not a second one in this folder
    assert not (elsewhere / "archive").exists()
    assert len(list((workdir / "archive" / "bad").glob("*.mp4"))) == 3
    assert len(sim.state.creates) == 4  # 3 first time (the last failed), 1 retry
    code, output = cli(sim, "resume", "--state-dir", str(workdir / ".chainer"))
    assert code == 0 and "Nothing to resume" in output


def test_resume_finds_chains_of_any_profile_offline(tmp_path: Path) -> None:
    import subprocess

    from helpers import CHAINER

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
    env["CHAINER_PROVIDERS"] = str(tmp_path / "none.toml")
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(STORYBOARD)
        .format(name="comet", second="two")
        .replace("name: comet", "name: comet\nprovider: cometapi")
    )
    killed = subprocess.run(
        [CHAINER, "run", "c.yaml", "--sim-time-scale", "0.0005"],
        cwd=tmp_path,
        env={**env, "CHAINER_FAILPOINT": "after-post@1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9
    assert (tmp_path / ".chainer" / "journal-simulator-cometapi.sqlite").is_file()
    done = subprocess.run(
        [CHAINER, "resume", "--sim-time-scale", "0.0005"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # simulated results are kept apart from real ones (issue 16): comet.mp4 -> comet.simulated.mp4
    assert "Done:" in done.stdout and (tmp_path / "comet.simulated.mp4").is_file()
    log = (tmp_path / ".chainer" / "simulator" / "state.jsonl").read_text()
    assert log.count('"e":"task"') == 3, "every step created exactly once across the kill"


def test_resume_with_no_journal_says_so_and_fails(sim: Simulator, workdir: Path) -> None:
    code, output = cli(sim, "resume")
    assert code == 2
    assert "No journal in .chainer" in output and "--state-dir" in output


def _status(sim: Simulator, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINER, "status", *args],
        cwd=cwd,
        env=provider_env(sim),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_tells_running_from_interrupted_from_stalled(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slow = sim_factory(time_scale=1.0)  # tasks take minutes: the chain is mid-step while looked at
    (tmp_path / "live.yaml").write_text(textwrap.dedent(STORYBOARD).format(name="live", second="two"))
    proc = subprocess.Popen(
        [CHAINER, "run", "live.yaml"], cwd=tmp_path, env=provider_env(slow), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # bounded by the work: the first create is answered
        if "submitted" in line:
            break
    running = _status(slow, tmp_path, "--json")
    row = json.loads(running.stdout.splitlines()[0])
    assert row["state"] == "running" and row["held_by"].startswith(f"pid {proc.pid} on ")
    assert row["steps_done"] == 0 and row["steps_total"] == 3 and row["needs"] == ""
    assert running.returncode == 0
    table = _status(slow, tmp_path)
    assert "running" in table.stdout and "last event" in table.stdout and f"pid {proc.pid}" in table.stdout

    proc.kill()
    proc.wait()
    proc.stdout.close()
    interrupted = _status(slow, tmp_path)
    assert interrupted.returncode == 1
    line = " ".join(interrupted.stdout.split())
    assert "live kling interrupted 0/3" in line and "chainer resume" in line

    # held by a process (this one) whose last event is older than the stall limit
    with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
        journal.db.execute("UPDATE events SET at = at - ?", (STALL_AFTER_S + 60,))
        journal.lock_chain("live")
        stalled = _status(slow, tmp_path, "--json")
    row = json.loads(stalled.stdout.splitlines()[0])
    assert stalled.returncode == 1
    assert row["state"] == "stalled" and row["held_by"].startswith(f"pid {os.getpid()} on ")
    assert "no event for 1 h 1 min" in row["needs"] and "chainer resume" in row["needs"]
    assert len(slow.state.creates) == 1, "looking never creates anything"
