"""Benchmark 1, chain overhead: how much longer than the provider itself a chain takes.

A 5 s text2video start and 35 extensions on the simulator (36 tasks; 35 is the most a
5 s start can take without chainer planning a hand-off, as a 36th extension could pass
180 s in the worst case), task times drawn from the simulator's distribution at a fast
time scale. Figure: wall time / (sum of the tasks' times from
create to ready + one download of the final video). Baseline, in the same run: the same
chain driven by a fixed poll loop every 5 s (scaled by the same factor), the common
pattern in existing clients, which archives nothing. Target: chainer <= 1.05.

    .venv/bin/python bench/chain_overhead.py [--smoke]
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from common import NaiveClient, Result, Sim, download, main_for, now_ms, simulator, write_storyboard

from chainer import Session, load_plan


def provider_seconds(sim: Sim, tasks: list[dict], dest: Path) -> float:  # type: ignore[type-arg]
    """The provider's own time for a sequential chain: every task's create -> ready, plus
    one download of the final video."""
    generation = sum((t["ready_ms"] - t["created_ms"]) / 1000 for t in tasks)
    final = max(tasks, key=lambda t: t["created_ms"])
    return generation + anyio.run(download, sim.video_url(final), dest)


def run(smoke: bool) -> Result:
    extensions = 3 if smoke else 35
    scale = 0.0005 if smoke else 0.005
    with simulator(time_scale=scale) as sim, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sb = write_storyboard(work, "overhead", extensions)

        async def chainer_run() -> float:
            async with Session.open(
                state_dir=work / "state", archive_dir=work / "archive", provider=sim.provider()
            ) as session:
                started = time.perf_counter()
                await session.run(load_plan(sb))
                return time.perf_counter() - started

        t0 = now_ms()
        wall = anyio.run(chainer_run)
        ours = sim.tasks(t0, now_ms())
        provider = provider_seconds(sim, ours, work / "final.mp4")

        async def naive_run() -> float:
            async with httpx.AsyncClient(timeout=60) as http:
                client = NaiveClient(sim, http, interval=5.0 * scale)
                started = time.perf_counter()
                await client.chain(extensions, download_to=work / "naive.mp4")
                return time.perf_counter() - started

        t1 = now_ms()
        naive_wall = anyio.run(naive_run)
        theirs = sim.tasks(t1, now_ms())
        naive_provider = provider_seconds(sim, theirs, work / "naive-final.mp4")

    ratio = wall / provider
    naive_ratio = naive_wall / naive_provider
    ordered = sorted(ours, key=lambda t: t["created_ms"])
    lag = sum(t["succeed_seen_ms"] - t["ready_ms"] for t in ordered) / 1000
    between = sum(b["created_ms"] - a["succeed_seen_ms"] for a, b in itertools.pairwise(ordered)) / 1000
    added = wall - provider
    why = (
        f"of the {added:.2f} s chainer adds, {lag:.2f} s is detection lag (the time between a task "
        f"being ready and chainer's poll seeing it), {between:.2f} s lies between noticing a result and "
        f"the next create ({1000 * between / max(1, len(ordered) - 1):.0f} ms a step: journal commits "
        f"and the create's round trip), and the rest is setup and the end of the run (the last "
        "download, verification, publishing the output, the contact sheet)"
    )
    return Result(
        name="chain overhead",
        command="bench/chain_overhead.py" + (" --smoke" if smoke else ""),
        figures={
            "extensions": extensions,
            "time scale": scale,
            "chainer wall s": wall,
            "chainer provider s (tasks + final download)": provider,
            "chainer status queries per task": sum(t["queries"] for t in ours) / len(ours),
            "baseline (fixed 5 s-equivalent poll) wall s": naive_wall,
            "baseline provider s": naive_provider,
            "baseline wall / provider": naive_ratio,
            "baseline status queries per task": sum(t["queries"] for t in theirs) / len(theirs),
        },
        ratio_name="chainer wall / provider time",
        ratio=ratio,
        target="<= 1.05",
        met=ratio <= 1.05,
        notes=[
            f"chainer / baseline: {ratio / naive_ratio:.3f} (chainer also archives and verifies every step)",
            why,
        ],
        why_missed=(
            "the lag is the price of polling about 7 times a task "
            "when task times vary by +-25% (the simulator's log-normal); the baseline polls 3 times as "
            "often to halve it. Kling's callback_url would remove it (chainer does not listen for "
            "callbacks yet: it needs an address Kling can reach); a denser schedule would trade "
            "requests for it"
        ),
    )


if __name__ == "__main__":
    main_for(run)
