"""Storyboards: examples validate; bad ones get every problem as file:line:col."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from chainer import plan, storyboard
from chainer.errors import StoryboardError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "sb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    """Every problem chainer finds in `path`, form and rules alike."""
    with pytest.raises(StoryboardError) as caught:
        plan.build(storyboard.load(path))
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("path", sorted((ROOT / "storyboards").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_storyboard_validates(path: Path) -> None:
    loaded = storyboard.load(path)
    assert plan.build(loaded).steps


def test_all_problems_reported_at_their_lines(tmp_path: Path) -> None:
    path = write(
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
    found = problems(path)
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
    path = write(tmp_path, text)
    found = problems(path)
    assert any(p.startswith(f"{path}:{line}:") and needle in p for p in found), found


def test_unreadable_file(tmp_path: Path) -> None:
    found = problems(tmp_path / "nope.yaml")
    assert found[0].startswith(f"{tmp_path / 'nope.yaml'}:1:1: cannot read")
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00name")
    assert "not UTF-8" in problems(path)[0]


def _capped(tmp_path: Path, start_seconds: int, segments: int) -> Path:
    lines = [f"name: cap\nstart:\n  text2video: {{prompt: p, duration: {start_seconds}}}\nsegments:\n"]
    lines += [f"  - prompt: s{i}\n" for i in range(segments)]
    return write(tmp_path, "".join(lines))


@pytest.mark.parametrize("start,fits", [(5, 35), (10, 34)])
def test_cap_boundary_worst_case_exactly_180_passes_one_more_fails(
    tmp_path: Path, start: int, fits: int
) -> None:
    loaded = storyboard.load(_capped(tmp_path, start, fits))
    assert plan.build(loaded).steps[-1].max_total == 180.0
    path = _capped(tmp_path, start, fits + 1)
    found = problems(path)
    assert len(found) == 1
    # segment fits+1 is on line 4 + (fits + 1)
    assert found[0].startswith(f"{path}:{5 + fits}:5: segment {fits + 1} could end at 185 s")


def test_plan_fingerprints_chain_through_steps(tmp_path: Path) -> None:
    a = plan.build(
        storyboard.load(
            write(
                tmp_path,
                "name: a\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q}, {prompt: r}]\n",
                "a.yaml",
            )
        )
    )
    b = plan.build(
        storyboard.load(
            write(
                tmp_path,
                "name: a\nstart: {text2video: {prompt: CHANGED}}\nsegments: [{prompt: q}, {prompt: r}]\n",
                "b.yaml",
            )
        )
    )
    assert all(x.fingerprint != y.fingerprint for x, y in zip(a.steps, b.steps, strict=True))
    assert [s.kind for s in a.steps] == ["text2video", "video-extend", "video-extend"]
    assert [(s.min_total, s.max_total) for s in a.steps] == [(5, 5), (9, 10), (13, 15)]
