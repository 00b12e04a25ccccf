"""Storyboards: examples validate; bad ones get every problem as file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import plan_problems, write_storyboard

from chainer import load_plan, plan, storyboard

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "storyboards").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_storyboard_validates(path: Path) -> None:
    loaded = storyboard.load(path)
    assert plan.build(loaded).steps


def test_all_problems_reported_at_their_lines(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path,
        """
        name: good-name
        start:
          text2video:
            promt: "typo"
        segments:
          - prompt: "fine"
            mode: pro
          - prompt: 42
        colour: blue
        """,
    )
    found = plan_problems(path)
    f = str(path)
    assert f"{f}:4:5: unknown key 'promt' in start.text2video; did you mean 'prompt'?" in found
    assert any(p.startswith(f"{f}:7:5: segment 1 cannot set 'mode'") and "inherits" in p for p in found)
    assert any(p.startswith(f"{f}:8:13: segment 2 prompt") for p in found)
    assert f"{f}:9:1: unknown key 'colour' in the storyboard" in found
    assert found == sorted(found, key=lambda p: int(p.split(":")[1]))


@pytest.mark.parametrize(
    "text,line,needle",
    [
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("name: a\nstart: [\n", 3, "YAML syntax error"),
        ("- a\n- b\n", 1, "mapping"),
        ("name: a\nname: b\n", 2, "duplicate key 'name'"),
        ("name: 'has space'\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q}]\n", 1, "name must be"),
        ("name: a\nstart: {}\nsegments: [{prompt: q}]\n", 2, "exactly one of"),
        ("name: a\nstart: {text2video: {prompt: p}}\nsegments: []\n", 3, "at least 1"),
        ("name: a\nstart: {text2video: {prompt: p, duration: 7}}\nsegments: [{prompt: q}]\n", 2, "duration"),
        (
            "name: a\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q, cfg_scale: 2}]\n",
            3,
            "cfg_scale",
        ),
        (
            "name: a\nstart: {text2video: {prompt: p, model: kling-v2-master}}\nsegments: [{prompt: q}]\n",
            2,
            "cannot be extended",
        ),
        ("name: a\nstart: {image2video: {image: missing.png}}\nsegments: [{prompt: q}]\n", 2, "not found"),
    ],
)
def test_bad_storyboards(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = write_storyboard(tmp_path, text)
    found = plan_problems(path)
    assert any(p.startswith(f"{path}:{line}:") and needle in p for p in found), found


def test_unreadable_file(tmp_path: Path) -> None:
    found = plan_problems(tmp_path / "nope.yaml")
    assert found[0].startswith(f"{tmp_path / 'nope.yaml'}:1:1: cannot read")
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00name")
    assert "not UTF-8" in plan_problems(path)[0]


def _capped(tmp_path: Path, start_seconds: int, segments: int) -> Path:
    lines = [f"name: cap\nstart:\n  text2video: {{prompt: p, duration: {start_seconds}}}\nsegments:\n"]
    lines += [f"  - prompt: s{i}\n" for i in range(segments)]
    return write_storyboard(tmp_path, "".join(lines))


@pytest.mark.parametrize("start,fits", [(5, 35), (10, 34)])
def test_cap_boundary_exactly_180_extends_one_more_hands_off(tmp_path: Path, start: int, fits: int) -> None:
    loaded = storyboard.load(_capped(tmp_path, start, fits))
    p = plan.build(loaded)
    assert p.steps[-1].max_total == 180.0 and p.handoffs == []
    path = _capped(tmp_path, start, fits + 1)
    p = plan.build(storyboard.load(path))
    # the segment that could cross 180 s starts part 2 from the last frame instead
    assert p.handoffs == [fits + 1]
    last = p.steps[-1]
    assert last.kind == "image2video" and last.handoff and last.part == 1
    assert last.fields == {"model_name": "kling-v1", "mode": "std", "duration": "5", "prompt": f"s{fits}"}
    assert [s.part for s in p.steps[:-1]] == [0] * (fits + 1)
    # segment fits+1 is on line 4 + (fits + 1); the plan says so at that line
    assert [str(w) for w in p.warnings] == [
        f"{path}:{5 + fits}:5: step {fits + 1} (segment {fits + 1}) could take the video past Kling's 180 s "
        "cap: it starts "
        "part 2 instead, an image2video from the last frame so far (the parts are joined at the end)"
    ]


def test_past_the_cap_the_parts_repeat_every_180_s(tmp_path: Path) -> None:
    p = plan.build(storyboard.load(_capped(tmp_path, 5, 100)))
    # part 1: 5 s + 35 x 5 s; every later part: a 5 s hand-off + 35 x 5 s
    assert p.handoffs == [36, 72]
    assert all(s.max_total - p.steps[i].max_total == 5 for i, s in enumerate(p.steps[1:]))
    assert p.summary()["handoffs"] == [36, 72]


def test_an_existing_video_near_the_cap_cannot_be_handed_off(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path,
        "name: x\nstart:\n  video: {video_id: v1, model: kling-v1, duration: 178}\nsegments: [{prompt: a}]\n",
    )
    assert any(":3:10: the existing video could be 178 s long" in p for p in plan_problems(path))


def test_plan_fingerprints_chain_through_steps(tmp_path: Path) -> None:
    a = plan.build(
        storyboard.load(
            write_storyboard(
                tmp_path,
                "name: a\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q}, {prompt: r}]\n",
                "a.yaml",
            )
        )
    )
    b = plan.build(
        storyboard.load(
            write_storyboard(
                tmp_path,
                "name: a\nstart: {text2video: {prompt: CHANGED}}\nsegments: [{prompt: q}, {prompt: r}]\n",
                "b.yaml",
            )
        )
    )
    assert all(x.fingerprint != y.fingerprint for x, y in zip(a.steps, b.steps, strict=True))
    assert [s.kind for s in a.steps] == ["text2video", "video-extend", "video-extend"]
    assert [(s.min_total, s.max_total) for s in a.steps] == [(5, 5), (9, 10), (13, 15)]


def test_defaults_fill_segments_and_repeat_unrolls(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path,
        """
        name: d
        start: {text2video: {prompt: p}}
        defaults: {negative_prompt: "blur", cfg_scale: 0.3}
        segments:
          - {prompt: a, repeat: 3}
          - {prompt: b, cfg_scale: 0.9}
        """,
    )
    steps = plan.build(storyboard.load(path)).steps[1:]
    assert [s.prompt for s in steps] == ["a", "a", "a", "b"]
    assert steps[0].fields == {"prompt": "a", "negative_prompt": "blur", "cfg_scale": 0.3}
    assert steps[3].fields == {"prompt": "b", "negative_prompt": "blur", "cfg_scale": 0.9}
    assert len({s.fingerprint for s in steps}) == 4, "repeats are distinct steps"


def test_target_duration_adds_optional_steps_for_the_worst_case(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path,
        "name: t\nstart: {text2video: {prompt: p, duration: 5}}\n"
        "segments: [{prompt: a}, {prompt: b}]\ntarget_duration: 30\n",
    )
    p = plan.build(storyboard.load(path))
    # 5 s + 2 listed (>= 8 s) leaves 17 s: 5 more extensions at 4 s each in the worst case
    assert [s.optional for s in p.steps] == [False, False, False] + [True] * 5
    assert all(s.prompt == "b" for s in p.steps[3:])
    assert p.steps[-1].min_total >= 30


@pytest.mark.parametrize("target", [175, 175.5, 400])
def test_target_duration_past_the_cap_adds_parts(tmp_path: Path, target: float) -> None:
    path = write_storyboard(
        tmp_path,
        f"name: t\nstart: {{text2video: {{prompt: p}}}}\nsegments: [{{prompt: a}}]\n"
        f"target_duration: {target}\n",
    )
    p = plan.build(storyboard.load(path))
    assert p.steps[-1].min_total >= target
    # hand-offs fall where the worst case (5 s per extension) would cross 180 s
    part_length = 0.0
    for before, step in zip(p.steps, p.steps[1:], strict=False):
        part_length = 5.0 if step.handoff else (part_length or before.max_total) + 5.0
        assert part_length <= 180
    assert len(p.handoffs) == (0 if target < 175 else 1 if target < 360 else 2)


def test_provider_limits_apply(tmp_path: Path) -> None:
    long = "x" * 501
    path = write_storyboard(
        tmp_path,
        f"name: c\nprovider: cometapi\nstart: {{text2video: {{prompt: p}}}}\n"
        f"segments:\n  - prompt: ok\n  - prompt: {long}\n",
    )
    assert any(
        p.startswith(f"{path}:6:13: prompt has 501 characters; cometapi accepts at most 500")
        for p in plan_problems(path)
    )
    path = write_storyboard(
        tmp_path,
        f"name: c\nprovider: kling\nstart: {{text2video: {{prompt: p}}}}\nsegments:\n  - prompt: {long}\n",
        "k.yaml",
    )
    plan.build(storyboard.load(path))  # 501 characters are fine on Kling itself


def test_v1_5_is_refused_where_the_provider_refuses_it(tmp_path: Path) -> None:
    text = "name: v\nprovider: {p}\nstart:\n  video: {{video_id: x, model: kling-v1-5, duration: 5}}\nsegments: [{{prompt: a}}]\n"
    dmx = write_storyboard(tmp_path, text.format(p="dmxapi"), "dmx.yaml")
    assert any(":4:" in p and "does not extend videos made by kling-v1-5" in p for p in plan_problems(dmx))
    kling = plan.build(storyboard.load(write_storyboard(tmp_path, text.format(p="kling"), "k.yaml")))
    assert any("kling-v1-5" in str(w) for w in kling.warnings)


def test_unknown_provider(tmp_path: Path) -> None:
    path = write_storyboard(
        tmp_path, "name: u\nprovider: cometapii\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: a}]\n"
    )
    found = plan_problems(path)
    assert (
        found[0].startswith(f"{path}:2:11: unknown provider profile 'cometapii'") and "cometapi" in found[0]
    )


def test_image_rules_are_checked_before_sending(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (200, 200)).save(tmp_path / "small.png")
    path = write_storyboard(
        tmp_path, "name: i\nstart:\n  image2video: {image: small.png}\nsegments: [{prompt: a}]\n"
    )
    assert any(p.startswith(f"{path}:3:") and "at least 300 px" in p for p in plan_problems(path))


def test_committed_schema_is_current() -> None:
    import json

    committed = json.loads((ROOT / "storyboard.schema.json").read_text())
    assert committed == storyboard.json_schema(), "run: chainer schema -o storyboard.schema.json"


def test_schema_knows_every_field() -> None:
    props = storyboard.json_schema()["properties"]
    assert {
        "name",
        "provider",
        "start",
        "defaults",
        "segments",
        "target_duration",
        "output",
        "max_units",
    } <= set(props)
    assert storyboard.json_schema()["additionalProperties"] is False


def test_fingerprints_are_stable_across_releases() -> None:
    """A step's fingerprint is how a resumed chain knows its steps are unchanged: if it
    moved with a code change (say a renamed wire field), every chain in flight would be
    refused as edited. These values were taken from storyboards/lighthouse.yaml when the
    layout was frozen (chainer.plan.StepRequest.canonical); they must never change."""
    p = load_plan(ROOT / "storyboards" / "lighthouse.yaml")
    assert p.steps[0].fingerprint == "ce438a9f0dea072ae7f6eff38f1a313cee15e226d2bc31f03457e507e424a157"
    assert p.steps[-1].fingerprint == "cec9d72eb727e97cf5e98297898d06eb30788f9757fc8545abe1a516538fcf7c"


def test_a_step_request_keeps_its_canonical_layout_whatever_the_wire_calls_it() -> None:
    from chainer.plan import StepRequest

    request = StepRequest.from_canonical(
        {"model_name": "kling-v1", "mode": "std", "duration": "5", "prompt": "p"}
    )
    assert (request.model, request.duration) == ("kling-v1", 5), "chainer's own names, typed"
    assert request.canonical() == {"model_name": "kling-v1", "mode": "std", "duration": "5", "prompt": "p"}
    existing = StepRequest.from_canonical({"video_id": "v", "task_id": None})
    assert existing.canonical() == {"video_id": "v", "task_id": None}, (
        "an unknown task_id is part of the layout"
    )
