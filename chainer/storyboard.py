"""Storyboards: the YAML files users write, parsed into pydantic models with positions.

This module checks form (keys, types, ranges); Kling's and the provider's rules are
applied by the planner (chainer.plan), which reports with the same positions.

A storyboard names a chain, says how its first video comes to be (`start`), and lists
the `segments` that each continue the video so far: by video-extend (the default), or by
Omni-Video shots (`continuation: omni`) for models video-extend refuses. Every problem is reported as
`file:line:col: message`, pointing at the YAML node at fault, all problems in one pass.

    name: lighthouse
    start:
      text2video: {prompt: "a lighthouse at dusk", model: kling-v1-6, mode: std, duration: 5}
    segments:
      - prompt: "the camera pulls back over the sea"
      - prompt: "night falls, the beam sweeps the fog"
    output: out/lighthouse.mp4
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from . import rules
from .errors import Problem, StoryboardError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=rules.PROMPT_MAX_CHARS)]
OptPrompt = Annotated[str, StringConstraints(max_length=rules.PROMPT_MAX_CHARS)] | None
CfgScale = Annotated[float, Field(ge=rules.CFG_SCALE_RANGE[0], le=rules.CFG_SCALE_RANGE[1])] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExistingVideo(_Strict):
    """Start from a video that already exists on the account."""

    video_id: Annotated[str, StringConstraints(min_length=1)]
    #: The task that produced the video (proxies need it to extend).
    task_id: str | None = None
    model: str = Field(description="the model that generated the video, e.g. kling-v1-6")
    mode: rules.Mode = "std"
    #: Its length in seconds, if known; otherwise the planner assumes the longest start (10 s).
    duration: Annotated[float, Field(gt=0, le=rules.MAX_TOTAL_SECONDS)] | None = None


class Text2Video(_Strict):
    """Start with a text-to-video task."""

    prompt: Prompt
    negative_prompt: OptPrompt = None
    cfg_scale: CfgScale = None
    model: str = rules.DEFAULT_MODEL
    mode: rules.Mode = "std"
    duration: Literal[5, 10] = 5
    aspect_ratio: Literal["16:9", "9:16", "1:1"] = "16:9"


class Image2Video(_Strict):
    """Start with an image-to-video task: a local image file (path relative to the storyboard)
    or an http(s) URL the provider can fetch."""

    image: Annotated[str, StringConstraints(min_length=1)]
    image_tail: str | None = None
    prompt: OptPrompt = None
    negative_prompt: OptPrompt = None
    cfg_scale: CfgScale = None
    model: str = rules.DEFAULT_MODEL
    mode: rules.Mode = "std"
    duration: Literal[5, 10] = 5


class Start(_Strict):
    """Exactly one of the three ways to get the first video."""

    video: ExistingVideo | None = None
    text2video: Text2Video | None = None
    image2video: Image2Video | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Start:
        given = [k for k in ("video", "text2video", "image2video") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "start needs exactly one of: video, text2video, image2video"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> Literal["video", "text2video", "image2video"]:
        if self.video is not None:
            return "video"
        return "text2video" if self.text2video is not None else "image2video"

    @property
    def source(self) -> ExistingVideo | Text2Video | Image2Video:
        found = self.video or self.text2video or self.image2video
        assert found is not None
        return found


#: How a segment continues the video: video-extend (Kling v1.x videos, 4-5 s more of the
#: same video) or Omni-Video (a new shot made with the previous one as its reference).
Continuation = Literal["extend", "omni"]


class Segment(_Strict):
    """One step following this prompt, `repeat` times: a video-extend (4-5 more seconds)
    or, with continuation omni, an Omni-Video shot of `duration` seconds."""

    prompt: Prompt
    negative_prompt: OptPrompt = None
    cfg_scale: CfgScale = None
    repeat: Annotated[int, Field(ge=1, le=45)] = 1
    #: Overrides the storyboard's `continuation` for this segment (extend first, then omni).
    continuation: Continuation | None = None
    #: Omni only: the shot's length in whole seconds (3-10; default `omni.duration`).
    duration: int | None = None
    #: Omni only: reference images (files relative to the storyboard, or URLs), named in the
    #: prompt as <<<image_1>>>, <<<image_2>>>, ...
    images: list[Annotated[str, StringConstraints(min_length=1)]] | None = None


class Defaults(_Strict):
    """Values every segment gets unless it sets its own."""

    negative_prompt: OptPrompt = None
    cfg_scale: CfgScale = None


class OmniOptions(_Strict):
    """Settings every Omni-Video shot of the chain shares."""

    model: str = rules.DEFAULT_OMNI_MODEL
    #: std or pro; by default the start's mode.
    mode: rules.Mode | None = None
    #: Each shot's length unless its segment sets `duration` (3-10 s).
    duration: int = rules.DEFAULT_OMNI_SECONDS
    aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None
    #: Kling requires "off" when a reference video is given, which every chained shot has.
    sound: rules.Sound = "off"

    @field_validator("sound", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` / `on` as a boolean
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value


class ArchiveOptions(_Strict):
    """What the archive keeps of a chain once its final video is verified."""

    #: all: every intermediate result (each is the whole video so far); final: only the last.
    keep: Literal["all", "final"] = "all"


class Storyboard(_Strict):
    """A whole chain: one start and the segments that extend it, in order."""

    name: Name
    #: Which provider profile's rules apply (see `chainer providers`).
    provider: str = "kling"
    start: Start
    #: How segments continue the video unless they say otherwise: extend (video-extend,
    #: only for kling-v1 / v1-5 / v1-6 videos) or omni (Omni-Video shots, any start model).
    continuation: Continuation = "extend"
    omni: OmniOptions = Field(default_factory=OmniOptions)
    defaults: Defaults = Field(default_factory=Defaults)
    segments: Annotated[list[Segment], Field(min_length=1)]
    #: Keep extending (repeating the last segment's prompt) until the video is this long.
    target_duration: Annotated[float, Field(gt=0)] | None = None
    output: str | None = None
    archive: ArchiveOptions = Field(default_factory=ArchiveOptions)
    #: Stop submitting once the chain's spent units plus the next task's estimate would pass this.
    max_units: Annotated[float, Field(gt=0)] | None = None


# ------------------------------------------------------------------ loading with positions

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Loaded:
    """A validated storyboard plus what is needed to point at its lines later."""

    storyboard: Storyboard
    path: Path
    sha256: str
    positions: dict[Path_, tuple[int, int]]
    #: The text it was read from (kept in the journal: an edited file can still be finished).
    text: str = ""

    def where(self, *loc: str | int) -> tuple[int, int]:
        """(line, column) of the deepest known node on `loc` (1-based)."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.positions:
                return self.positions[loc[:n]]
        return (1, 1)

    def problem(self, loc: Path_, message: str) -> Problem:
        line, col = self.where(*loc)
        return Problem(str(self.path), line, col, message)


