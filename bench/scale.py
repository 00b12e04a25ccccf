"""Benchmark 5, scale: 1,000 and 10,000 chains in flight, waiting on slow tasks; 3 runs
of each, medians.

`chainer run` (a separate process) on 1,000 storyboards at once against a simulator that
allows 1,000 tasks in flight. Once every chain has its task, chainer's resident memory
and CPU use are sampled over a window while it waits. Baseline, in the same run: the
naive pattern (one asyncio task per chain polling every 5 s, no journal) in its own
process, for the same chains, sampled the same way.

Waiting means every task in flight and none ended: a window that reaches the first ends
measures downloads, checks and the next creates, which the naive poller never does (a
slower machine, sending its creates more slowly, once measured chainer at the naive
poller's cost that way). So tasks take twice Kling's time here (chainer is told so, as
CHAINER_TIME_SCALE, and its polls keep their usual share of a task's time), and the
figures count the tasks that ended during each window: a run where any did is not met.
Targets: chainer's CPU <= 0.3 x the naive poller's (median over 3 runs of each run's own
ratio), and, as absolute guards, < 10 % of one core and < 300 MB resident.

Then 10,000 chains. Sending 10,000 creates takes minutes, so tasks take six times Kling's
time there; the naive poller is not run at that size (it would ask 2,000 times a second).
Baseline: chainer's own 1,000-chain runs above. Target: CPU per chain waiting at 10,000
(counted back to the 1,000-chain runs' pace) <= 1.5 x at 1,000 (the cost grows with the
chains, not faster), and, as absolute guards, < 50 % of one core and < 1 GB resident.

    .venv/bin/python bench/scale.py [--smoke]
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    Result,
    Sim,
    chainer_batch,
    main_for,
    peak_rss_mb,
    sample,
    simulator,
    storyboard_folder,
    until,
)

RUNS = 3
TARGET = 0.3
#: CPU per chain at 10,000 chains against at 1,000, at most.
LARGE_TARGET = 1.5
LARGE = 10_000
#: Tasks at 10,000 chains take this many times Kling's time (see the docstring).
LARGE_TIME_SCALE = 6.0
#: Tasks at 1,000 chains take this many times Kling's time (see the docstring).
TIME_SCALE = 2.0

NAIVE = """
import sys, anyio, httpx
sys.path.insert(0, sys.argv[3])
from common import NaiveClient, Sim
from chainer.simulator import SimConfig
sim = Sim(SimConfig.model_validate_json(sys.argv[1]), sys.argv[2], None)
async def one(client):
    while True:  # under a thousand at once a request can time out: ask again, as a script would
        try:
            task = await client.create("text2video", {"prompt": "start", "model_name": "kling-v1-6", "duration": "5"})
            break
        except Exception as exc:
            print("create failed, trying again:", repr(exc), file=sys.stderr, flush=True)
            await anyio.sleep(5.0)
    while True:
        try:
            return await client.wait("text2video", task)
        except Exception as exc:
            print("poll failed, trying again:", repr(exc), file=sys.stderr, flush=True)
async def main():
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http, anyio.create_task_group() as group:
        client = NaiveClient(sim, http, interval=5.0)
        for _ in range(int(sys.argv[4])):
            group.start_soon(one, client)
