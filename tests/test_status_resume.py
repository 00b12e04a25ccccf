"""`chainer status` and `chainer resume` against a test simulator, in-process."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from helpers import cli_in_process as cli

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
    code, output = cli(
        sim,
        "resume",
        "--state-dir",
        str(workdir / ".chainer"),
        "--archive-dir",
        str(workdir / "archive"),
        "--retry-failed",
    )
    assert code == 0, output
    assert (workdir / "bad.mp4").is_file(), "the output goes where the chain was started"
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
