"""The README's commands, run as written in a copy of the project: a README example that
fails (or exits otherwise than it says) breaks the build.

Every line of a ```sh block and every `$ ` line of a plain block is a command, in README
order (later ones build on earlier ones, as for a reader). A command's expected exit code
is 0 unless its comment says "exits N". Skipped, with why: `./setup.sh` and the test
command (CI runs both around this very test) and `bench/run_all.py` (tests/test_bench.py
runs it with --smoke); other benchmarks run with --smoke, as the README says they take it.
The embedded simulator runs at its fastest (CHAINER_SIM_TIME_SCALE) and renders small videos
(CHAINER_SIM_SIZE): the commands are the README's, the minutes they wait are not.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from helpers import project_copy

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("./setup.sh", ".venv/bin/pytest", ".venv/bin/python bench/run_all.py")
EXITS = re.compile(r"\bexits (\d+)")


def readme_commands(text: str) -> list[tuple[str, int]]:
    """(command, expected exit code) for every command the README shows, in order."""
    commands: list[tuple[str, int]] = []
    block: str | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block is None or not line.strip():
            continue
        if block == "sh":
            command = line
        elif block == "" and line.startswith("$ "):
            command = line[2:]
        else:
            continue
        command, _, comment = command.partition("  #")
        expected = EXITS.search(comment)
        commands.append((command.strip(), int(expected[1]) if expected else 0))
    return commands


def test_the_readme_commands_can_be_parsed() -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands[:2] == [("./setup.sh", 0), (".venv/bin/pytest", 0)], (
        "the README starts with its two commands"
    )
    assert ("chainer run storyboards/", 1) in commands


def test_every_readme_command_runs_as_documented(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    env = {
        "PATH": f"{project / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "CHAINER_SIM_TIME_SCALE": "0.0001",
        "CHAINER_SIM_SIZE": "160x96",  # six minutes of simulated video render in seconds
    }
    ran = 0
    for command, expected in readme_commands((project / "README.md").read_text()):
        if command.startswith(SKIPPED):
            continue
        args = shlex.split(command)
        if args[0].endswith("python") and args[1].startswith("bench/"):
            args.append("--smoke")
        done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == expected, (
            f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
        ran += 1
    assert ran >= 8
    # what "Try it" promises is there
    assert (project / "out" / "lighthouse.simulated.mp4").is_file()
    assert (project / "archive-simulated" / "lighthouse" / "manifest.json").is_file()
    assert (project / "archive-simulated" / "report.html").is_file()
    assert os.listdir(project / "examples" / "report")
