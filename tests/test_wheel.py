"""chainer as someone installs it elsewhere: the built wheel (not an editable install) in a
fresh virtualenv, then an example copied to another folder run from there.

Catches what the editable install hides: a module or data file left out of the wheel, a
dependency missing from pyproject.toml, a path that assumes the source tree. pip takes
the dependencies from the package index (its cache, after setup).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import project_copy

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_the_built_wheel_installs_into_a_fresh_venv_and_runs_an_example_from_elsewhere(
    tmp_path: Path,
) -> None:
    project = project_copy(tmp_path / "project", venv=False)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", project)
    (wheel,) = (tmp_path / "dist").glob("kling_chainer-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run(venv / "bin" / "chainer", "--version").strip() == f"chainer {version}"
    # from another folder: `python -c` puts the working directory first on sys.path
    where = run(venv / "bin" / "python", "-c", "import chainer; print(chainer.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), f"chainer imported from {where}, not from the installed wheel"

    elsewhere = tmp_path / "my-film"
    elsewhere.mkdir()
    shutil.copy(ROOT / "storyboards" / "lighthouse.yaml", elsewhere)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHAINER_SIM_TIME_SCALE": "0.001"}
    shown = run(venv / "bin" / "chainer", "run", "lighthouse.yaml", "--quiet", cwd=elsewhere, env=env)
    assert "Done (simulated, no credits spent): out/lighthouse.simulated.mp4" in shown
    assert (elsewhere / "out" / "lighthouse.simulated.mp4").stat().st_size > 0
    assert (elsewhere / "archive-simulated" / "lighthouse" / "manifest.json").is_file()
