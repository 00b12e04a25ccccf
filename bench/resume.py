"""Benchmark 6, resume: 200 chains killed mid-flight, then started again; 3 runs, medians.

`chainer run` on 200 storyboards against a simulator running tasks at Kling's real pace;
once every chain has its task in flight the process is SIGKILLed. The figure is the time
from starting `chainer run` again until the status of every one of the 200 tasks has
been asked for again (the simulator counts each task's queries by id and its showings
on a list page: a resume's first look is one shared list page, engine/survey.py), i.e.
until every chain is reconciled with its journal and waiting on its task. Baseline, in the same run: the first start's time until
all 200 tasks were created. Target: resume / fresh start <= 0.5 (the median of 3 runs,
each run's ratio taken against its own fresh start), and each task created exactly once.

    .venv/bin/python bench/resume.py [--smoke]
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
from pathlib import Path

from common import Result, chainer_batch, main_for, simulator, storyboard_folder, until

RUNS = 3
TARGET = 0.5


def looks(task: dict[str, int]) -> int:
    """How often a client has learned `task`'s status: by id, or on a list page."""
    return task["queries"] + task["listed"]


def once(chains: int) -> tuple[float, float, int]:
    """(fresh start s, resume s, creates) of one kill-and-resume."""
    with (
        simulator(time_scale=1.0, concurrency=chains + 10, width=64, height=64, fps=8) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        folder = storyboard_folder(work, "r", chains)
        os.sync()  # neither start pays for another benchmark's (or the setup's) unwritten pages
        first = chainer_batch(sim, folder, work, chains)
        fresh = until(lambda: sim.admin("stats")["creates"] >= chains, timeout=600)
        first.send_signal(signal.SIGKILL)
        first.wait()
        seen = {t["task_id"]: looks(t) for t in sim.tasks()}
        os.sync()
        again = chainer_batch(sim, folder, work, chains)

        def all_polled() -> bool:
            tasks = sim.tasks()
            return len(tasks) == chains and all(looks(t) > seen.get(t["task_id"], 0) for t in tasks)

        try:
            resumed = until(all_polled, timeout=600)
            creates = int(sim.admin("stats")["creates"])
        finally:
            again.send_signal(signal.SIGKILL)
            again.wait()
    return fresh, resumed, creates


def run(smoke: bool) -> Result:
    chains = 10 if smoke else 200
    runs = [once(chains) for _ in range(1 if smoke else RUNS)]
    ratios = [resumed / fresh for fresh, resumed, _ in runs]
    ratio = statistics.median(ratios)
    exact = all(creates == chains for _, _, creates in runs)
    return Result(
        name="resume",
        command="bench/resume.py" + (" --smoke" if smoke else ""),
        figures={
            "chains killed in flight": chains,
            "runs": len(runs),
            "fresh start: median s until all tasks created": statistics.median(r[0] for r in runs),
            "resume: median s until every chain is polling again": statistics.median(r[1] for r in runs),
            "resume / fresh start, each run": ", ".join(f"{r:.3f}" for r in ratios),
            "creates in each run (each chain's task exactly once)": ", ".join(str(r[2]) for r in runs),
        },
        ratio_name="resume / fresh start (median)",
        ratio=ratio,
        target=f"<= {TARGET}",
        met=ratio <= TARGET and exact,
        why_missed=(
            "both starts pay the same fixed costs (Python and chainer's imports, reading 200 "
            "storyboards, the preflight) before their own work (200 serial creates / 200 first "
            "polls); see bench/PROFILE.md"
        ),
    )


if __name__ == "__main__":
    main_for(run)
