"""Fetching results: download, verify and commit a succeeded step's video into the archive."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import anyio

from .. import archive, downloads, errors, failpoints, report, rules
from ..chain import StepRow
from ..plan import Step
from ..ports import JournalPort
from ..retry import OnRetry, download_backoff, retrying
from .context import READ_DEADLINE_S, ChainRun, RunContext


async def download(run: ChainRun, step: Step, row: StepRow) -> StepRow:
    """Archive the step's result and commit it; take its contact-sheet picture."""
    run.emit(step.index, "downloading", archive.result_name(step.index, row.video_id or ""))
    row = await download_result(run.ctx, run.folder, row, on_retry=run.on_retry(step.index, "download"))
    run.emit(step.index, "downloaded", Path(row.file or "").name, run.length())
    # The contact sheet's picture of this step, taken now (cheap: one seek) rather than by
    # decoding the whole output at the end.
    rows = run.journal.steps(run.name)
    try:
        run.thumbs[(row.idx, row.attempt)] = await anyio.to_thread.run_sync(report.thumbnail, rows, row)
    except errors.MediaError as exc:  # only a picture: the sheet reads it from the output instead
        run.emit(step.index, "warning", f"no contact-sheet picture yet: {exc}")
    return row


async def restore(run: ChainRun, row: StepRow) -> StepRow | None:
    """Put a `downloaded` step's missing file back from this worker's archive folder or the
    mirror (another machine archived it), verified against the journal's size and sha256;
    None when neither holds it (it is then downloaded from the provider again)."""
    if not row.file:
        return None
    here = run.folder / Path(row.file).name
    if archive.check_file(str(here), row.size, row.sha256) is not None:
        mirror = run.ctx.mirror
        if mirror is None:
            return None
        try:
            got = await anyio.to_thread.run_sync(mirror.restore, run.name, here.name, here)
        except errors.DownloadError as exc:
            run.emit(row.idx, "warning", f"{exc}; downloading it from the provider instead")
            return None
        problem = archive.check_file(str(here), row.size, row.sha256) if got else "not in the mirror"
        if problem is not None:
            return None
        run.emit(row.idx, "restored", f"{here.name} from {mirror.url}")
    return run.journal.relocate(row, str(here)) if str(here) != row.file else row


async def sync_mirror(ctx: RunContext, folder: Path) -> None:
    """Copy `folder` to the archive mirror, if one is configured (retried like a download)."""
    mirror = ctx.mirror
    if mirror is None or not folder.is_dir():
        return
    await retrying(
        lambda: anyio.to_thread.run_sync(mirror.sync, folder), on=download_backoff, deadline_s=READ_DEADLINE_S
    )


async def download_result(
    ctx: RunContext, folder: Path, row: StepRow, *, on_retry: OnRetry | None = None
) -> StepRow:
    """Download, verify and commit the result of a `succeeded` step into `folder`.

    A dead signed url is replaced by querying the task again; a task the provider no
    longer knows (deleted after 30 days) fails the step as lost (ResultDeleted).
    """
    assert row.video_id is not None and row.task_id is not None and row.kind != "existing"
    dest = folder / archive.result_name(row.idx, row.video_id)
    kind = cast(rules.TaskKind, row.kind)
    task_id = row.task_id
    url = row.video_url

    def lost(answer: Exception | None = None) -> errors.ResultDeleted:
        """The journal records the loss (the step fails with the way on), then it is raised."""
        message = lost_message(ctx.journal, row, str(answer) if answer else None)
        ctx.journal.transition(row, "failed", message, error=message)
        return errors.ResultDeleted(message)

    async def attempt() -> downloads.Downloaded:
        nonlocal url
        fresh = url is None
        if fresh:
            try:
                task = await ctx.client.get_task(kind, task_id)
            except errors.NotFound as exc:  # the provider's "not found" for a task it made: gone
                raise lost(exc) from exc
            url = task.video.url if task.video else None
            if url is None:
                raise errors.VerificationFailed(f"task {task_id} no longer offers its video")
        assert url is not None
        try:
            return await downloads.download(
                ctx.http,
                url,
                dest,
                reported_duration=row.duration,
                progress=lambda done: failpoints.hit("mid-download", row.idx),
            )
        except errors.UrlExpired as exc:
            if fresh and archive.is_deleted(row.remote_created_ms):
                # Older than the provider keeps videos, and a url signed just now is refused
                # too: the provider's answer and the age agree, so no retry can help.
                raise lost(exc) from None
            url = None  # the next attempt asks the provider for a fresh signed url
            raise

    async with ctx.downloads:
        got = await retrying(
            attempt, on=download_backoff, deadline_s=READ_DEADLINE_S, wait_initial=0.5, on_retry=on_retry
        )
    failpoints.hit("after-download", row.idx)
    return ctx.journal.transition(
        row,
        "downloaded",
        file=str(got.path),
        sha256=got.sha256,
        size=got.size,
        probed_duration=got.probed_duration,
    )


def lost_message(journal: JournalPort, row: StepRow, answer: str | None = None) -> str:
    """What a user reads when a result was deleted by the provider before it was archived."""
    chain = journal.chain(row.chain)
    deleted = archive.expires_at(row.remote_created_ms)
    said = f"; the provider answered: {answer}" if answer else ""
    how = (
        f"deleted by the provider on {deleted:%Y-%m-%d} ({rules.RETENTION_DAYS} days after it was made{said})"
        if deleted is not None and archive.is_deleted(row.remote_created_ms)
        else f"gone from the provider (it deletes results {rules.RETENTION_DAYS} days after they are "
        f"made{said})"
    )
    storyboard = chain.storyboard if chain else "STORYBOARD"
    return (
        f"LOST: {how}: step {row.idx} of {row.chain!r}, video {row.video_id} (task {row.task_id}), was not "
        f"archived in time. To make the step again: `chainer run {storyboard} --from-step {row.idx}` (with "
        "--from-last-frame when the video before it is gone too: it then starts from the archived "
        "file's last frame)"
    )


def is_lost(row: StepRow) -> bool:
    """A result the provider has deleted before it was archived."""
    return row.state == "succeeded" and archive.is_deleted(row.remote_created_ms)
