"""Assembling a chain's output from its archived parts, and keeping the archive's record.

The output is the last part's video when there is one part, else the parts joined
(chainer.media.join, frame-exact). After a stop, the video so far goes to
OUTPUT.partial.mp4. The manifest is rewritten after every step, and the mirror synced.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import anyio

from .. import archive, downloads, errors, media, report
from ..chain import ChainView, StepRow
from .context import ChainRun
from .fetch import sync_mirror


def partial_path(output: Path) -> Path:
    """Where a stopped chain's video so far goes: `out/x.mp4` -> `out/x.partial.mp4`."""
    return output.with_name(f"{output.stem}.partial{output.suffix}")


def part_file(run: ChainRun, row: StepRow) -> Path:
    """The archived video of a part's last step (the existing video of step 0 has none)."""
    if row.file is None or row.pruned_at is not None:
        raise errors.ChainerError(
            f"chain {run.name!r}: step {row.idx}'s video is not in the archive "
            f"({'pruned (keep: final)' if row.pruned_at else 'never downloaded: an existing video'}), "
            "so it cannot be joined or handed off from"
        )
    return Path(row.file)


async def publish(run: ChainRun, view: ChainView, last: StepRow, dest: Path | None = None) -> float | None:
    """Write the chain's output (or `dest`) from the parts of `view`; returns its length."""
    dest = dest or run.plan.output
    files = [part_file(run, r) for r in view.part_ends()]
    if len(files) == 1:
        archive.publish(files[0], dest)
        await anyio.to_thread.run_sync(_probed_as, dest, files[0])
        return last.probed_duration or last.duration
    run.emit(last.idx, "joining", f"{len(files)} parts")
    joined = await anyio.to_thread.run_sync(
        functools.partial(archive.publish_joined, files, dest, drops=view.drops())
    )
    duration = joined.frames / media.probe(dest).fps
    how = "stream copy" if joined.method == "copy" else f"re-encoded: {joined.reason}"
    run.emit(last.idx, "joined", f"{len(files)} parts, {how}", duration)
    return duration


def _probed_as(copy: Path, source: Path) -> None:
    """`copy` has `source`'s bytes: its probe is `source`'s (the contact sheet reads it
    next). Only a saving: a source ffprobe cannot read leaves the sheet to say so."""
    with contextlib.suppress(errors.MediaError):
        media.remember(copy, media.probe(source))


async def write_output(run: ChainRun, last: StepRow) -> float | None:
    """Every step is archived: write the output, its contact sheet, and prune if asked."""
    view = run.view()
    try:
        duration = await publish(run, view, last)
    except OSError as exc:
        raise errors.WriteError(
            f"chain {run.name!r}: every result is paid for and archived in {run.folder} "
            f"(manifest.json lists them), but the output {run.plan.output} could not be written: "
            f"{exc.strerror or exc}. Make room or fix the folder, then run the same command again: it "
            "writes the output from the archive and pays for nothing again"
        ) from exc
    try:
        await anyio.to_thread.run_sync(
            functools.partial(
                report.contact_sheet,
                run.plan.output,
                list(view.rows),
                run.folder / archive.CONTACT_SHEET,
                known=run.thumbs,
            )
        )
    except errors.MediaError as exc:  # the video is done and archived; the sheet is a courtesy
        run.emit(last.idx, "warning", f"no contact sheet: {exc}")
    if (run.options.keep or run.plan.keep) == "final":
        await prune(run, keep={r.idx for r in view.part_ends()})
    return duration


async def write_partial(run: ChainRun, stop: errors.ChainerError) -> None:
    """After a stop (budget, a failed task): the video of every step archived so far, at
    OUTPUT.partial.mp4, so what was paid for can be watched; said in a note on `stop`."""
    rows = run.view().archived_prefix()
    if not rows:
        return
    dest = partial_path(run.plan.output)
    try:
        length = await publish(run, ChainView.of(rows), rows[-1], dest)
    except (errors.ChainerError, OSError) as exc:
        stop.add_note(f"the video so far could not be written to {dest}: {exc}")
        return
    run.emit(rows[-1].idx, "partial", f"wrote {dest}", length)
    where = f"steps 0-{rows[-1].idx}" if rows[-1].idx else "step 0"
    stop.add_note(f"the video so far ({where}, {length or 0:.2f} s) is at {dest}; every result is archived")


async def prune(run: ChainRun, *, keep: set[int]) -> None:
    """Delete the intermediate results (each is a prefix of a part's final video) once
    the output is written from the parts; the journal and manifest remember them."""
    for row in run.journal.steps(run.name):
        if row.idx in keep or row.state != "downloaded" or row.pruned_at or not row.file:
            continue
        Path(row.file).unlink(missing_ok=True)
        run.journal.mark_pruned(row)
    downloads.fsync_dir(run.folder)
    await write_manifest(run)


async def write_manifest(run: ChainRun) -> None:
    """Rewrite the chain's manifest, then bring the mirror (if any) up to date."""
    archive.write_chain_manifest(run.ctx.journal, run.name, run.folder)
    await sync_mirror(run.ctx, run.folder)
