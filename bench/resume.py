"""Benchmark 6, resume: 200 chains killed mid-flight, then started again.

`chainer run` on 200 storyboards against a simulator running tasks at Kling's real pace;
once every chain has its task in flight the process is SIGKILLed. The figure is the time
from starting `chainer run` again until every one of the 200 tasks has been asked about
again (the simulator counts each task's queries), i.e. until every chain is reconciled
with its journal and polling. Baseline, in the same run: the first start's time until
all 200 tasks were created. Target: resume < 5 s.

    .venv/bin/python bench/resume.py [--smoke]
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Result, Sim, main_for, simulator, write_storyboard


def chainer(sim: Sim, folder: Path, work: Path, chains: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "chainer"),
            "run",
            str(folder),
            "--quiet",
            "--concurrency",
            str(chains),
            "--state-dir",
            str(work / "state"),
            "--archive-dir",
            str(work / "archive"),
        ],
        env=sim.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
    )


def until(predicate, timeout: float, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not reached in time")
        time.sleep(step)
    return time.monotonic() - started


def run(smoke: bool) -> Result:
    chains = 10 if smoke else 200
    with (
        simulator(time_scale=1.0, concurrency=chains + 10, width=64, height=64, fps=8) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        folder = work / "storyboards"
        folder.mkdir()
        for n in range(chains):
            write_storyboard(folder, f"r{n:03d}", 1, output=work / "out" / f"r{n:03d}.mp4")
        first = chainer(sim, folder, work, chains)
        fresh = until(lambda: sim.admin("stats")["creates"] >= chains, timeout=600)
        first.send_signal(signal.SIGKILL)
        first.wait()
        seen = {t["task_id"]: t["queries"] for t in sim.tasks()}
        again = chainer(sim, folder, work, chains)

        def all_polled() -> bool:
            tasks = sim.tasks()
            return len(tasks) == chains and all(t["queries"] > seen.get(t["task_id"], 0) for t in tasks)

        try:
            resumed = until(all_polled, timeout=600)
            creates = sim.admin("stats")["creates"]
        finally:
            again.send_signal(signal.SIGKILL)
            again.wait()
    return Result(
        name="resume",
        command="bench/resume.py" + (" --smoke" if smoke else ""),
        figures={
            "chains killed in flight": chains,
            "fresh start: s until all tasks created": fresh,
            "resume: s until every chain is polling again": resumed,
            "creates in all (each chain's task exactly once)": creates,
        },
        ratio_name="resume s",
        ratio=resumed,
        target="< 5 s",
        met=resumed < 5 and creates == chains,
        notes=[f"resume / fresh start: {resumed / fresh:.3f}"],
    )


if __name__ == "__main__":
    main_for(run)
