"""CI runs every benchmark at tiny sizes so that none rots; timings are printed, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_at_smoke_size() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = ["chain overhead", "chain overhead, callbacks", "polling cost", "batch makespan"]
    names += ["batch makespan, callbacks", "download", "scale", "scale, 10,000 chains (smoke: 100)"]
    names += ["resume", "assembly"]
    names += ["team makespan", "team takeover"]
    for name in names:
        assert f"== {name}  (bench/" in proc.stdout, f"{name} printed no figures"
    verdicts = re.findall(r"^   [^\n]*  target [^\n]*: (met|NOT met)$", proc.stdout, re.M)
    assert len(verdicts) == len(names), "each prints its figure against its target"
    assert (
        not (ROOT / "bench" / "results.md").exists()
        or "--smoke" not in (ROOT / "bench" / "results.md").read_text()
    )
