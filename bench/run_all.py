"""Run every benchmark and write bench/results.md with their figures and targets.

    .venv/bin/python bench/run_all.py            # the full run (about 40 minutes)
    .venv/bin/python bench/run_all.py --smoke    # tiny sizes, as CI runs them (no file written)

Each benchmark runs in its own process, one after the other, so none disturbs another.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import fmt

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["chain_overhead", "polling", "batch", "download", "scale", "resume", "assembly", "team"]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main() -> int:
    smoke = "--smoke" in sys.argv
    results = []
    started = time.monotonic()
    for name in BENCHMARKS:
        args = [sys.executable, str(HERE / f"{name}.py"), "--json", *(["--smoke"] if smoke else [])]
        os.sync()  # no benchmark starts while the one before it still has pages to write
        proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        sys.stdout.write(proc.stdout.split("RESULT ")[0])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            print(f"{name}: failed with exit code {proc.returncode}")
            return 1
        results += [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    took = time.monotonic() - started
    print(f"all benchmarks: {took:.0f} s")
    if smoke:
        return 0
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `.venv/bin/python bench/run_all.py` on {dt.date.today()}, {took:.0f} s in all.",
        f"Machine: {machine()}.",
        "Everything runs on 127.0.0.1 against the simulator (fixed seeds) or local files; the",
        "baselines run in the same run. Targets were not tuned for: where one is missed, the",
        "note below the table says why and what would fix it. Each benchmark's time scale (how",
        "much faster than Kling the simulator runs) is among its figures; the README's Benchmarks",
        "section says why those scales.",
        "",
        "| benchmark | figure | value | target | |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['ratio_name']} | {r['ratio']:.3f} | {r['target']} | "
            f"{'met' if r['met'] else '**not met**'} |"
        )
    for r in results:
        lines += ["", f"## {r['name']}", "", f"`{r['command']}`", ""]
        lines += [f"- {k}: {fmt(v)}" for k, v in r["figures"].items()]
        lines += [f"- note: {n}" for n in r["notes"]]
        lines.append(f"- **target {r['target']}: {'met' if r['met'] else 'not met'}**")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
