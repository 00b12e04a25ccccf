"""What a user sees around a run, as `chainer` prints it: timestamps, the --quiet summary,
mixed providers in one batch, and the report (which provider, earlier runs, what next)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from helpers import CHAINER, provider_env

from chainer.simulator import Simulator

BOARD = "name: {name}\nprovider: {provider}\nstart:\n  text2video: {{prompt: 'start {name}'}}\nsegments:\n  - prompt: '{second}'\n"
#: No credentials: the embedded simulator, at its fastest.
OFFLINE = {"PATH": "/usr/bin:/bin", "CHAINER_SIM_TIME_SCALE": "0.0001"}


def chainer(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINER, *args], cwd=cwd, env={"HOME": str(cwd), **env}, capture_output=True, text=True, timeout=300
    )


def board(folder: Path, name: str, provider: str = "kling", second: str = "two") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(BOARD.format(name=name, provider=provider, second=second))
    return path


def test_plain_lines_carry_a_time_and_quiet_prints_only_the_summary_on_stdout(
    sim: Simulator, tmp_path: Path
) -> None:
    board(tmp_path, "plain")
    plain = chainer(tmp_path, provider_env(sim), "run", "plain.yaml")
    assert plain.returncode == 0, plain.stderr
    lines = [line for line in plain.stdout.splitlines() if "[plain]" in line]
    assert lines and all(re.match(r"^\d\d:\d\d:\d\d \[plain\] ", line) for line in lines), lines

    board(tmp_path, "hush")
    quiet = chainer(tmp_path, provider_env(sim), "run", "hush.yaml", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[0].startswith("Done: out/hush.mp4 ("), quiet.stdout
    assert "[hush]" not in quiet.stdout + quiet.stderr, "--quiet prints no progress lines"


def test_a_batch_of_two_providers_runs_each_on_its_own_and_the_report_names_them(tmp_path: Path) -> None:
    board(tmp_path, "ours", "kling")
    board(tmp_path, "theirs", "cometapi")
    board(tmp_path, "broken", "kling", second="two [sim:fail]")
    done = chainer(tmp_path, OFFLINE, "run", "ours.yaml", "theirs.yaml", "broken.yaml")
    assert done.returncode == 1, done.stderr  # broken fails; the other two are made
    flat = " ".join(done.stdout.split())
    assert "ours done" in flat and "theirs done" in flat and "broken failed" in flat
    summary = json.loads((tmp_path / ".chainer" / "last-run.simulated.json").read_text())
    providers = {p["provider"]: sorted(p["chains"]) for p in summary["providers"]}
    assert providers == {"simulator": ["broken", "ours"], "simulator-cometapi": ["theirs"]}

    report = (tmp_path / "archive-simulated" / "report.html").read_text()
    assert report.count("Made by chainer's offline simulator") == 2, "one section per provider"
    assert "What to do next:</b> The provider refused or failed a step" in report
    assert "--retry-failed" in report, "a failed chain says which command goes on"

    again = chainer(tmp_path, OFFLINE, "run", "ours.yaml")
    assert again.returncode == 0
    kept = sorted((tmp_path / "archive-simulated" / "reports").glob("report-*.html"))
    assert len(kept) == 2, "each run's report is kept"
    latest = (tmp_path / "archive-simulated" / "report.html").read_text()
    assert all(f"reports/{k.name}" in latest for k in kept), "the latest report links the earlier ones"


def test_a_run_wide_budget_is_refused_across_two_providers(tmp_path: Path) -> None:
    board(tmp_path, "ours", "kling")
    board(tmp_path, "theirs", "cometapi")
    done = chainer(tmp_path, OFFLINE, "run", "ours.yaml", "theirs.yaml", "--max-units", "10")
    assert done.returncode == 2
    assert "--max-units is one account's setting" in done.stderr and "2 providers" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_waiting_chain_says_what_it_waits_for(sim: Simulator, tmp_path: Path) -> None:
    board(tmp_path, "first")
    board(tmp_path, "second")
    done = chainer(
        tmp_path, provider_env(sim), "run", "first.yaml", "second.yaml", "--concurrency", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    waits = [e for e in events if e["state"] == "waiting"]
    assert waits, "with one slot for two chains, one waits"
    assert all(e["message"] == "for a free slot on the account (1/1 in use)" for e in waits), waits
    assert events[-1]["state"] == "summary" and events[-1]["units"] == 4
