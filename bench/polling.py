"""Benchmark 2, polling cost: how soon chainer notices a finished task, and at what price.

Ten chains of a start and five extensions run at once on the simulator; the same tasks'
worth of work then runs with a fixed poll every 5 s (scaled), the common pattern. From
the simulator's own record of every task: detection lag (the first query answered
`succeed` minus the moment the task could first answer it) as a fraction of the task's
time (create to ready), and status queries per task. Target: chainer's median lag <= 5%
of the task time with <= 8 queries per task. 3 runs, medians.

    .venv/bin/python bench/polling.py [--smoke]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpx
from common import NaiveClient, Result, main_for, now_ms, quantile, run_batch, simulator, write_storyboard

from chainer import load_plan


def lags(tasks: list[dict[str, Any]]) -> tuple[list[float], float]:
    fractions = [
        (t["succeed_seen_ms"] - t["ready_ms"]) / max(1, t["ready_ms"] - t["created_ms"])
        for t in tasks
        if t["succeed_seen_ms"] is not None and t["ready_ms"] is not None
    ]
    return fractions, sum(t["queries"] for t in tasks) / len(tasks)


def once(chains: int, extensions: int, scale: float) -> dict[str, Any]:
    """One run: chainer's batch, then the naive loop over as many chains."""
    # small, low-rate frames: rendering ten videos at once must not delay the tasks themselves
    with (
        simulator(time_scale=scale, concurrency=chains, width=64, height=64, fps=8) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        plans = [load_plan(write_storyboard(work, f"p{n}", extensions)) for n in range(chains)]

        t0 = now_ms()
        anyio.run(run_batch, sim, work, plans, chains)
        ours, our_queries = lags(sim.tasks(t0, now_ms()))

        async def naive_run() -> None:
            async with httpx.AsyncClient(timeout=60) as http, anyio.create_task_group() as group:
                client = NaiveClient(sim, http, interval=5.0 * scale)
                for _ in range(chains):
                    group.start_soon(client.chain, extensions)

        t1 = now_ms()
        anyio.run(naive_run)
        theirs, their_queries = lags(sim.tasks(t1, now_ms()))
    return {"ours": ours, "our queries": our_queries, "theirs": theirs, "their queries": their_queries}


def run(smoke: bool) -> Result:
    chains, extensions = (2, 2) if smoke else (10, 5)
    scale = 0.0005 if smoke else SCALE
    runs = [once(chains, extensions, scale) for _ in range(1 if smoke else RUNS)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    medians = [statistics.median(r["ours"]) for r in runs]
    ours = [lag for r in runs for lag in r["ours"]]
    theirs = [lag for r in runs for lag in r["theirs"]]
    our_queries, their_queries = med("our queries"), med("their queries")
    median = statistics.median(medians)
    return Result(
        name="polling cost",
        command="bench/polling.py" + (" --smoke" if smoke else ""),
        figures={
            "tasks measured (chainer, baseline; all runs)": f"{len(ours)}, {len(theirs)}",
            "time scale": scale,
            "runs": len(runs),
            "chainer median lag / task time, each run": ", ".join(f"{m:.3f}" for m in medians),
            "chainer p95 lag / task time": quantile(ours, 0.95),
            "chainer mean lag / task time": statistics.mean(ours),
            "chainer status queries per task (median of runs)": our_queries,
            "baseline (fixed 5 s-equivalent) median lag / task time": statistics.median(theirs),
            "baseline p95 lag / task time": quantile(theirs, 0.95),
            "baseline status queries per task (median of runs)": their_queries,
        },
        ratio_name="chainer median lag / task time (median of runs)",
        ratio=median,
        target="<= 0.05 with <= 8 queries per task",
        met=median <= 0.05 and our_queries <= 8,
        notes=[
            f"queries per task, chainer / baseline: {our_queries / their_queries:.3f}",
            "lags include the loopback round trip and, for chainer, its jittered schedule",
        ],
        why_missed=(
            "chainer's schedule waits 60% of the expected remaining time (learned from the run's "
            "tasks, by the provider's clock) and, once a task is overdue, polls at 5% of its age; "
            "the ten chains here start at once, so their first tasks of each kind have no history "
            "(Kling's usual times are assumed), and with task times varying by +-25% lag and "
            "queries sit near the target from both sides (a Monte Carlo of the schedule: 5.8 "
            "queries for 3.4%). Callbacks settle it (chain overhead, callbacks: 2 queries a task)"
        ),
    )


RUNS = 3
#: Tasks of about 2.4 s: a loopback round trip and the event loop's wake-up (a few ms, the
#: same at any scale) stay small against the lag the schedule itself leaves.
SCALE = 0.02


if __name__ == "__main__":
    main_for(run)
