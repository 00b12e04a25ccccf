"""Omni-Video continuation: chains of new shots for models that video-extend refuses.

Storyboard and plan rules, then whole chains on the simulator: each shot references the
previous one by url, the shots are joined into one file, and a resume after the stored
url has expired gets a fresh one without creating anything twice.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from helpers import CHAINER, plan_problems, provider_env, run_chain, write_storyboard
from PIL import Image, ImageChops, ImageStat
from typer.testing import CliRunner

from chainer import media, plan, storyboard
from chainer.cli import app
from chainer.journal import Journal
from chainer.simulator import Simulator
from chainer.simulator.state import CreateRecord
from chainer.simulator.video import Canvas, _frames

FPS = 8  # few frames to render; frame accuracy is the same


def referenced_video(create: CreateRecord) -> str:
    """The video id an omni create's reference url names (the simulator's /files/<id>.mp4)."""
    (item,) = create.body["video_list"]
    assert item["refer_type"] == "feature" and item["keep_original_sound"] == "no"
    return httpx.URL(item["video_url"]).path.removeprefix("/files/").removesuffix(".mp4")


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0-255."""
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def first_frame(sim: Simulator, create: CreateRecord, segment: int) -> tuple[int, Image.Image]:
    """Where in its scene's time the shot `create` made starts, and the picture the
    simulator's renderer draws there for it: what the joined output must show."""
    video = sim.state.videos[sim.state.tasks[create.task_id].video_id]
    canvas = Canvas(sim.config.width, sim.config.height, FPS)
    raw = next(
        _frames(
            video.scene,
            canvas,
            start=video.start_frame / FPS,
            frames=1,
            segment=segment,
            prompt=create.body["prompt"],
            watermark=False,
        )
    )
    return video.start_frame, Image.frombytes("RGB", (canvas.width, canvas.height), raw)


# ------------------------------------------------------------------ storyboard and plan


def test_a_kling_v2_start_with_extend_segments_is_refused_naming_the_omni_route(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path,
        """
        name: v2
        start:
          text2video: {prompt: a harbour at dawn, model: kling-v2-master, duration: 5}
        segments:
          - prompt: the boat leaves
        """,
    )
    found = plan_problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:3:")
    assert "videos made by kling-v2-master cannot be extended" in found[0]
    assert "continuation: omni" in found[0] and "Omni-Video" in found[0]
    # the command line says the same, with a non-zero exit, before anything is sent
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2 and "continuation: omni" in result.output
    # and the route it names is accepted
    path.write_text(path.read_text() + "continuation: omni\n")
    assert [s.kind for s in plan.build(storyboard.load(path)).steps] == ["text2video", "omni-video"]


OMNI_START = "name: o\nstart: {text2video: {prompt: p, model: kling-v2-6}}\ncontinuation: omni\n"