anyio.run(main)
"""


def created(sim: Sim) -> int:
    return int(sim.admin("stats")["creates"])


def in_flight(sim: Sim) -> int:
    return int(sim.admin("stats")["in_flight"])


def watch(pid: int, window: float) -> tuple[float, float, float]:
    """(mean RSS MB, CPU % of one core, peak RSS MB) of `pid` over `window` seconds."""
    first = sample(pid)
    rss = [first.rss_mb]
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(0.5)
        rss.append(sample(pid).rss_mb)
    last = sample(pid)
    return sum(rss) / len(rss), 100 * (last.cpu_s - first.cpu_s) / (last.at - first.at), peak_rss_mb(pid)


def once(chains: int, window: float, *, time_scale: float = 1.0, naive: bool = True) -> dict[str, float]:
    """One measurement of chainer and (with `naive`) of the naive poller on the same chains."""
    # Kling's own pace (tasks take 1.5-2 minutes), or slower (`time_scale`).
    # room for both runs' tasks: chainer's are still in flight when the baseline starts
    with (
        simulator(time_scale=time_scale, concurrency=2 * chains + 10, width=64, height=64, fps=8) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        folder = storyboard_folder(work, "s", chains)
        started = time.monotonic()
        proc = chainer_batch(sim, folder, work, chains)
        try:
            until(lambda: created(sim) >= chains, timeout=900)
            submitted_s = time.monotonic() - started
            time.sleep(1.0)
            rss, cpu, peak = watch(proc.pid, window)
            ended = created(sim) - in_flight(sim)  # every task sent, less those in flight
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        mine = {"submitted_s": submitted_s, "rss": rss, "peak": peak, "cpu": cpu, "ended": ended}
        if not naive:
            return mine
        before = created(sim)
        naive = subprocess.Popen(
            [
                sys.executable,
                "-c",
                NAIVE,
                sim.config.model_dump_json(),
                sim.base_url,
                str(ROOT / "bench"),
                str(chains),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )

        def baseline_ready() -> bool:
            if naive.poll() is not None:
                raise RuntimeError(f"the baseline process died: {naive.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            return created(sim) >= before + chains

        try:
            until(baseline_ready, timeout=600)
            time.sleep(1.0)
            naive_rss, naive_cpu, naive_peak = watch(naive.pid, window)
        finally:
            naive.kill()
            naive.wait()
    return {
        **mine,
        "naive_rss": naive_rss,
        "naive_peak": naive_peak,
        "naive_cpu": naive_cpu,
    }


def run(smoke: bool) -> list[Result]:
    chains = 20 if smoke else 1000
    window = 3.0 if smoke else 45.0
    pace = 0.05 if smoke else 1.0  # a smoke run's tasks take seconds, not minutes
    runs = [once(chains, window, time_scale=TIME_SCALE * pace) for _ in range(1 if smoke else RUNS)]
    large = LARGE // 100 if smoke else LARGE
    large_runs = [
        once(large, window if smoke else 30.0, time_scale=LARGE_TIME_SCALE * pace, naive=False)
        for _ in range(1 if smoke else RUNS)
    ]
    return [against_naive(runs, chains, window, smoke), at_large(large_runs, large, runs, chains, smoke)]


def _med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def against_naive(runs: list[dict[str, float]], chains: int, window: float, smoke: bool) -> Result:
    """The 1,000-chain figure: chainer against the naive poller, run by run."""
    # a smoke run can be too short to measure either side: nothing measured is no cost
    ratios = [r["cpu"] / r["naive_cpu"] if r["naive_cpu"] > 0 else float(r["cpu"] > 0) * 99 for r in runs]
    ratio = statistics.median(ratios)
    peak = max(r["peak"] for r in runs)
    return Result(
        name="scale",
        command="bench/scale.py" + (" --smoke" if smoke else ""),
        figures={
            "chains in flight": chains,
            "runs": len(runs),
            "sample window s": window,
            "chainer median s until every chain had its task": _med(runs, "submitted_s"),
            "chainer median RSS MB while waiting": _med(runs, "rss"),
            "chainer peak RSS MB (highest run)": peak,
            "chainer median CPU % of one core while waiting": _med(runs, "cpu"),
            "baseline (naive poller) median RSS MB": _med(runs, "naive_rss"),
            "baseline median CPU % of one core": _med(runs, "naive_cpu"),
            "chainer / baseline CPU, each run": ", ".join(f"{x:.3f}" for x in ratios),
            "tasks of chainer's that ended in a window (most in a run)": max(r["ended"] for r in runs),
        },
        ratio_name="chainer CPU / naive poller CPU (median)",
        ratio=ratio,
        target=f"<= {TARGET} (and < 10 % of a core, < 300 MB)",
        met=ratio <= TARGET and _med(runs, "cpu") < 10 and peak < 300 and not any(r["ended"] for r in runs),
    )


def at_large(
    runs: list[dict[str, float]], chains: int, small: list[dict[str, float]], small_chains: int, smoke: bool
) -> Result:
    """The 10,000-chain figure: CPU per chain against the 1,000-chain runs of the same run."""
    # its tasks take longer, so its polls come that much more rarely: counted back to the
    # 1,000-chain runs' pace (which overstates what does not scale with it, timers)
    slower = LARGE_TIME_SCALE / TIME_SCALE
    per_chain = _med(runs, "cpu") * slower / chains
    small_per_chain = max(_med(small, "cpu"), 0.01) / small_chains  # 0.01 %: below what is measured
    ratio = per_chain / small_per_chain
    peak = max(r["peak"] for r in runs)
    return Result(
        name="scale, 10,000 chains" if not smoke else "scale, 10,000 chains (smoke: 100)",
        command="bench/scale.py" + (" --smoke" if smoke else ""),
        figures={
            "chains in flight": chains,
            "runs": len(runs),
            "tasks' time, x the 1,000-chain runs'": slower,
            "chainer median s until every chain had its task": _med(runs, "submitted_s"),
            "chainer median RSS MB while waiting": _med(runs, "rss"),
            "chainer peak RSS MB (highest run)": peak,
            "chainer median CPU % of one core while waiting": _med(runs, "cpu"),
            "tasks that ended in a window (most in a run)": max(r["ended"] for r in runs),
            "chainer CPU % per 1,000 chains at the 1,000-chain pace, here / at 1,000 chains": (
                f"{1000 * per_chain:.3f} / {1000 * small_per_chain:.3f}"
            ),
        },
        ratio_name="CPU per chain, 10,000 / 1,000 chains (medians)",
        ratio=ratio,
        target=f"<= {LARGE_TARGET} (and < 50 % of a core, < 1 GB)",
        met=ratio <= LARGE_TARGET
        and _med(runs, "cpu") < 50
        and peak < 1024
        and not any(r["ended"] for r in runs),
    )


if __name__ == "__main__":
    main_for(run)
