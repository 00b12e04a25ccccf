"""One run path: a single storyboard is a batch of one, and resume is a batch too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import cli_in_process as cli

from chainer.simulator import Simulator

STORYBOARD = """
name: {name}
start:
  text2video: {{prompt: "start {name}"}}
segments:
  - prompt: "one {name}"
  - prompt: "two {name} [sim:fail]"
output: {name}.mp4
"""

HOLD_LOCK = """
import sys
from chainer.journal import Journal
with Journal(sys.argv[1]) as journal:
    journal.lock_chain(sys.argv[2])
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_single_failing_storyboard_still_writes_the_report_and_the_summary(
    sim: Simulator, workdir: Path
) -> None:
    (workdir / "bad.yaml").write_text(textwrap.dedent(STORYBOARD).format(name="bad"))
    code, output = cli(sim, "run", "bad.yaml")
    assert code == 1, output
    assert "content-safety" in output, "the chain's own error is the command's"
    summary = json.loads((workdir / ".chainer" / "last-run.json").read_text())
    assert [c["chain"] for c in summary["chains"]] == ["bad"]
    assert summary["chains"][0]["state"] == "failed" and summary["failed"] == 1
    assert "content-safety" in summary["chains"][0]["message"]
    report = (workdir / "archive" / "report.html").read_text()
    assert "bad" in report and "failed" in report
    assert "two bad [sim:fail]" in report, "the report shows the failed step's prompt"


def test_resume_runs_the_free_chains_together_and_reports_the_locked_one(
    sim_factory,
    workdir: Path,  # type: ignore[no-untyped-def]
) -> None:
    sim: Simulator = sim_factory(time_scale=0.005)
    for name in ("c1", "c2", "c3"):
        (workdir / f"{name}.yaml").write_text(textwrap.dedent(STORYBOARD).format(name=name))
        assert cli(sim, "run", f"{name}.yaml")[0] == 1  # one at a time: step 2 fails
    assert sim.state.peak_concurrency == 1
    sim.config.fail_marker = "[never]"
    journal = next((workdir / ".chainer").glob("journal-*.sqlite"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(journal), "c2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, output = cli(sim, "resume", "--retry-failed")
    finally:
        holder.communicate("\n", timeout=60)
    assert code == 1, output
    assert (workdir / "c1.mp4").is_file() and (workdir / "c3.mp4").is_file(), output
    assert not (workdir / "c2.mp4").exists()
    flat = " ".join(output.split())
    assert f"c2: chain 'c2' is being run by pid {holder.pid}" in flat, output
    assert sim.state.peak_concurrency == 2, "c1 and c3 were resumed at the same time"
    assert len(sim.state.creates) == 9 + 2, "one retry each for c1 and c3, nothing for c2"
