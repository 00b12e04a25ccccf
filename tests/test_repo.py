"""The project's promises about itself: README commands are what CI runs; examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def test_readme_opens_with_setup_and_test_commands_that_ci_runs() -> None:
    setup, test = readme_commands()
    assert (setup, test) == ("./setup.sh", ".venv/bin/pytest")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index(setup) < ci.index(test), "CI must run the README's setup, then its test command"


def test_python_example_runs_on_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    # the example uses the default time scale; a copy with a tiny scale keeps the test fast
    source = (ROOT / "examples" / "run_from_python.py").read_text()
    source = source.replace(
        'Session.open(state_dir=".chainer", archive_dir="archive")',
        'Session.open(state_dir=".chainer", archive_dir="archive", sim_config=__import__("chainer").SimConfig(time_scale=0.0005, width=160, height=96))',
    )
    assert "time_scale=0.0005" in source
    (tmp_path / "example.py").write_text(source)
    proc = subprocess.run(
        [sys.executable, "example.py", str(ROOT / "storyboards" / "lighthouse.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "using the offline simulator" in proc.stdout
    assert "final video: out/lighthouse.simulated.mp4" in proc.stdout
    assert (tmp_path / "out" / "lighthouse.simulated.mp4").is_file()


def test_example_report_regenerates_with_its_documented_command(tmp_path: Path) -> None:
    """examples/make_report.py (the README's way to see a report without a run of one's own)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_report.py"), str(tmp_path / "report")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    made = {p.relative_to(tmp_path / "report").as_posix() for p in (tmp_path / "report").rglob("*")}
    assert {"report.html", "lighthouse.mp4", "archive/lighthouse/contact-sheet.png"} <= made
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Made by chainer's offline simulator" in page and "earlier" in page
    assert "examples/make_report.py" in (ROOT / "README.md").read_text()
