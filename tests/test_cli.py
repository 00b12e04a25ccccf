"""The `chainer` command: documented options, the offline default, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from chainer import media
from chainer.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMMAND = typer.main.get_command(app)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}


def test_every_command_and_option_is_described() -> None:
    assert COMMAND.help and "KLING_ACCESS_KEY" in COMMAND.help
    commands = COMMAND.commands  # type: ignore[attr-defined]
    assert {"run", "validate", "sim"} <= set(commands)
    for name, command in commands.items():
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"chainer {name} {param.opts[0]} has no help text"
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in (
        "--output",
        "--base-url",
        "--path-prefix",
        "--state-dir",
        "--archive-dir",
        "--sim-time-scale",
    ):
        assert option in result.output


def test_run_without_credentials_uses_the_offline_simulator(tmp_path: Path) -> None:
    shutil.copy(ROOT / "storyboards" / "lighthouse.yaml", tmp_path / "lighthouse.yaml")
    chainer = Path(sys.executable).parent / "chainer"
    proc = subprocess.run(
        [str(chainer), "run", "lighthouse.yaml", "--sim-time-scale", "0.0005"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "offline simulator" in proc.stdout and "no credits are spent" in proc.stdout
    # simulated results never share a path with real ones (issue 16)
    assert "Done (simulated, no credits spent): out/lighthouse.simulated.mp4" in proc.stdout
    assert "Archive: archive-simulated/lighthouse" in proc.stdout
    assert "Report: archive-simulated/report.html" in proc.stdout
    info = media.probe(tmp_path / "out" / "lighthouse.simulated.mp4")
    assert info.is_h264_mp4 and 17.0 <= info.duration <= 20.2
    archived = sorted((tmp_path / "archive-simulated" / "lighthouse").glob("*.mp4"))
    assert len(archived) == 4
    assert not (tmp_path / "out" / "lighthouse.mp4").exists() and not (tmp_path / "archive").exists()


def test_bad_storyboard_exits_2_with_positions_and_sends_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a provider client was constructed for a storyboard that does not validate")

    monkeypatch.setattr("chainer.session.KlingClient", never)
    monkeypatch.setattr("chainer.simulator.server.Simulator", never)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstart:\n  text2video: {prompt: p, modle: kling-v1}\nsegments: [{prompt: q}]\n")
    result = CliRunner().invoke(app, ["run", str(bad), "--state-dir", str(tmp_path / "s")], env=clean_env())
    assert result.exit_code == 2
    assert f"{bad}:3:27: unknown key 'modle'" in result.output
    assert "did you mean 'mode' or 'model'?" in result.output
    assert "simulator" not in result.output
    assert not (tmp_path / "s").exists(), "nothing may be written for a storyboard that does not validate"


def test_validate_many_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    good = ROOT / "storyboards" / "lighthouse.yaml"
    result = CliRunner().invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok" in result.output
    assert f"{bad}:1:1: start is required" in result.output


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"KLING_ACCESS_KEY": "a"}, "KLING_SECRET_KEY is not set"),
        ({"KLING_API_KEY": "k"}, "only KLING_API_KEY is set"),
    ],
)
def test_half_configured_credentials_are_an_error_not_a_silent_simulator(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["run", str(ROOT / "storyboards" / "lighthouse.yaml"), "--state-dir", str(tmp_path / "s")],
        env={**clean_env(), **env},
    )
    assert result.exit_code == 2
    assert needle in result.output
    assert "simulator" not in result.output
