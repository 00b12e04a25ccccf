"""The archive: results saved before the provider deletes them, and losses said out loud."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import CHAINER, provider_env
from typer.testing import CliRunner

from chainer.cli import app
from chainer.journal import Journal

DAY = 86400


def storyboard(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nstart: {{text2video: {{prompt: '{name}'}}}}\nsegments: [{{prompt: more}}]\n"
        f"output: {name}.mp4\n"
    )
    return path


def killed_mid_download(sim, workdir: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """Run a chain until its first result is made, then die while downloading it."""
    storyboard(workdir, name)
    proc = subprocess.run(
        [CHAINER, "run", f"{name}.yaml"],
        cwd=workdir,
        env=provider_env(sim, CHAINER_FAILPOINT="mid-download@0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr


def cli(sim, workdir: Path, *args: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--state-dir",
            str(workdir / ".chainer"),
            *(["--archive-dir", str(workdir / "archive")] if args[0] == "archive" else []),
        ],
        env=provider_env(sim),
    )
    return result.exit_code, " ".join(result.output.split())


def test_expiry_is_warned_archived_in_time_and_losses_are_reported(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    sim.state.advance(-25 * DAY)  # the provider's clock: this video is made 25 days ago
    killed_mid_download(sim, tmp_path, "early")
    code, output = cli(sim, tmp_path, "status")
    assert code == 1
    assert "step 0: not archived, deleted in 4 d" in output and "chainer archive" in output

    creates = len(sim.state.creates)
    code, output = cli(sim, tmp_path, "archive")
    assert code == 0, output
    assert "early step 0: saved" in output
    assert len(sim.state.creates) == creates, "archiving never creates tasks"
    with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
        row = journal.steps("early")[0]
        assert row.state == "downloaded" and Path(row.file or "").is_file()
    assert "not archived" not in cli(sim, tmp_path, "status")[1]

    sim.state.advance(-6 * DAY)  # this one is made 31 days ago
    killed_mid_download(sim, tmp_path, "late")
    sim.state.advance(31 * DAY)  # back to now: the provider has deleted it
    code, output = cli(sim, tmp_path, "status")
    assert code == 1 and "step 0: not archived and deleted by the provider on" in output
    code, output = cli(sim, tmp_path, "archive")
    assert code == 1
    assert "late step 0: LOST: deleted by the provider on" in output and "1203" in output
    assert not list((tmp_path / "archive" / "late").glob("*.mp4")), "nothing half-written at a final path"