#: More values than any storyboard needs (the longest chain has 45 segments).
MAX_NODES = 20_000


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


class _Positions:
    """Turns a composed YAML node tree into plain data, noting each node's position."""

    def __init__(self, file: str):
        self.file = file
        self.nodes = 0
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.key_positions: dict[Path_, tuple[int, int]] = {}
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, loc: Path_ = ()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:  # also stops aliases that expand exponentially
            raise _TooLarge(node)
        self.positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = (
                    yaml.SafeLoader.construct_scalar(_LOADER, key_node)
                    if isinstance(key_node, yaml.ScalarNode)
                    else None
                )
                if not isinstance(key, str):
                    self.problems.append(self._at(key_node, "mapping keys must be plain strings"))
                    continue
                if key in out:
                    self.problems.append(self._at(key_node, f"duplicate key {key!r}"))
                    continue
                self.key_positions[(*loc, key)] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return _LOADER.construct_object(node, deep=True)

    def _at(self, node: yaml.Node, message: str) -> Problem:
        return Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, message)


_LOADER = yaml.SafeLoader("")
#: libyaml's parser where PyYAML was built with it (its wheels are): the same nodes and
#: marks, ten times faster than the pure-Python one (a batch reads thousands of files).
_COMPOSER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _suggest(word: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    close = difflib.get_close_matches(word, list(model.model_fields), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _model_at(loc: Path_) -> type[BaseModel] | None:
    """The storyboard model that a location's parent mapping is validated against."""
    model: type[BaseModel] | None = Storyboard
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def describe(loc: Path_) -> str:
    """A location as a person reads it: ('segments', 2, 'prompt') -> 'segment 3 prompt'."""
    if len(loc) >= 2 and loc[0] == "segments" and isinstance(loc[1], int):
        rest = ".".join(str(p) for p in loc[2:])
        return f"segment {loc[1] + 1}" + (f" {rest}" if rest else "")
    return ".".join(str(p) for p in loc) or "the storyboard"


def _messages(exc: ValidationError, pos: _Positions, file: str) -> Iterator[Problem]:
    for err in exc.errors():
        loc: Path_ = tuple(p for p in err["loc"] if isinstance(p, str | int))
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            line, col = pos.key_positions.get(loc, pos.positions.get(loc, (1, 1)))
            where = describe(loc[:-1])
            if loc[0] == "segments" and key in ("model", "mode", "model_name"):
                yield Problem(
                    file,
                    line,
                    col,
                    f"{where} cannot set {key!r}: every extension inherits the "
                    "model and mode of the video it extends; set them in start "
                    "(or in `omni:` for Omni-Video shots)",
                )
                continue
            yield Problem(
                file, line, col, f"unknown key {key!r} in {where}{_suggest(key, _model_at(loc[:-1]))}"
            )
            continue
        if loc == ("name",) and kind == "string_pattern_mismatch":
            line, col = pos.positions.get(loc, (1, 1))
            yield Problem(
                file,
                line,
                col,
                "name must be 1-80 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (it names the chain's archive folder)",
            )
            continue
        line, col = (1, 1)
        for n in range(len(loc), -1, -1):
            if loc[:n] in pos.positions:
                line, col = pos.positions[loc[:n]]
                break
        dotted = describe(loc)
        if kind == "missing":
            yield Problem(file, line, col, f"{dotted} is required")
        elif kind == "string_too_long" and isinstance(err.get("input"), str):
            length, most = len(err["input"]), (err.get("ctx") or {}).get("max_length", 0)
            yield Problem(
                file,
                line,
                col,
                f"{dotted} has {length} characters; Kling accepts at most {most}: shorten it by "
                f"{length - most} (or split it over two segments)",
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            yield Problem(file, line, col, f"{dotted}: {msg}")


#: The largest storyboard file read, checked before parsing: the longest chain (45 segments of
#: 2,500-character prompts, comments and Omni references included) is well under 200 KB, and a
#: YAML parser takes minutes and gigabytes over a file of tens of megabytes.
MAX_BYTES = 1_000_000

#: What PyYAML says when a bracket or a quote it opened runs on to where it gives up.
_OPENERS = {
    "while scanning a quoted scalar": "a quoted string opened here is never closed",
    "while parsing a flow sequence": "a [ list opened here is never closed",
    "while parsing a flow mapping": "a { mapping opened here is never closed",
}


def _syntax_problem(file: str, exc: yaml.MarkedYAMLError) -> Problem:
    """A YAML syntax error at the place to fix: for an unclosed quote or bracket, where it was
    opened (the parser notices only where it gives up, often the end of the file)."""
    opened = _OPENERS.get(exc.context or "")
    if opened and exc.context_mark is not None:
        mark, gave_up = exc.context_mark, exc.problem_mark
        where = f" (the parser gave up at line {gave_up.line + 1}: {exc.problem})" if gave_up else ""
        return Problem(file, mark.line + 1, mark.column + 1, f"YAML syntax error: {opened}{where}")
    at = exc.problem_mark or exc.context_mark
    line, col = (at.line + 1, at.column + 1) if at else (1, 1)
    return Problem(file, line, col, f"YAML syntax error: {exc.problem or exc}")


def _too_large(file: str, size: int) -> StoryboardError:
    return StoryboardError(
        [
            Problem(
                file,
                1,
                1,
                f"the file is {size / 1e6:.1f} MB; a storyboard is at most {MAX_BYTES / 1e6:g} MB "
                "(the longest chain's is under 0.2 MB): is this the right file?",
            )
        ]
    )


def load(path: str | Path) -> Loaded:
    """Read, parse and validate a storyboard file; StoryboardError lists every problem.
    A file over MAX_BYTES is refused before it is read."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BYTES:
                raise _too_large(str(path), size)
            raw = f.read(MAX_BYTES + 1)
    except IsADirectoryError as exc:
        raise StoryboardError(
            [
                Problem(
                    str(path), 1, 1, "a folder, not a storyboard file (`chainer run FOLDER` runs its *.yaml)"
                )
            ]
        ) from exc
    except OSError as exc:
        raise StoryboardError(
            [Problem(str(path), 1, 1, f"cannot read the storyboard: {exc.strerror or exc}")]
        ) from exc
    return loads(raw, path)


def loads(raw: bytes, path: str | Path) -> Loaded:
    """Parse and validate storyboard text as if it were the file at `path` (positions and
    relative image paths refer to it): how a chain is finished from the text it began with."""
    path = Path(path)
    file = str(path)
    if len(raw) > MAX_BYTES:  # a pipe or a growing file can pass the size check in load()
        raise _too_large(file, len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoryboardError([Problem(file, 1, 1, "the storyboard is not UTF-8 text")]) from exc
    try:
        docs = list(yaml.compose_all(text, Loader=_COMPOSER))
    except yaml.MarkedYAMLError as exc:
        raise StoryboardError([_syntax_problem(file, exc)]) from exc
    except yaml.YAMLError as exc:
        raise StoryboardError([Problem(file, 1, 1, f"YAML error: {exc}")]) from exc
    docs = [d for d in docs if d is not None]
    if not docs:
        raise StoryboardError([Problem(file, 1, 1, "the storyboard is empty; see storyboards/ for examples")])
    if len(docs) > 1:
        raise StoryboardError(
            [Problem(file, docs[1].start_mark.line + 1, 1, "one storyboard per file, please")]
        )
    pos = _Positions(file)
    try:
        data = pos.build(docs[0])
    except _TooLarge as exc:
        mark = exc.node.start_mark
        raise StoryboardError(
            [
                Problem(
                    file,
                    mark.line + 1,
                    mark.column + 1,
                    f"the storyboard is too large (more than {MAX_NODES} "
                    "values, counting what aliases expand to)",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise StoryboardError([Problem(file, 1, 1, f"YAML error: {exc}")]) from exc
    if not isinstance(data, dict):
        raise StoryboardError(
            [
                pos.problems[0]
                if pos.problems
                else Problem(file, 1, 1, "a storyboard is a mapping (key: value lines)")
            ]
        )
    problems = list(pos.problems)
    storyboard: Storyboard | None = None
    try:
        storyboard = Storyboard.model_validate(data)
    except ValidationError as exc:
        problems.extend(_messages(exc, pos, file))
    if storyboard is not None and not problems:
        return Loaded(storyboard, path, hashlib.sha256(raw).hexdigest(), pos.positions, text)
    problems.sort(key=lambda p: (p.line, p.column))
    raise StoryboardError(problems)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the storyboard format (for yaml-language-server and other editors)."""
    schema = Storyboard.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "chainer storyboard"
    return schema