@pytest.mark.parametrize(
    "text,line,needle",
    [
        (OMNI_START + "segments:\n  - {prompt: q, duration: 11}\n", 5, "lasts 3-10 s; 11 is outside"),
        (OMNI_START + "omni: {duration: 2}\nsegments: [{prompt: q}]\n", 4, "lasts 3-10 s; 2 is outside"),
        (OMNI_START + "omni: {sound: 'on'}\nsegments: [{prompt: q}]\n", 4, "needs sound off"),
        (OMNI_START + "omni: {sound: on}\nsegments: [{prompt: q}]\n", 4, "needs sound off"),  # YAML's true
        (OMNI_START + "omni: {model: kling-v2-6}\nsegments: [{prompt: q}]\n", 4, "omni-video does not offer"),
        (OMNI_START + "segments:\n  - {prompt: q, negative_prompt: blur}\n", 5, "takes no negative_prompt"),
        (
            OMNI_START + "segments:\n  - {prompt: 'q <<<image_1>>>'}\n",
            5,
            "names <<<image_1>>> but the shot has 0",
        ),
        (OMNI_START + "segments:\n  - {prompt: 'q <<<video_2>>>'}\n", 5, "<<<video_2>>>"),
        (OMNI_START + "segments:\n  - {prompt: q, images: [nope.png]}\n", 5, "not found"),
        (
            OMNI_START + "segments:\n  - {prompt: q, images: [a.png, b.png, c.png, d.png, e.png]}\n",
            5,
            "at most 4",
        ),
        (
            OMNI_START + "segments:\n  - {prompt: q}\n  - {prompt: r, continuation: extend}\n",
            6,
            "video-extend after an Omni-Video shot",
        ),
        (
            "name: o\nstart: {text2video: {prompt: p, model: kling-v1-6}}\nsegments:\n  - {prompt: q, duration: 6}\n",
            4,
            "duration applies to Omni-Video shots only",
        ),
        (
            "name: o\nstart: {video: {video_id: v, model: kling-v2-6}}\ncontinuation: omni\nsegments: [{prompt: q}]\n",
            2,
            "cannot directly follow an existing video",
        ),
        (
            "name: o\nprovider: cometapi\nstart: {text2video: {prompt: p, model: kling-v2-6}}\n"
            f"continuation: omni\nsegments:\n  - prompt: {'x' * 480}\n",
            6,
            "with the <<<video_1>>> reference chainer puts in front; cometapi accepts at most 500",
        ),
    ],
)
def test_omni_rules_are_checked_before_anything_is_sent(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    path = write_storyboard(tmp_path, text)
    found = plan_problems(path)
    assert any(p.startswith(f"{path}:{line}:") and needle in p for p in found), found


def test_plan_shows_each_shot_its_seconds_units_and_the_total(tmp_path: Path) -> None:
    Image.new("RGB", (400, 400), (10, 120, 200)).save(tmp_path / "hat.png")
    path = write_storyboard(
        tmp_path,
        """
        name: mixed
        start:
          text2video: {prompt: a harbour, model: kling-v1-6, duration: 5}
        omni: {duration: 8, mode: pro}
        segments:
          - prompt: the boat leaves
            repeat: 2
          - prompt: the sailor puts on <<<image_1>>>
            continuation: omni
            images: [hat.png]
          - prompt: "<<<video_1>>> ends at sea"
            continuation: omni
            duration: 3
        """,
    )
    p = plan.build(storyboard.load(path))
    assert [s.kind for s in p.steps] == [
        "text2video",
        "video-extend",
        "video-extend",
        "omni-video",
        "omni-video",
    ]
    assert [s.part for s in p.steps] == [0, 0, 0, 1, 2], "each shot is a part of its own"
    summary = p.summary()
    assert [tuple(s["adds"]) for s in summary["steps"]] == [(5, 5), (4, 5), (4, 5), (8, 8), (3, 3)]
    assert (p.steps[-1].min_total, p.steps[-1].max_total) == (24, 26)
    assert [s.units for s in p.steps] == [1, 1, 1, 5.6, 2.1], "shots in pro, by the second"
    assert summary["shots"] == [3, 4] and summary["estimated_units"] == pytest.approx(10.7)
    shot = p.steps[3]
    assert (
        shot.fields["prompt"]
        == "Based on <<<video_1>>>, generate the next shot: the sailor puts on <<<image_1>>>"
    )
    assert p.steps[4].fields["prompt"] == "<<<video_1>>> ends at sea", "a prompt that names the video is kept"
    assert (shot.fields["model_name"], shot.fields["mode"], shot.fields["sound"]) == (
        "kling-video-o1",
        "pro",
        "off",
    )
    # a reference image counts by its content: a new picture under the same name changes the step
    before = shot.fingerprint
    Image.new("RGB", (400, 400), (200, 20, 20)).save(tmp_path / "hat.png")
    assert plan.build(storyboard.load(path)).steps[3].fingerprint != before
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "+8 s" in result.output and "Steps 3-4 are 2 Omni-Video shots" in result.output


# ------------------------------------------------------------------ whole chains on the simulator


def test_sixty_second_omni_storyboard_becomes_one_file_of_its_shots(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(fps=FPS)
    sb = write_storyboard(
        tmp_path,
        f"""
        name: sixty
        start:
          text2video: {{prompt: a harbour at dawn, model: kling-v2-6, duration: 10}}
        continuation: omni
        omni: {{duration: 10}}
        segments:
          - prompt: the boat leaves the harbour
          - prompt: it passes the lighthouse
            duration: 7
          - prompt: open sea
            repeat: 2
          - prompt: "<<<video_1>>> ends as the sun rises"
            duration: 3
          - prompt: gulls follow the boat
        output: {tmp_path / "sixty.mp4"}
        """,
    )
    assert plan.build(storyboard.load(sb)).steps[-1].max_total == 60
    result = run_chain(sim, sb, tmp_path)
    out = tmp_path / "sixty.mp4"
    assert result.state == "done" and result.output == out  # type: ignore[attr-defined]

    creates = sim.state.creates
    assert [c.kind for c in creates] == ["text2video"] + ["omni-video"] * 6
    produced = [sim.state.tasks[c.task_id].video_id for c in creates]
    for n, create in enumerate(creates[1:], start=1):  # every shot referenced the one before it
        assert referenced_video(create) == produced[n - 1], f"shot {n}"
        assert "<<<video_1>>>" in create.body["prompt"] and create.body["sound"] == "off"
    assert [c.body["duration"] for c in creates[1:]] == ["10", "7", "10", "10", "3", "10"]

    # One playable file: every frame decodes; its frames are the shots' frames, none lost or doubled.
    shots = [sim.state.tasks[c.task_id].frames for c in creates]
    assert media.decode_errors(out) == []
    info = media.probe(out)
    assert info.frames == sum(shots) == 60 * FPS
    assert abs(info.duration - sum(shots) / FPS) <= len(shots[1:]) / FPS

    # Each shot continues the one before: it starts in the scene's time right after the
    # previous shot's last frame, and the output shows that first frame exactly at the
    # boundary (closer to it than its neighbours are: a frame lost or doubled at a join, or
    # a shot that restarted its scene, fails here).
    for k in range(1, len(shots)):
        b = sum(shots[:k])
        start, drawn = first_frame(sim, creates[k], k)
        assert start == b, f"shot {k} starts at scene frame {start}, not {b}"
        before, shown, after = (
            difference(f, drawn) for f in media.frames_at(out, [b - 1, b, b + 1], width=sim.config.width)
        )
        assert shown < 4.0 and shown < before and shown < after, (k, before, shown, after)

    folder = tmp_path / "archive" / "sixty"
    assert len(list(folder.glob("0*.mp4"))) == 7 and (folder / "contact-sheet.png").is_file()
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        rows = journal.steps("sixty")
    assert [r.state for r in rows] == ["downloaded"] * 7
    assert sum(r.units or 0 for r in rows) == pytest.approx(2 + 10)  # the provider's own figures


def test_an_extend_phase_then_omni_shots(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(fps=FPS)
    sb = write_storyboard(
        tmp_path,
        f"""
        name: mixed
        start:
          text2video: {{prompt: a harbour, model: kling-v1-6, duration: 5}}
        segments:
          - prompt: the boat leaves
            repeat: 2
          - prompt: new shot at sea
            continuation: omni
            duration: 4
            repeat: 2
        output: {tmp_path / "mixed.mp4"}
        """,
    )
    run_chain(sim, sb, tmp_path)
    creates = sim.state.creates
    assert [c.kind for c in creates] == [
        "text2video",
        "video-extend",
        "video-extend",
        "omni-video",
        "omni-video",
    ]
    tasks = [sim.state.tasks[c.task_id] for c in creates]
    assert referenced_video(creates[3]) == tasks[2].video_id, "the first shot continues the extended video"
    assert referenced_video(creates[4]) == tasks[3].video_id
    # the output: the whole extended video, then the two shots
    assert media.probe(tmp_path / "mixed.mp4").frames == tasks[2].frames + tasks[3].frames + tasks[4].frames


def test_resume_across_an_expired_reference_url_gets_a_fresh_one(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text(
        "name: o\nstart: {text2video: {prompt: a harbour, model: kling-v2-6}}\ncontinuation: omni\n"
        "segments:\n  - {prompt: the boat leaves, duration: 3}\n  - {prompt: open sea, duration: 3}\n"
        "output: out.mp4\n"
    )

    def chainer_run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINER, "run", "o.yaml"],
            cwd=tmp_path,
            env=provider_env(sim, **extra),
            capture_output=True,
            text=True,
            timeout=300,
        )

    # Killed as the second shot was about to be submitted: the first shot is made, its url stored.
    killed = chainer_run(CHAINER_FAILPOINT="after-intent@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal_path = tmp_path / ".chainer" / "journal-kling.sqlite"
    with Journal(journal_path) as journal:
        stored = journal.step("o", 1).video_url
        assert journal.step("o", 2).state == "submit_intent"
    assert stored and httpx.get(stored).status_code == 200
    assert [c.kind for c in sim.state.creates] == ["text2video", "omni-video"]

    sim.state.advance(sim.config.url_ttl_s + 60)  # hours later: the stored url has expired
    assert httpx.get(stored).status_code == 403

    resumed = chainer_run()
    assert resumed.returncode == 0, resumed.stderr
    creates = sim.state.creates
    assert [c.kind for c in creates] == ["text2video", "omni-video", "omni-video"], "nothing made twice"
    sent = creates[2].body["video_list"][0]["video_url"]
    assert sent != stored and referenced_video(creates[2]) == sim.state.tasks[creates[1].task_id].video_id
    assert httpx.get(sent).status_code == 200, "the url sent is a working one"
    with Journal(journal_path) as journal:
        assert journal.step("o", 1).video_url == sent, "the fresh url is remembered"
        assert [r.state for r in journal.steps("o")] == ["downloaded"] * 3
    assert media.probe(tmp_path / "out.mp4").frames == sum(sim.state.tasks[c.task_id].frames for c in creates)


def test_a_killed_omni_create_is_found_not_sent_again(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text(
        "name: o\nstart: {text2video: {prompt: p, model: kling-v2-6}}\ncontinuation: omni\n"
        "segments: [{prompt: q, duration: 3}]\noutput: out.mp4\n"
    )
    env = provider_env(sim, CHAINER_FAILPOINT="after-post@1")
    killed = subprocess.run(
        [CHAINER, "run", "o.yaml"], cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        [CHAINER, "run", "o.yaml"],
        cwd=tmp_path,
        env=provider_env(sim),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [c.kind for c in sim.state.creates] == ["text2video", "omni-video"]
    assert (tmp_path / "out.mp4").is_file()


def omni_chain_cli(sim: Simulator, tmp_path: Path, *durations: int) -> list[str]:
    """A kling-v2-6 chain of shots of these durations in tmp_path; the `chainer run`
    arguments for it (journal and archive in tmp_path too)."""
    shots = "".join(f"  - {{prompt: shot {n}, duration: {d}}}\n" for n, d in enumerate(durations, start=1))
    sb = tmp_path / "o.yaml"
    sb.write_text(
        "name: o\nstart: {text2video: {prompt: p, model: kling-v2-6}}\ncontinuation: omni\n"
        f"segments:\n{shots}output: {tmp_path / 'o.mp4'}\n"
    )
    return [
        "run",
        str(sb),
        "--state-dir",
        str(tmp_path / "state"),
        "--archive-dir",
        str(tmp_path / "archive"),
    ]


def test_a_shot_can_be_rerolled_and_the_last_frame_route_is_refused(sim: Simulator, tmp_path: Path) -> None:
    args = omni_chain_cli(sim, tmp_path, 3, 4)
    assert CliRunner().invoke(app, args, env=provider_env(sim)).exit_code == 0
    first = sim.state.tasks[sim.state.creates[1].task_id].video_id
    refused = CliRunner().invoke(app, [*args, "--from-step", "2", "--from-last-frame"], env=provider_env(sim))
    assert refused.exit_code == 2 and "Omni-Video shot" in refused.output
    assert len(sim.state.creates) == 3, "nothing sent"
    again = CliRunner().invoke(app, [*args, "--from-step", "2"], env=provider_env(sim))
    assert again.exit_code == 0, again.output
    creates = sim.state.creates
    assert [c.kind for c in creates] == ["text2video", "omni-video", "omni-video", "omni-video"]
    assert referenced_video(creates[3]) == first, "the new take continues the same first shot"
    frames = [sim.state.tasks[c.task_id].frames for c in (creates[0], creates[1], creates[3])]
    assert media.probe(tmp_path / "o.mp4").frames == sum(frames)


def test_target_duration_repeats_the_last_shot(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(fps=FPS)
    sb = write_storyboard(
        tmp_path,
        f"""
        name: target
        start: {{text2video: {{prompt: p, model: kling-v2-6, duration: 5}}}}
        continuation: omni
        omni: {{duration: 10}}
        segments: [{{prompt: q, duration: 4}}, {{prompt: r}}]
        target_duration: 30
        output: {tmp_path / "t.mp4"}
        """,
    )
    p = plan.build(storyboard.load(sb))
    assert [(s.kind, s.optional, s.max_total) for s in p.steps[1:]] == [
        ("omni-video", False, 9),
        ("omni-video", False, 19),
        ("omni-video", True, 29),
        ("omni-video", True, 39),
    ]
    # shots last exactly what they ask for: both repeats are needed (29 s < 30 s)
    run_chain(sim, sb, tmp_path)
    assert [c.kind for c in sim.state.creates] == ["text2video"] + ["omni-video"] * 4
    assert media.probe(tmp_path / "t.mp4").frames == 39 * FPS


def test_a_shot_whose_reference_kling_deleted_cannot_be_rerolled(sim: Simulator, tmp_path: Path) -> None:
    args = omni_chain_cli(sim, tmp_path, 3)
    sim.state.advance(-31 * 86400)  # the provider's clock: the chain is made 31 days ago
    assert CliRunner().invoke(app, args, env=provider_env(sim)).exit_code == 0
    sim.state.advance(31 * 86400)  # now: Kling has deleted its videos
    made = list(sim.state.creates)
    refused = CliRunner().invoke(app, [*args, "--from-step", "1"], env=provider_env(sim))
    assert refused.exit_code == 1
    assert "references the previous shot by its url" in " ".join(refused.output.split())
    assert sim.state.creates == made, "nothing was sent"


def test_the_budget_stops_before_a_shot_that_would_pass_it(sim: Simulator, tmp_path: Path) -> None:
    from chainer.errors import BudgetExceeded

    sb = write_storyboard(
        tmp_path,
        f"""
        name: budget
        start: {{text2video: {{prompt: p, model: kling-v2-6, duration: 5}}}}
        continuation: omni
        omni: {{duration: 8}}
        segments: [{{prompt: q, repeat: 3}}]
        max_units: 3
        output: {tmp_path / "b.mp4"}
        """,
    )
    with pytest.raises(BudgetExceeded, match=r"2\.6 units spent; segment 2 would cost about 1\.6 more"):
        run_chain(sim, sb, tmp_path)
    assert [c.kind for c in sim.state.creates] == ["text2video", "omni-video"], "nothing past the budget"


def test_a_shot_waiting_for_a_slot_still_sends_a_live_url(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Signed urls live 2 s here and a shot takes ~4 s: a url signed before waiting for the
    # account's one slot would be dead by the time the create goes out.
    sim = sim_factory(concurrency=1, time_scale=0.03, url_ttl_s=2.0)
    boards = tmp_path / "boards"
    boards.mkdir()
    for name in ("a", "b"):
        (boards / f"{name}.yaml").write_text(
            f"name: {name}\nstart: {{text2video: {{prompt: p, model: kling-v2-6}}}}\ncontinuation: omni\n"
            f"segments: [{{prompt: q, duration: 3}}]\noutput: {tmp_path / name}.mp4\n"
        )
    args = ["run", str(boards), "--concurrency", "1", "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(
        app, [*args, "--archive-dir", str(tmp_path / "archive")], env=provider_env(sim)
    )
    assert result.exit_code == 0, result.output
    refused = sum(
        n for key, n in sim.state.requests.items() if key.startswith("POST") and key.endswith(" 1201")
    )
    assert refused == 0, "no create carried an expired url"
    assert [c.kind for c in sim.state.creates].count("omni-video") == 2
