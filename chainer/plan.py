"""From a validated storyboard to the concrete steps a run will take.

Step 0 is the start: a text2video or image2video task, or an existing video adopted as
it is. Steps 1..n are video-extend tasks, each extending step i-1's result. Each step
carries the request fields it will send (minus the links known only at run time: the
parent video_id and task_id, and the external_task_id) and a fingerprint that also
covers every earlier step, so a change anywhere upstream is seen downstream too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import rules
from .storyboard import ExistingVideo, Image2Video, Loaded, Text2Video

StepKind = Literal["existing", "text2video", "image2video", "video-extend"]


@dataclass(frozen=True)
class Step:
    index: int
    kind: StepKind
    prompt: str | None
    #: Request fields sent as they are; image fields hold local paths, read at submit time.
    fields: dict[str, Any]
    #: Projected total length after this step (4 s and 5 s per extension).
    min_total: float
    max_total: float
    units: float
    fingerprint: str


@dataclass(frozen=True)
class Plan:
    chain: str
    storyboard: Path
    storyboard_sha256: str
    model: str
    mode: str
    existing: ExistingVideo | None
    steps: list[Step]
    output: Path
    max_units: float | None = None

    @property
    def total_units(self) -> float:
        return sum(s.units for s in self.steps)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(previous: str, kind: str, fields: dict[str, Any], base: Path) -> str:
    described = dict(fields)
    for key in ("image", "image_tail"):
        if described.get(key):  # the file's content counts, not its name
            described[key] = "sha256:" + _sha_file(base / described[key])
    blob = json.dumps({"prev": previous, "kind": kind, "fields": described}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build(loaded: Loaded, *, output: Path | None = None) -> Plan:
    """The plan for a loaded (and therefore already rule-checked) storyboard."""
    sb = loaded.storyboard
    source = sb.start.source
    base = loaded.path.parent
    steps: list[Step] = []
    existing: ExistingVideo | None = None
    if isinstance(source, ExistingVideo):
        existing = source
        length = float(source.duration) if source.duration else 10.0
        fields: dict[str, Any] = {"video_id": source.video_id, "task_id": source.task_id}
        fp = _fingerprint("", "existing", fields, base)
        steps.append(Step(0, "existing", None, fields, source.duration or 0.0, length, 0.0, fp))
    else:
        kind: StepKind = "text2video" if isinstance(source, Text2Video) else "image2video"
        fields = {
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
        fields = {k: v for k, v in fields.items() if v is not None}
        length = float(source.duration)
        fp = _fingerprint("", kind, fields, base)
        units = rules.estimate_units(source.mode, length)
        steps.append(Step(0, kind, source.prompt, fields, length, length, units, fp))
    lo = hi = steps[0].min_total if existing is None else (existing.duration or 0.0)
    hi = steps[0].max_total
    for i, seg in enumerate(sb.segments, start=1):
        fields = {"prompt": seg.prompt, "negative_prompt": seg.negative_prompt, "cfg_scale": seg.cfg_scale}
        fields = {k: v for k, v in fields.items() if v is not None}
        fp = _fingerprint(steps[-1].fingerprint, "video-extend", fields, base)
        lo += rules.EXTEND_MIN_SECONDS
        hi += rules.EXTEND_MAX_SECONDS
        units = rules.estimate_units(source.mode, rules.EXTEND_MAX_SECONDS)
        steps.append(Step(i, "video-extend", seg.prompt, fields, lo, hi, units, fp))
    out = output or Path(sb.output or f"out/{sb.name}.mp4")
    return Plan(
        chain=sb.name,
        storyboard=loaded.path,
        storyboard_sha256=loaded.sha256,
        model=source.model,
        mode=source.mode,
        existing=existing,
        steps=steps,
        output=out,
        max_units=sb.max_units,
    )
