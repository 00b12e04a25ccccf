"""Benchmark 3, batch makespan: how well a batch keeps the account's limit busy.

40 storyboards of a start and 10 extensions, account limit 5 (the simulator answers
1303 past it). Figure: makespan / lower bound, where the lower bound is
max(the longest chain's own task time, total task time / 5), from the simulator's record
of every task (create to ready); plus peak concurrency and 1303 answers. Baseline, in the
same run: a first-come-first-served queue of chains, 5 at a time, each driven by a fixed
5 s-equivalent poll. Target: chainer <= 1.10.

    .venv/bin/python bench/batch.py [--smoke]
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import httpx
from common import NaiveClient, Result, Sim, main_for, now_ms, run_batch, simulator, write_storyboard

from chainer import load_plan

LIMIT = 5


def lower_bound(tasks: list[dict[str, Any]], chain_of: dict[str, str]) -> float:
    """max(longest chain's summed task time, all task time / LIMIT), in seconds."""
    per_chain: dict[str, float] = defaultdict(float)
    for t in tasks:
        per_chain[chain_of.get(t["task_id"], t["task_id"])] += (t["ready_ms"] - t["created_ms"]) / 1000
    return max(max(per_chain.values()), sum(per_chain.values()) / LIMIT)


def rejections(sim: Sim) -> int:
    return sum(
        n
        for key, n in sim.admin("stats")["requests"].items()
        if key.startswith("POST") and key.endswith(" 1303")
    )


def run(smoke: bool) -> Result:
    chains, extensions = (4, 2) if smoke else (40, 10)
    scale = 0.0005 if smoke else 0.002
    with simulator(time_scale=scale, concurrency=LIMIT, fps=8) as sim, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plans = [load_plan(write_storyboard(work, f"b{n:02d}", extensions)) for n in range(chains)]

        t0, before = now_ms(), rejections(sim)
        makespan = anyio.run(run_batch, sim, work, plans, LIMIT)
        ours = sim.tasks(t0, now_ms())
        our_rejections = rejections(sim) - before
        our_peak = sim.admin("stats")["peak_concurrency"]
        # chains from the creates' external_task_id: chainer-<chain uid>-<step>-...
        our_chains = {t["task_id"]: (t["external_task_id"] or "").split("-")[1] for t in ours}
        bound = lower_bound(ours, our_chains)

        async def naive_run() -> float:
            queue = list(range(chains))

            async def worker(http: httpx.AsyncClient) -> None:
                client = NaiveClient(sim, http, interval=5.0 * scale)
                while queue:
                    queue.pop(0)
                    await client.chain(extensions)

            started = time.perf_counter()
            async with httpx.AsyncClient(timeout=60) as http, anyio.create_task_group() as group:
                for _ in range(LIMIT):
                    group.start_soon(worker, http)
            return time.perf_counter() - started

        t1, before = now_ms(), rejections(sim)
        naive_makespan = anyio.run(naive_run)
        theirs = sim.tasks(t1, now_ms())
        their_rejections = rejections(sim) - before
        # the FCFS baseline runs a chain per worker; its chains are not labelled, so its bound
        # is the total work / LIMIT (the longest chain is far shorter here)
        naive_bound = sum((t["ready_ms"] - t["created_ms"]) / 1000 for t in theirs) / LIMIT

    ratio = makespan / bound
    naive_ratio = naive_makespan / naive_bound
    return Result(
        name="batch makespan",
        command="bench/batch.py" + (" --smoke" if smoke else ""),
        figures={
            "chains x extensions, limit": f"{chains} x {extensions}, {LIMIT}",
            "time scale": scale,
            "chainer makespan s": makespan,
            "chainer lower bound s": bound,
            "chainer peak concurrency": our_peak,
            "chainer 1303 answers": our_rejections,
            "baseline (FCFS, fixed poll) makespan s": naive_makespan,
            "baseline lower bound s": naive_bound,
            "baseline makespan / lower bound": naive_ratio,
            "baseline 1303 answers": their_rejections,
        },
        ratio_name="chainer makespan / lower bound",
        ratio=ratio,
        target="<= 1.10",
        met=ratio <= 1.10,
        notes=[
            f"chainer / baseline (each against its own bound): {ratio / naive_ratio:.3f}",
        ],
        why_missed=(
            "the limit is kept full (peak 5, no 1303), so the gap is "
            "the per-task detection lag (see polling) times tasks per slot; the simulator also renders "
            "every video and serves chainer's archive downloads on the same two cores, which the "
            "baseline (no archive) does not load. Callbacks would remove the lag"
        ),
    )


if __name__ == "__main__":
    main_for(run)
