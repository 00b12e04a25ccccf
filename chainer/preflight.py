"""Checks made before the first credit is spent: every folder a run writes can be written
and has room for what the run will put there.

A run that pays for its tasks and then cannot store the results has lost the user money
(the provider deletes results after 30 days) or at least a night. So the state folder,
the archive and each output's folder are created if missing, asked whether they take
files, and their free space compared with the run's expected size, per
file system. The size is an estimate: each extension's result is the whole video so far
and is archived, so a chain's archive holds roughly the sum of its steps' lengths.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .plan import Plan

#: Bytes per second of video Kling delivers (720p std is about 0.6-1 MB/s, 1080p pro about
#: twice that): generous, so the check errs towards "make room first".
BYTES_PER_SECOND = {"std": 1_000_000, "pro": 2_000_000}
#: The offline simulator's small test videos.
SIMULATED_BYTES_PER_SECOND = 60_000
#: Head room on top of the estimate (joins write a temporary copy of the output).
MARGIN = 1.25


@dataclass(frozen=True)
class Need:
    """Bytes a run will write into one folder."""

    folder: Path
    bytes: int
    what: str


def expected_bytes(
    plan: Plan, *, rate: float, done: Iterable[int] = (), max_units: float | None = None
) -> tuple[int, int]:
    """(archive bytes, output bytes) `plan` still needs; steps in `done` are already archived,
    and no step past what `max_units` pays for is counted.

    A step's archived result is its part's video so far (a shot is a part of its own).
    """
    skip = set(done)
    archive = units = 0.0
    part_start = 0.0
    last = plan.steps[0]
    for step in plan.steps:
        units += step.units
        if max_units is not None and units > max_units + 1e-9:
            break
        last = step
        if step.handoff or step.kind == "omni-video":
            part_start = plan.steps[step.index - 1].max_total if step.index else 0.0
        if step.kind != "existing" and step.index not in skip:
            archive += (step.max_total - part_start) * rate
    output = last.max_total * rate
    return int(archive * MARGIN), int(output * MARGIN)


def check(needs: list[Need]) -> None:
    """Create, probe and measure every folder of `needs`; ConfigError says what to fix."""
    probed: set[Path] = set()
    for need in needs:
        _writable(need.folder, probed)
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        by_device.setdefault(os.stat(need.folder).st_dev, []).append(need)
    for group in by_device.values():
        wanted = sum(n.bytes for n in group)
        free = shutil.disk_usage(group[0].folder).free
        if wanted > free:
            folders = _listed(sorted({str(n.folder) for n in group}), ", ")
            parts = _listed([f"{n.what} {_size(n.bytes)}" for n in group if n.bytes], "; ")
            raise ConfigError(
                f"{folders}: {_size(free)} free, but this run needs about {_size(wanted)} there ({parts}). "
                "Nothing was sent. Make room, or choose other folders (--archive-dir, --output, --state-dir)"
            )


def _writable(folder: Path, probed: set[Path]) -> None:
    """Make `folder` and ask the kernel whether it takes files (access(2), which also sees a
    read-only file system), once per folder: a batch of a thousand chains names the same
    output folder a thousand times and a thousand archive folders. No probe file is written:
    making the folder already wrote to its parent, and the free-space check asks whether it
    takes these files."""
    if folder in probed:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {folder}: {exc.strerror or exc}. Nothing was sent. Fix the folder (or its "
            "permissions), or choose another (--output, --archive-dir, --state-dir)"
        ) from exc
    probed.add(folder)


#: A message lists this many folders or needs, then says how many more (a batch has thousands).
LISTED = 6


def _listed(items: list[str], sep: str) -> str:
    shown = sep.join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown}{sep}and {len(items) - LISTED} more"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
