"""Re-roll: regenerate a chain from step N as new takes, keeping the old ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers import provider_env
from typer.testing import CliRunner

from chainer import media
from chainer.cli import app
from chainer.simulator import Simulator

DAY = 86400


def storyboard(tmp_path: Path, third: str = "A storm rolls in", first: str = "The camera pulls back") -> Path:
    path = tmp_path / "reroll.yaml"
    path.write_text(
        "name: reroll\n"
        "start: {text2video: {prompt: A lighthouse at dusk, model: kling-v1-6, duration: 5}}\n"
        f"segments:\n  - prompt: {first}\n  - prompt: Night falls\n  - prompt: {third}\n"
        "  - prompt: Dawn breaks\n"
        f"output: {tmp_path / 'out.mp4'}\n"
    )
    return path


def chainer(sim: Simulator, tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(tmp_path / "reroll.yaml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--archive-dir",
            str(tmp_path / "archive"),
            *args,
        ],
        env=provider_env(sim),
    )
    return result.exit_code, " ".join(result.output.split())


def manifest(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((tmp_path / "archive" / "reroll" / "manifest.json").read_text())  # type: ignore[no-any-return]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reroll_from_step_keeps_earlier_steps_and_old_takes(sim: Simulator, tmp_path: Path) -> None:
    storyboard(tmp_path)
    assert chainer(sim, tmp_path)[0] == 0
    first_run = list(sim.state.creates)
    assert len(first_run) == 5
    old = manifest(tmp_path)
    old_files = {s["index"]: s["file"] for s in old["steps"]}

    storyboard(tmp_path, third="A rainbow appears")  # the user rewrites segment 3, then re-rolls it
    code, output = chainer(sim, tmp_path, "--from-step", "3")
    assert code == 0, output

    # Steps 0-2 were not created again; step 3 extends step 2's (unchanged) video.
    creates = sim.state.creates
    assert creates[:5] == first_run and len(creates) == 7
    assert [c.kind for c in creates[5:]] == ["video-extend", "video-extend"]
    step2_video = sim.state.tasks[first_run[2].task_id].video_id
    assert creates[5].body["video_id"] == step2_video and creates[5].body["prompt"] == "A rainbow appears"
    assert creates[6].body["video_id"] == sim.state.tasks[creates[5].task_id].video_id

    now = manifest(tmp_path)
    steps = now["steps"]
    assert [(s["index"], s["attempt"], s["current"]) for s in steps] == [
        (0, 1, True),
        (1, 1, True),
        (2, 1, True),
        (3, 2, True),
        (4, 2, True),
    ]
    assert [s["file"] for s in steps[:3]] == [old_files[i] for i in range(3)]
    # The old takes are still archived, whole, and listed as earlier takes.
    earlier = now["earlier_takes"]
    assert [(s["index"], s["attempt"], s["current"]) for s in earlier] == [(3, 1, False), (4, 1, False)]
    folder = tmp_path / "archive" / "reroll"
    for take in earlier:
        assert take["file"] == old_files[take["index"]]
        assert sha(folder / take["file"]) == take["sha256"]
    # The new take is current: the output is its video.
    assert now["final_video"] == steps[4]["file"] != old_files[4]
    assert sha(tmp_path / "out.mp4") == sha(folder / steps[4]["file"])
    report = (tmp_path / "archive" / "report.html").read_text()
    assert "A storm rolls in" in report and "(earlier)" in report

    # Running again (no --from-step) finds everything done and creates nothing.
    assert chainer(sim, tmp_path)[0] == 0
    assert len(sim.state.creates) == 7


def test_reroll_refuses_when_an_earlier_step_changed(sim: Simulator, tmp_path: Path) -> None:
    storyboard(tmp_path)
    assert chainer(sim, tmp_path)[0] == 0
    storyboard(tmp_path, first="Something else")
    code, output = chainer(sim, tmp_path, "--from-step", "3")
    assert code == 1
    assert "--from-step 3: step 1 of 'reroll' changed too; re-roll from step 1" in output
    assert len(sim.state.creates) == 5
    code, output = chainer(sim, tmp_path)  # a plain run says how to go on
    assert code == 1 and "(--from-step 1)" in output


def test_reroll_past_retention_offers_and_takes_the_last_frame(sim: Simulator, tmp_path: Path) -> None:
    storyboard(tmp_path)
    sim.state.advance(-31 * DAY)  # the provider's clock: this chain is made 31 days ago
    assert chainer(sim, tmp_path)[0] == 0
    sim.state.advance(31 * DAY)  # back to now: Kling has deleted its videos
    first_run = list(sim.state.creates)

    code, output = chainer(sim, tmp_path, "--from-step", "3")
    assert code == 1
    assert "Kling deleted it after 30 days, so it cannot be extended" in output
    assert "--from-last-frame" in output
    assert sim.state.creates == first_run, "nothing was sent"

    code, output = chainer(sim, tmp_path, "--from-step", "3", "--from-last-frame")
    assert code == 0, output
    new = sim.state.creates[len(first_run) :]
    assert [c.kind for c in new] == ["image2video", "video-extend"]
    folder = tmp_path / "archive" / "reroll"
    m = manifest(tmp_path)
    handoff = folder / m["steps"][3]["handoff_image"]
    assert handoff.name == "handoff-003-take2.png" and handoff.is_file()
    # the output joins part 1 (steps 0-2, from the archive) and part 2 (the new takes)
    assert m["parts"] == [m["steps"][2]["file"], m["steps"][4]["file"]]
    frames = [media.probe(folder / f).frames or 0 for f in m["parts"]]
    assert media.probe(tmp_path / "out.mp4").frames == sum(frames) - 1

    # A later plain run keeps the hand-off the re-roll made: nothing changed, nothing created.
    code, output = chainer(sim, tmp_path)
    assert code == 0, output
    assert len(sim.state.creates) == len(first_run) + 2


def test_reroll_argument_errors(sim: Simulator, tmp_path: Path) -> None:
    storyboard(tmp_path)
    code, output = chainer(sim, tmp_path, "--from-last-frame")
    assert code == 2 and "--from-last-frame goes with --from-step N" in output
    assert chainer(sim, tmp_path)[0] == 0
    code, output = chainer(sim, tmp_path, "--from-step", "9")
    assert code == 2 and "--from-step 9: chain 'reroll' has steps 1 to 4 to re-roll" in output
    assert len(sim.state.creates) == 5


def test_killed_during_a_hand_off_resumes_without_a_second_create(sim: Simulator, tmp_path: Path) -> None:
    """SIGKILL right after the hand-off's create was sent; a plain `chainer run` finishes it:
    the journal remembers the hand-off, the archived image is reused, nothing is paid twice."""
    import signal
    import subprocess

    from helpers import CHAINER

    storyboard(tmp_path)
    assert chainer(sim, tmp_path)[0] == 0
    args = [CHAINER, "run", "reroll.yaml", "--state-dir", "state", "--archive-dir", "archive"]
    killed = subprocess.run(
        [*args, "--from-step", "3", "--from-last-frame"],
        cwd=tmp_path,
        env=provider_env(sim, CHAINER_FAILPOINT="after-post@3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run(
        args, cwd=tmp_path, env=provider_env(sim), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    new = sim.state.creates[5:]
    assert [c.kind for c in new] == ["image2video", "video-extend"], "the hand-off was created once"
    m = manifest(tmp_path)
    assert [s["attempt"] for s in m["steps"]] == [1, 1, 1, 2, 2] and len(m["parts"]) == 2
