"""Property: whatever a storyboard file holds, chainer answers with a plan or with its own
positioned StoryboardError, never with anything else (and never by sending a request)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainer import load_plan
from chainer.errors import StoryboardError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "storyboards").glob("*.yaml"))]
KEYS = sorted(
    {
        "name",
        "provider",
        "start",
        "defaults",
        "segments",
        "target_duration",
        "output",
        "max_units",
        "text2video",
        "image2video",
        "video",
        "prompt",
        "negative_prompt",
        "cfg_scale",
        "model",
        "mode",
        "duration",
        "aspect_ratio",
        "image",
        "image_tail",
        "video_id",
        "task_id",
        "repeat",
        "promt",
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "kling-v1",
            "kling-v2-master",
            "kling-v1-5",
            "std",
            "pro",
            "5",
            "10",
            "16:9",
            "x" * 2600,
            "",
            "cometapi",
            "dmxapi",
            "a.png",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid example with a few keys replaced, removed or added at any depth."""
    doc = draw(st.sampled_from(EXAMPLES))
    doc = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        node: Any = doc
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict):
            action = draw(st.sampled_from(["replace", "remove", "add"]))
            if action == "add" or not node:
                node[draw(st.sampled_from(KEYS))] = draw(values)
            elif action == "remove":
                node.pop(draw(st.sampled_from(list(node))))
            else:
                node[draw(st.sampled_from(list(node)))] = draw(values)
        elif isinstance(node, list):
            node.append(draw(values))
    return doc


def text_edits(text: str, data: st.DataObject) -> str:
    """Damage the YAML text itself: cut it, or insert characters that upset YAML."""
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(text)))
        piece = data.draw(
            st.sampled_from(
                [
                    "\t",
                    ":",
                    "- ",
                    "{",
                    "]",
                    "&a ",
                    "*a",
                    "!!python/object ",
                    "\n  ",
                    "'",
                    "#",
                    "\x00",
                    "é",
                    "? ",
                    "---\n",
                    "%YAML 1.1\n",
                    "|\n",
                ]
            )
        )
        text = text[:at] + piece + text[at:] if data.draw(st.booleans()) else text[:at]
    return text


def check(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_plan(path)
        except StoryboardError as exc:
            assert exc.problems, "a StoryboardError without problems"
            for problem in exc.problems:
                assert problem.file == str(path)
                assert problem.line >= 1 and problem.column >= 1
                assert problem.message


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(mutated(), values), data=st.data())
def test_any_storyboard_gets_a_plan_or_positioned_problems(doc: Any, data: st.DataObject) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    check(text_edits(text, data))


def test_alias_bombs_are_refused_not_expanded() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 12):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text(bomb)
        try:
            load_plan(path)
        except StoryboardError as exc:
            assert "too large" in str(exc)
        else:
            raise AssertionError("an alias bomb was accepted")
