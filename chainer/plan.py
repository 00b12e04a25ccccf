"""From a storyboard to the concrete steps a run will take, with Kling's rules applied.

Step 0 is the start: a text2video or image2video task, or an existing video adopted as
it is. Steps 1..n are the storyboard's segments with `defaults` filled in and `repeat`
unrolled, then, for a `target_duration`, enough repeats of the last segment to reach it
in the worst case (4 s per extension). Those extra steps are optional: the run skips them
once the video is long enough. A segment is a video-extend task, extending step i-1's
result, or (continuation omni) an Omni-Video shot: a new video of its own length made
with step i-1's video as its reference. Each shot is a part of its own; an extend phase
may come first (kling-v1.x only), never after a shot.

Kling stops extending at 180 s. Where the next extension could cross the cap in the
worst case (5 s each), that segment becomes a *hand-off* instead: an image2video task
(same model and mode, the segment's prompt) started from the last frame of the video so
far, which begins a new *part* that is extended in turn. The runner joins the parts'
final videos at the end. Hand-offs are placed by the worst case so that the plan, and
every resume of it, is the same whatever lengths the provider returns.

Every step carries the request fields it will send (minus the links known only at run
time: the parent video_id and task_id, and the external_task_id) and a fingerprint that
also covers every earlier step, so a change anywhere upstream is seen downstream too.

All rule checks live here and in `rules` (the single source of truth); problems are
reported at the storyboard line they come from, all in one pass.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from . import profiles, rules, storyboard
from .errors import Problem, StoryboardError
from .storyboard import ExistingVideo, Image2Video, Loaded, Text2Video

if TYPE_CHECKING:
    from .journal import ChainRow

#: How long a hand-off's image2video is (then extended like any start).
HANDOFF_SECONDS = 5

StepKind = Literal["existing", "text2video", "image2video", "video-extend", "omni-video"]
Loc = tuple[str | int, ...]


class StepRequest(BaseModel):
    """What a step asks the provider for, in chainer's own terms (not the wire's).

    The engine builds the wire request from these attributes (chainer.engine.requests),
    so renaming a wire field changes that one place. The step's fingerprint is taken of
    `canonical()`, a layout frozen here on purpose: were it the wire dict, a renamed wire
    field would make every chain in flight look changed. Local image paths stay paths
    until the create is built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    mode: str | None = None
    #: Seconds of video the request asks for.
    duration: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    aspect_ratio: str | None = None
    image: str | None = None
    image_tail: str | None = None
    #: Omni-Video reference images.
    images: tuple[str, ...] | None = None
    sound: str | None = None
    #: An existing video to start from (step 0 only), and the task that made it.
    video_id: str | None = None
    task_id: str | None = None

    #: The frozen names of the fingerprint layout, where they differ from the attributes'.
    _CANONICAL_NAMES: ClassVar[dict[str, str]] = {"model": "model_name"}

    def canonical(self) -> dict[str, Any]:
        """The request in its frozen fingerprint layout (what `Step.fields` shows): unset
        fields left out, but an existing video's task_id kept even when unknown."""
        out: dict[str, Any] = {}
        for name, value in self:
            keep = value is not None or (name == "task_id" and self.video_id is not None)
            if not keep:
                continue
            if name == "duration":
                value = str(value)
            elif name == "images":
                value = list(value)
            out[self._CANONICAL_NAMES.get(name, name)] = value
        return out

    @classmethod
    def from_canonical(cls, fields: dict[str, Any]) -> StepRequest:
        """The request whose canonical layout is `fields` (how the planner writes them)."""
        names = {v: k for k, v in cls._CANONICAL_NAMES.items()}
        values = {names.get(k, k): v for k, v in fields.items()}
        if values.get("duration") is not None:
            values["duration"] = int(values["duration"])
        if values.get("images") is not None:
            values["images"] = tuple(values["images"])
        return cls(**values)


