"""Past 180 s: hand-offs from the last frame, parts joined into one file, on the simulator."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from helpers import run_chain
from PIL import Image, ImageChops, ImageStat

from chainer import load_plan, media
from chainer.errors import MediaError
from chainer.simulator.video import Canvas, Scene, render

FPS = 8  # fewer frames to render: the 6-minute chain stays quick, frame accuracy is the same


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0-255."""
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def test_six_minute_storyboard_becomes_one_file_of_joined_parts(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(fps=FPS)
    sb = tmp_path / "long.yaml"
    sb.write_text(
        "name: long\n"
        "start: {text2video: {prompt: A river at dawn, model: kling-v1-6, duration: 5}}\n"
        "segments:\n  - {prompt: The river flows on, repeat: 40}\n  - prompt: Night falls on the river\n"
        f"target_duration: 360\noutput: {tmp_path / 'long.mp4'}\n"
    )
    p = load_plan(sb)
    assert p.handoffs == [36, 72]
    result = run_chain(sim, sb, tmp_path)
    out = tmp_path / "long.mp4"
    assert result.state == "done" and result.output == out  # type: ignore[attr-defined]

    # The simulator's own record: what was created, and how long each part really is.
    creates = sim.state.creates
    kinds = [c.kind for c in creates]
    handoffs = [n for n, k in enumerate(kinds) if k == "image2video"]
    assert kinds[0] == "text2video" and handoffs == [36, 72]
    part_ends = [sim.state.tasks[creates[n - 1].task_id] for n in handoffs] + [
        sim.state.tasks[creates[-1].task_id]
    ]
    part_frames = [t.frames for t in part_ends]
    assert all(f <= 180 * FPS for f in part_frames)
    assert sum(part_frames) / FPS >= 360 - 5, "target_duration reached (all parts together)"
    for n in handoffs:  # same model and mode; the extension after a hand-off extends its video
        body = creates[n].body
        assert (body["model_name"], body["mode"], body["duration"]) == ("kling-v1-6", "std", "5")
        assert creates[n + 1].body["video_id"] == sim.state.tasks[creates[n].task_id].video_id

    # One playable file: every frame decodes; its length is the parts' minus one frame per join.
    assert media.decode_errors(out) == []
    info = media.probe(out)
    expected = sum(part_frames) - (len(part_frames) - 1)
    assert info.frames == expected
    assert abs(info.duration - expected / FPS) <= 1 / FPS

    # Each hand-off sent the archived hand-off image, which is the previous part's last frame,
    # and the joined file shows that image exactly at the boundary.
    folder = tmp_path / "archive" / "long"
    boundaries = [sum(f - 1 for f in part_frames[:k]) for k in range(1, len(part_frames))]
    width, height = sim.config.width, sim.config.height
    for k, n in enumerate(handoffs):
        png = folder / f"handoff-{n:03d}-take1.png"
        sent = base64.b64decode(creates[n].body["image"])
        assert sent == png.read_bytes()
        image = Image.open(io.BytesIO(sent)).convert("RGB")
        assert min(image.size) >= 300, "Kling's minimum image side"
        handed = image.resize((width, height), Image.Resampling.LANCZOS)
        b = boundaries[k]
        before, shown, after = (
            difference(f, handed) for f in media.frames_at(out, [b - 1, b, b + 1], width=width)
        )
        # the boundary frame is the hand-off image (up to two encodes), and closer to it than
        # its neighbours: a join off by one frame would fail here
        assert shown < 4.0 and shown < before and shown < after, (k, before, shown, after)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["final_video"] is None and len(manifest["parts"]) == 3
    assert [s["handoff_image"] for s in manifest["steps"] if s["kind"] == "image2video" and s["index"]] == [
        "handoff-036-take1.png",
        "handoff-072-take1.png",
    ]
    assert (folder / "contact-sheet.png").is_file()


def _clip(path: Path, *, frames: int, size: tuple[int, int] = (160, 96), segment: int = 0) -> Path:
    canvas = Canvas(*size, 24)
    render(path, scene=Scene(seed=segment), canvas=canvas, frames=frames, segment=segment, prompt="p")
    return path


def _clip_ending(path: Path, *, droppable: bool, segment: int, shortest: int = 20) -> Path:
    """A clip whose last frame is (or is not) the last packet decoded: x264 ends some clips
    with B-frames, depending on their content, so try a few lengths."""
    for frames in range(shortest, shortest + 40):
        if media.packets(_clip(path, frames=frames, segment=segment)).last_frame_droppable == droppable:
            return path
    raise AssertionError("no such clip in 40 tries")


def test_join_copies_when_streams_match_and_drops_each_repeated_frame(tmp_path: Path) -> None:
    a, b = (_clip_ending(tmp_path / f"{n}.mp4", droppable=True, segment=i) for i, n in enumerate("ab"))
    c = _clip(tmp_path / "c.mp4", frames=20, segment=2)
    na, nb = media.packets(a).frames, media.packets(b).frames
    joined = media.join([a, b, c], tmp_path / "j.mp4", drop_last_frame=True)
    assert joined.method == "copy" and joined.frames == na + nb + 20 - 2
    assert media.probe(tmp_path / "j.mp4").frames == joined.frames
    assert media.decode_errors(tmp_path / "j.mp4") == []
    # the frame after a join is the next clip's first frame; the dropped one is gone
    for index, clip in ((na - 1, b), (na + nb - 2, c)):
        first = media.frames_at(clip, [0], width=160)[0]
        at, before = media.frames_at(tmp_path / "j.mp4", [index, index - 1], width=160)
        assert difference(first, at) < 3.0 < difference(first, before)
    kept = media.join([a, b], tmp_path / "k.mp4", drop_last_frame=False)
    assert kept.method == "copy" and media.probe(tmp_path / "k.mp4").frames == na + nb


def test_join_re_encodes_only_the_last_few_frames_when_a_part_ends_in_b_frames(tmp_path: Path) -> None:
    a = _clip_ending(tmp_path / "a.mp4", droppable=False, segment=0, shortest=260)  # 2 GOPs
    b = _clip(tmp_path / "b.mp4", frames=20, segment=1)
    pa = media.packets(a)
    na = pa.frames
    cut = pa.last_cut()
    assert cut is not None
    keyframe = max(i for i, key in enumerate(pa.keyframes) if key)
    assert cut[0] > keyframe, "the cut is after the last keyframe: less than its GOP is re-encoded"
    assert 1 < na - cut[1] <= 8, "a mini-GOP's worth of frames after the cut"
    joined = media.join([a, b], tmp_path / "j.mp4", drop_last_frame=True)
    assert joined.method == "partial" and "B-frames" in joined.reason
    out = media.packets(tmp_path / "j.mp4")
    assert out.frames == na + 20 - 1
    # up to the cut the frames are a's own, copied (a re-encode would change them)
    last_copied = cut[1] - 1
    copied = media.frames_at(tmp_path / "j.mp4", [last_copied], width=160)[0]
    assert difference(copied, media.frames_at(a, [last_copied], width=160)[0]) == 0
    assert media.decode_errors(tmp_path / "j.mp4") == []
    first = media.frames_at(b, [0], width=160)[0]
    before, at = media.frames_at(tmp_path / "j.mp4", [na - 2, na - 1], width=160)
    assert difference(first, at) < 3.0 < difference(first, before)
    # each frame of a that was kept is where it was (the re-encoded few look like a's)
    redone = list(range(cut[1], na - 1))
    ours, theirs = (
        media.frames_at(tmp_path / "j.mp4", redone, width=160),
        media.frames_at(a, redone, width=160),
    )
    assert all(difference(o, t) < 3.0 for o, t in zip(ours, theirs, strict=True))


def test_join_re_encodes_when_streams_differ(tmp_path: Path) -> None:
    a = _clip(tmp_path / "a.mp4", frames=20)
    b = _clip(tmp_path / "b.mp4", frames=12, size=(320, 192), segment=1)
    joined = media.join([a, b], tmp_path / "j.mp4", drop_last_frame=True)
    assert joined.method == "re-encode" and "width, height" in joined.reason
    info = media.probe(tmp_path / "j.mp4")
    assert (info.width, info.height, info.frames) == (160, 96, 31)
    assert media.decode_errors(tmp_path / "j.mp4") == []


def test_media_errors_show_the_command_and_what_ffmpeg_said(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"this is not an mp4")
    with pytest.raises(MediaError) as caught:
        media.join([bad, bad], tmp_path / "j.mp4", drop_last_frame=True)
    text = str(caught.value)
    assert "not-a-video.mp4 is not a readable video" in text
    assert "command: " in text and "ffprobe" in text
    assert "Invalid data found" in text  # ffprobe's own words
    assert not (tmp_path / "j.mp4").exists()
