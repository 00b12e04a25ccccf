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
import tempfile
from pathlib import Path

from common import Result, chainer_batch, main_for, simulator, storyboard_folder, until


def run(smoke: bool) -> Result:
    chains = 10 if smoke else 200
    with (
        simulator(time_scale=1.0, concurrency=chains + 10, width=64, height=64, fps=8) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        folder = storyboard_folder(work, "r", chains)
        first = chainer_batch(sim, folder, work, chains)
        fresh = until(lambda: sim.admin("stats")["creates"] >= chains, timeout=600)
        first.send_signal(signal.SIGKILL)
        first.wait()
        seen = {t["task_id"]: t["queries"] for t in sim.tasks()}
        again = chainer_batch(sim, folder, work, chains)

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