@dataclass(frozen=True)
class Step:
    index: int
    kind: StepKind
    prompt: str | None
    #: What the step asks the provider for (the wire request is built from it at submit time).
    request: StepRequest
    #: Projected total length after this step (4 s and 5 s per extension).
    min_total: float
    max_total: float
    units: float
    fingerprint: str
    #: Added for target_duration: skipped if the video is already long enough.
    optional: bool = False
    #: Where in the storyboard this step comes from.
    loc: Loc = ()
    #: Which part of the video (0, 1, ...): a new part starts at every hand-off.
    part: int = 0
    #: An image2video from the last frame of the previous step's video (the 180 s cap).
    handoff: bool = False

    @property
    def fields(self) -> dict[str, Any]:
        """The request in its fingerprint layout (chainer's own, frozen: see StepRequest)."""
        return self.request.canonical()


@dataclass(frozen=True)
class Plan:
    chain: str
    storyboard: Path
    storyboard_sha256: str
    provider: profiles.Profile
    model: str
    mode: str
    existing: ExistingVideo | None
    steps: list[Step]
    output: Path
    max_units: float | None = None
    target_duration: float | None = None
    keep: Literal["all", "final"] = "all"
    warnings: list[Problem] = field(default_factory=list)
    #: Values left as the example had them ("replace-with-your-video-id"): shown as warnings
    #: by plan and validate, and the run refuses the chain before anything is sent.
    placeholders: list[Problem] = field(default_factory=list)
    #: The storyboard's text as planned (the file may change later).
    storyboard_text: str = ""

    @functools.cached_property
    def storyboard_abs(self) -> Path:
        """The storyboard's path with symlinks resolved (what the journal records), once."""
        return self.storyboard.resolve()

    @functools.cached_property
    def output_abs(self) -> Path:
        """The output's path with symlinks resolved, once: a batch compares and records it
        for every chain, and each resolve is a walk of the file system."""
        return self.output.resolve()

    @property
    def total_units(self) -> float:
        """Estimated units if every step runs (optional ones included)."""
        return sum(s.units for s in self.steps)

    @property
    def handoffs(self) -> list[int]:
        """The steps that start a new part from the previous video's last frame."""
        return [s.index for s in self.steps if s.handoff]

    def adds(self, step: Step) -> tuple[float, float]:
        """How many seconds `step` adds to the video: (at least, at most)."""
        if step.index == 0:
            return (step.min_total, step.max_total)
        before = self.steps[step.index - 1]
        return (step.min_total - before.min_total, step.max_total - before.max_total)

    def summary(self) -> dict[str, Any]:
        """The plan as plain data (what `chainer plan --json` prints)."""
        other = "pro" if self.mode == "std" else "std"
        return {
            "chain": self.chain,
            "storyboard": str(self.storyboard),
            "provider": self.provider.name,
            "model": self.model,
            "mode": self.mode,
            "output": str(self.output),
            "target_duration": self.target_duration,
            "max_units": self.max_units,
            "steps": [
                {
                    "index": s.index,
                    "kind": s.kind,
                    "prompt": s.prompt,
                    "optional": s.optional,
                    "adds": list(self.adds(s)),
                    "min_total": s.min_total,
                    "max_total": s.max_total,
                    "units": s.units,
                    "part": s.part,
                    "handoff": s.handoff,
                    "fields": {k: v for k, v in s.fields.items() if k not in ("image", "image_tail")},
                }
                for s in self.steps
            ],
            "handoffs": self.handoffs,
            "estimated_units": self.total_units,
            "shots": [s.index for s in self.steps if s.kind == "omni-video"],
            f"estimated_units_if_{other}": sum(
                rules.task_units(s.kind, other, float(s.fields.get("duration", rules.EXTEND_MAX_SECONDS)))
                for s in self.steps
                if s.kind != "existing"
            ),
            "warnings": [str(w) for w in self.warnings],
        }


def rebuild(plan: Plan, *, handoffs: Collection[int]) -> Plan:
    """`plan` made again from its storyboard text, with hand-offs forced at `handoffs`."""
    loaded = (
        storyboard.loads(plan.storyboard_text.encode(), plan.storyboard)
        if plan.storyboard_text
        else storyboard.load(plan.storyboard)
    )
    return build(loaded, output=plan.output, handoffs=handoffs)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _request(previous: str, kind: str, fields: dict[str, Any], base: Path) -> tuple[StepRequest, str]:
    """A step's typed request from the planner's fields, and its fingerprint (chained to
    the previous step's, taken of the request's frozen canonical layout)."""
    request = StepRequest.from_canonical(fields)
    return request, _fingerprint(previous, kind, request.canonical(), base)


def _fingerprint(previous: str, kind: str, fields: dict[str, Any], base: Path) -> str:
    def content(value: str) -> str:  # a local file counts by its content, not its name
        return value if _is_url(value) else "sha256:" + _sha_file(base / value)

    described = dict(fields)
    for key in ("image", "image_tail"):
        if described.get(key):
            described[key] = content(described[key])
    if described.get("images"):
        described["images"] = [content(v) for v in described["images"]]
    blob = json.dumps({"prev": previous, "kind": kind, "fields": described}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


#: What the example storyboards and common templates use for "fill this in".
_PLACEHOLDER = re.compile(r"replace|your[-_ ]|placeholder|<[^>]*>|^\.\.\.$|^x{3,}$|todo|changeme", re.I)


class _Checker:
    """Collects positioned problems and warnings while the plan is built."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.placeholders: list[Problem] = []

    def error(self, loc: Loc, message: str) -> None:
        self.problems.append(self.loaded.problem(loc, message))

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(self.loaded.problem(loc, message))

    def placeholder(self, loc: Loc, value: str | None, what: str) -> None:
        """A value that looks like an example's placeholder is a warning now and a refusal
        when the chain is run (a create with it would fail at the provider, 1203)."""
        if value is not None and _PLACEHOLDER.search(value):
            problem = self.loaded.problem(
                loc, f"{value!r} looks like a placeholder: put {what} here before running it"
            )
            self.warnings.append(problem)
            self.placeholders.append(problem)

    def image(self, loc: Loc, value: str, base: Path) -> None:
        """A local image file (relative to the storyboard) must exist and suit Kling; URLs
        are fetched by the provider, so only it can judge them."""
        if _is_url(value):
            return
        path = base / value
        if not path.is_file():
            self.error(loc, f"image file {value!r} not found (paths are relative to the storyboard's folder)")
            return
        problem = rules.image_problem(path.read_bytes())
        if problem:
            self.error(loc, f"{value} {problem}")

    def prompts(self, loc: Loc, values: dict[str, Any], profile: profiles.Profile) -> None:
        limits = {"prompt": profile.prompt_max_chars, "negative_prompt": profile.negative_prompt_max_chars}
        for name, limit in limits.items():
            value = values.get(name)
            if value is not None and len(value) > limit:
                self.error(
                    (*loc, name),
                    f"{name} has {len(value)} characters; {profile.name} accepts at most {limit}",
                )


def build(loaded: Loaded, *, output: Path | None = None, handoffs: Collection[int] = ()) -> Plan:
    """The plan for a loaded storyboard; StoryboardError lists every rule it breaks.

    `handoffs` makes those steps hand-offs even below the cap (a re-roll whose branch
    point Kling has already deleted continues from the archived video's last frame).
    """
    sb = loaded.storyboard
    check = _Checker(loaded)
    profile = profiles.get(sb.provider)
    if profile is None:
        names = ", ".join(profiles.registry())
        check.error(("provider",), f"unknown provider profile {sb.provider!r}; built in: {names}")
        profile = profiles.BUILTIN[profiles.DEFAULT_PROFILE]
    source = sb.start.source
    base = loaded.path.parent
    hows = [seg.continuation or sb.continuation for seg in sb.segments]
    _check_start(check, sb, profile, base, hows)
    entries = _segment_entries(check, sb, profile, base, hows)
    start_min = float(getattr(source, "duration", None) or 0.0)
    start_max = float(getattr(source, "duration", None) or 10.0)  # unknown: assume the longest start
    start_loc: Loc = ("start", sb.start.kind)
    if isinstance(source, ExistingVideo) and source.duration is None:
        check.warn(start_loc, "the video's duration is unknown; the plan assumes 10 s (set `duration`)")
    entries += _target_entries(check, sb, entries, start_min)
    if isinstance(source, ExistingVideo) and (
        1 in handoffs or start_max + rules.EXTEND_MAX_SECONDS > rules.MAX_TOTAL_SECONDS + 1e-9
    ):
        check.error(
            start_loc,
            f"the existing video could be {start_max:g} s long: extending it could pass Kling's "
            f"{rules.MAX_TOTAL_SECONDS:g} s cap, and chainer has no copy of it to hand off from; start from "
            "a shorter video or from an image2video of its last frame",
        )
    if check.problems:
        raise StoryboardError(sorted(check.problems, key=lambda p: (p.line, p.column)))
    steps = [_start_step(sb, base, start_min, start_max)]
    _add_steps(steps, entries, check, sb, base, handoffs)
    return Plan(
        chain=sb.name,
        storyboard=loaded.path,
        storyboard_sha256=loaded.sha256,
        storyboard_text=loaded.text,
        provider=profile,
        model=source.model,
        mode=source.mode,
        existing=source if isinstance(source, ExistingVideo) else None,
        steps=steps,
        output=output or Path(sb.output or f"out/{sb.name}.mp4"),
        max_units=sb.max_units,
        target_duration=sb.target_duration,
        keep=sb.archive.keep,
        warnings=sorted(check.warnings, key=lambda p: (p.line, p.column)),
        placeholders=check.placeholders,
    )


def _check_start(
    check: _Checker, sb: storyboard.Storyboard, profile: profiles.Profile, base: Path, hows: Sequence[str]
) -> None:
    """The start's rules: its model, whether it can be extended, its prompts and images."""
    source, kind = sb.start.source, sb.start.kind
    start_loc: Loc = ("start", kind)
    allowed = {"video": None, "text2video": rules.TEXT2VIDEO_MODELS, "image2video": rules.IMAGE2VIDEO_MODELS}[
        kind
    ]
    if allowed is not None and source.model not in allowed:
        check.error(
            (*start_loc, "model"),
            f"{kind} does not offer model {source.model!r}{rules.did_you_mean(source.model, allowed)}; "
            f"choose one of {', '.join(allowed)}",
        )
    elif allowed is None and not rules.known_model(source.model):
        check.error(
            (*start_loc, "model"),
            f"{source.model!r} is not a Kling video model"
            f"{rules.did_you_mean(source.model, rules.EXTENDABLE_MODELS)}; the model that made the video "
            f"is one of {', '.join(rules.EXTENDABLE_MODELS)} to extend it",
        )
    refusal = rules.extension_refusal(source.model, 0.0, refuse_v1_5=not profile.extend_v1_5)
    extends_first = hows[0] == "extend"
    if extends_first and refusal and rules.known_model(source.model):  # a typo: said above
        check.error(
            (*start_loc, "model"),
            f"{refusal}. To continue a {source.model} video, use Omni-Video shots instead: add "
            "`continuation: omni` to the storyboard (each segment becomes a new shot made with the "
            "previous one as its reference; see the README, Omni-Video)",
        )
    elif extends_first and source.model == "kling-v1-5":
        check.warn(
            (*start_loc, "model"),
            "some providers refuse to extend kling-v1-5 videos; kling-v1 and kling-v1-6 are the safe choices",
        )
    if isinstance(source, ExistingVideo) and profile.send_parent_task_id and not source.task_id:
        check.error(
            start_loc,
            f"{profile.name} needs the id of the task that made the video to extend it: "
            "add `task_id` (shown next to the video in the provider's task list)",
        )
    if isinstance(source, ExistingVideo):
        check.placeholder(
            (*start_loc, "video_id"), source.video_id, "the id of your video (task_result.videos[0].id)"
        )
        check.placeholder((*start_loc, "task_id"), source.task_id, "the id of the task that made it")
    if source.mode == "pro" and extends_first:
        check.warn(
            (*start_loc, "mode"), "pro mode: every extension inherits it and is priced as pro (~3.5x std)"
        )
    if isinstance(source, Text2Video | Image2Video):
        check.prompts(start_loc, source.model_dump(), profile)
    if isinstance(source, Image2Video):
        for name in ("image", "image_tail"):
            value = getattr(source, name)
            if value:
                check.image((*start_loc, name), value, base)


def _segment_entries(
    check: _Checker, sb: storyboard.Storyboard, profile: profiles.Profile, base: Path, hows: Sequence[str]
) -> list[_Entry]:
    """The steps the segments ask for, with defaults and repeats (checked as they go)."""
    source = sb.start.source
    omni_mode = sb.omni.mode or source.mode
    if "omni" in hows:
        _check_omni_settings(check, sb)
        if isinstance(source, ExistingVideo) and hows[0] == "omni":
            check.error(
                ("start", sb.start.kind),
                "an Omni-Video shot cannot directly follow an existing video: it is referenced by a "
                "URL and joined from a downloaded file, and chainer has neither for it. Start with "
                "text2video or image2video, or extend the video first (segments with `continuation: extend`)",
            )
    entries: list[_Entry] = []
    for i, (seg, how) in enumerate(zip(sb.segments, hows, strict=True)):
        loc: Loc = ("segments", i)
        if how == "omni":
            omni = _omni_fields(check, loc, seg, sb, profile, base, omni_mode)
            entries += [_Entry(loc, omni, False, "omni-video", seg.prompt)] * seg.repeat
            continue
        if "omni" in hows[:i]:
            check.error(
                (*loc, "continuation") if seg.continuation else loc,
                f"{storyboard.describe(loc)} uses video-extend after an Omni-Video shot: the shot is made "
                f"by {sb.omni.model}, which video-extend does not accept. Make it `continuation: omni` "
                "too (an extend phase can only come first)",
            )
        fields = _extend_fields(check, loc, seg, sb, profile)
        entries += [_Entry(loc, fields, False, "video-extend", seg.prompt)] * seg.repeat
    return entries


def _extend_fields(
    check: _Checker, loc: Loc, seg: storyboard.Segment, sb: storyboard.Storyboard, profile: profiles.Profile
) -> dict[str, Any]:
    """The request fields of an extension segment (what the profile ignores is dropped)."""
    for name in ("duration", "images"):
        if getattr(seg, name) is not None:
            check.error(
                (*loc, name),
                f"{name} applies to Omni-Video shots only (video-extend adds 4-5 s from the prompt); "
                "remove it or make the segment `continuation: omni`",
            )
    fields: dict[str, Any] = {
        "prompt": seg.prompt,
        "negative_prompt": seg.negative_prompt
        if seg.negative_prompt is not None
        else sb.defaults.negative_prompt,
        "cfg_scale": seg.cfg_scale if seg.cfg_scale is not None else sb.defaults.cfg_scale,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    check.prompts(loc, fields, profile)
    dropped = sorted(set(fields) - set(profile.extend_fields))
    if dropped:
        check.warn(loc, f"{profile.name} ignores {', '.join(dropped)} in video-extend; it will not be sent")
        fields = {k: v for k, v in fields.items() if k not in dropped}
    return fields


def _target_entries(
    check: _Checker, sb: storyboard.Storyboard, entries: list[_Entry], start_min: float
) -> list[_Entry]:
    """Optional repeats of the last segment until target_duration is surely reached."""
    if sb.target_duration is None:
        return []
    target = sb.target_duration
    listed_min = start_min + sum(e.seconds[0] for e in entries)
    if listed_min >= target:
        check.warn(
            ("target_duration",),
            f"the segments alone reach {listed_min:g} s or more; target_duration adds nothing",
        )
        return []
    last = entries[-1]
    needed = math.ceil((target - listed_min) / last.seconds[0] - 1e-9)
    return [dataclasses.replace(last, optional=True)] * needed


def _start_step(sb: storyboard.Storyboard, base: Path, start_min: float, start_max: float) -> Step:
    """Step 0: the existing video, or the text2video/image2video that makes it."""
    source = sb.start.source
    start_loc: Loc = ("start", sb.start.kind)
    if isinstance(source, ExistingVideo):
        request, fp = _request("", "existing", {"video_id": source.video_id, "task_id": source.task_id}, base)
        return Step(0, "existing", None, request, start_min, start_max, 0.0, fp, loc=start_loc)
    start_kind: StepKind = "text2video" if isinstance(source, Text2Video) else "image2video"
    fields: dict[str, Any] = {
        "model_name": source.model,
        "mode": source.mode,
        "duration": str(source.duration),
        "prompt": source.prompt,
        "negative_prompt": source.negative_prompt,
        "cfg_scale": source.cfg_scale,
    }
    if isinstance(source, Text2Video):
        fields["aspect_ratio"] = source.aspect_ratio
    if isinstance(source, Image2Video):
        fields["image"] = source.image
        fields["image_tail"] = source.image_tail
    request, fp = _request("", start_kind, {k: v for k, v in fields.items() if v is not None}, base)
    units = rules.estimate_units(source.mode, start_max)
    return Step(0, start_kind, source.prompt, request, start_min, start_max, units, fp, loc=start_loc)


def _add_steps(
    steps: list[Step],
    entries: list[_Entry],
    check: _Checker,
    sb: storyboard.Storyboard,
    base: Path,
    handoffs: Collection[int],
) -> None:
    """Turn the entries into steps after `steps[0]`: extensions, Omni-Video shots, and a
    hand-off wherever an extension could pass the 180 s cap (or where `handoffs` says)."""
    source = sb.start.source
    omni_mode = sb.omni.mode or source.mode
    lo, hi = steps[0].min_total, steps[0].max_total
    part, part_max = 0, steps[0].max_total
    for i, e in enumerate(entries, start=1):
        prev = steps[-1].fingerprint
        if e.kind == "omni-video":  # a new shot: a part of its own, joined at the end; no cap
            part += 1
            lo, hi = lo + e.seconds[0], hi + e.seconds[1]
            units = rules.task_units(e.kind, omni_mode, e.seconds[1])
            request, fp = _request(prev, e.kind, e.fields, base)
            steps.append(Step(i, e.kind, e.prompt, request, lo, hi, units, fp, e.optional, e.loc, part))
        elif i in handoffs or part_max + rules.EXTEND_MAX_SECONDS > rules.MAX_TOTAL_SECONDS + 1e-9:
            part, part_max = part + 1, float(HANDOFF_SECONDS)
            lo, hi = lo + HANDOFF_SECONDS, hi + HANDOFF_SECONDS
            steps.append(_handoff_step(i, e, prev, source, base, lo, hi, part))
            if not e.optional and i not in handoffs:
                check.warn(
                    e.loc,
                    f"step {i} ({storyboard.describe(e.loc)}) could take the video past Kling's "
                    f"{rules.MAX_TOTAL_SECONDS:g} s cap: it starts part {part + 1} instead, an image2video "
                    "from the last frame so far (the parts are joined at the end)",
                )
        else:
            part_max += rules.EXTEND_MAX_SECONDS
            lo, hi = lo + rules.EXTEND_MIN_SECONDS, hi + rules.EXTEND_MAX_SECONDS
            units = rules.estimate_units(source.mode, rules.EXTEND_MAX_SECONDS)
            request, fp = _request(prev, "video-extend", e.fields, base)
            steps.append(
                Step(i, "video-extend", request.prompt, request, lo, hi, units, fp, e.optional, e.loc, part)
            )


def _handoff_step(
    i: int, e: _Entry, prev: str, source: Any, base: Path, lo: float, hi: float, part: int
) -> Step:
    """Step i as a hand-off: an image2video of the segment's prompt from the last frame so far."""
    handoff = {
        "model_name": source.model,
        "mode": source.mode,
        "duration": str(HANDOFF_SECONDS),
        **{k: v for k, v in e.fields.items() if k in ("prompt", "negative_prompt", "cfg_scale")},
    }
    request, fp = _request(prev, "handoff", handoff, base)
    units = rules.estimate_units(source.mode, HANDOFF_SECONDS)
    return Step(i, "image2video", request.prompt, request, lo, hi, units, fp, e.optional, e.loc, part, True)


@dataclass(frozen=True)
class _Entry:
    """One step the segments ask for, before the cap and the hand-offs are applied."""

    loc: Loc
    fields: dict[str, Any]
    optional: bool
    kind: Literal["video-extend", "omni-video"]
    #: The user's prompt (an omni step sends it with the video placeholder added).
    prompt: str

    @property
    def seconds(self) -> tuple[float, float]:
        """How much the step adds to the video: (at least, at most)."""
        if self.kind == "omni-video":
            return (float(self.fields["duration"]),) * 2
        return (rules.EXTEND_MIN_SECONDS, rules.EXTEND_MAX_SECONDS)


def _check_omni_settings(check: _Checker, sb: storyboard.Storyboard) -> None:
    """The `omni:` settings every Omni-Video shot shares."""
    refusal = rules.omni_refusal(sb.omni.model)
    if refusal:
        check.error(("omni", "model"), refusal)
    if sb.omni.sound == "on":
        check.error(
            ("omni", "sound"),
            "Omni-Video needs sound off when a reference video is given, and every shot chainer "
            "makes has one (the previous shot); remove `sound: on`",
        )


def _omni_fields(
    check: _Checker,
    loc: Loc,
    seg: storyboard.Segment,
    sb: storyboard.Storyboard,
    profile: profiles.Profile,
    base: Path,
    mode: str,
) -> dict[str, Any]:
    """The request fields of an Omni-Video shot (the reference video is added at run
    time: it is the previous shot's url), with Omni's rules checked."""
    for name in ("negative_prompt", "cfg_scale"):
        if getattr(seg, name) is not None:
            check.error((*loc, name), f"Omni-Video takes no {name}; remove it from this omni segment")
    seconds = seg.duration if seg.duration is not None else sb.omni.duration
    least, most = rules.OMNI_DURATION_RANGE
    if not least <= seconds <= most:
        check.error(
            (*loc, "duration") if seg.duration is not None else ("omni", "duration"),
            f"an Omni-Video shot that continues a video lasts {least}-{most} s; {seconds} is outside that",
        )
    images = seg.images or []
    if len(images) > rules.OMNI_MAX_IMAGES:
        check.error(
            (*loc, "images"),
            f"{len(images)} reference images; chainer sends at most {rules.OMNI_MAX_IMAGES} with a video",
        )
    for n, image in enumerate(images):
        check.image((*loc, "images", n), image, base)
    prompt = rules.omni_prompt(seg.prompt)
    problem = rules.omni_placeholder_problem(prompt, videos=rules.OMNI_MAX_VIDEOS, images=len(images))
    if problem:
        check.error((*loc, "prompt"), problem)
    if len(prompt) > profile.prompt_max_chars:
        added = " with the <<<video_1>>> reference chainer puts in front" if prompt != seg.prompt else ""
        check.error(
            (*loc, "prompt"),
            f"prompt has {len(prompt)} characters{added}; {profile.name} accepts at most "
            f"{profile.prompt_max_chars}",
        )
    fields: dict[str, Any] = {
        "model_name": sb.omni.model,
        "mode": mode,
        "duration": str(seconds),
        "prompt": prompt,
        "aspect_ratio": sb.omni.aspect_ratio,
        "sound": "off",
        "images": list(images) or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def load_plan(path: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None) -> Plan:
    """Load, validate and plan a storyboard file (StoryboardError lists every problem)."""
    return build(storyboard.load(Path(path)), output=Path(output) if output else None)


def chain_plan(chain: ChainRow) -> Plan:
    """The plan a journal's chain was started (or last re-rolled) with, from the storyboard
    text the journal keeps: an edited or deleted file cannot change a chain in flight."""
    if chain.storyboard_text is None:  # a journal from before chainer kept the text
        return load_plan(chain.storyboard, output=chain.output)
    loaded = storyboard.loads(chain.storyboard_text.encode(), chain.storyboard)
    return build(loaded, output=Path(chain.output))
