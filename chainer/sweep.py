"""Archiving what is not archived yet: a journal's pending results, and the whole account.

`archive_pending` downloads every result of a journal's chains that succeeded but is not
safely in the archive (`chainer archive`); `sweep_account` walks the provider's task
lists and archives every video on the account that no archive holds yet (`chainer
archive --account`), so nothing paid for is lost when Kling deletes it after 30 days.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from pathlib import Path

from . import archive, downloads, errors, rules
from .engine.context import READ_DEADLINE_S
from .engine.fetch import download_result, sync_mirror
from .provider.wire import Task
from .retry import OnRetry, download_backoff, read_backoff, retrying
from .session import Session

#: The account sweep reads the task lists this many tasks a page (Kling's maximum), this many pages.
SWEEP_PAGE_SIZE = 500
SWEEP_MAX_PAGES = 1000


async def archive_pending(
    session: Session, names: list[str] | None = None, *, on_retry: OnRetry | None = None
) -> list[tuple[str, int, str]]:
    """Download every result of this journal's chains that is not safely archived yet.

    Returns (chain, step, outcome) for each result looked at: "saved", or why not.
    """
    outcomes = []
    ctx = session.context()
    for chain in session.journal.chains():
        if names and chain.name not in names:
            continue
        folder = session.archive_dir / chain.name
        touched = False
        for row in session.journal.steps(chain.name):
            if row.kind == "existing":
                continue
            if (
                row.state == "downloaded"
                and row.pruned_at is None
                and archive.check_file(row.file, row.size, row.sha256) is not None
            ):
                row = session.journal.transition(row, "succeeded", "archived file missing or changed")
            if row.state != "succeeded":
                continue
            session.journal.lock_chain(chain.name)
            touched = True
            try:
                await download_result(ctx, folder, row, on_retry=on_retry)
                outcomes.append((chain.name, row.idx, "saved"))
            except errors.ResultDeleted as exc:
                outcomes.append((chain.name, row.idx, str(exc)))
            except errors.ChainerError as exc:
                outcomes.append((chain.name, row.idx, f"not saved: {exc}"))
        if touched:
            archive.write_chain_manifest(session.journal, chain.name, folder)
        await sync_mirror(ctx, folder)
    return outcomes


async def sweep_account(
    session: Session, *, on_retry: OnRetry | None = None, known: Collection[str] = ()
) -> list[tuple[str, str]]:
    """Archive every succeeded video on the account that the archive does not hold yet.

    Walks the task list of every kind page by page; videos of this journal's chains, of
    `known` (other journals' chains) and of earlier sweeps are skipped. A list that
    cannot be read is reported by its endpoint and the others are still swept.
    Returns (what, outcome): ("account video ID", "saved" or why not), and
    ("task list GET URL", why it could not be read).
    """
    folder = session.archive_dir / archive.ACCOUNT_FOLDER
    manifest = archive.read_account_manifest(folder, session.provider.name)
    have = {v.video_id for v in manifest.videos} | set(known)
    for chain in session.journal.chains():
        have |= {
            r.video_id for r in session.journal.steps(chain.name) if r.video_id and r.state == "downloaded"
        }
    outcomes: list[tuple[str, str]] = []
    for kind in rules.TASK_KINDS:
        try:
            await _sweep_list(session, kind, folder, manifest, have, outcomes, on_retry)
        except errors.ProviderError as exc:
            where = f"task list GET {session.provider.endpoint(f'/v1/videos/{kind}')}"
            outcomes.append((where, f"cannot be read, so its videos were not swept: {exc}"))
    return outcomes


async def _sweep_list(
    session: Session,
    kind: rules.TaskKind,
    folder: Path,
    manifest: archive.AccountManifest,
    have: set[str],
    outcomes: list[tuple[str, str]],
    on_retry: OnRetry | None,
) -> None:
    """Sweep one kind's task list into `folder` (see sweep_account)."""
    for page in range(1, SWEEP_MAX_PAGES + 1):
        tasks = await retrying(
            functools.partial(session.client.list_tasks, kind, page=page, page_size=SWEEP_PAGE_SIZE),
            on=read_backoff,
            deadline_s=READ_DEADLINE_S,
            on_retry=on_retry,
        )
        for task in tasks:
            video = task.video
            if task.task_status != "succeed" or video is None or video.id in have:
                continue
            dest = folder / f"{kind}-{archive.safe_id(task.task_id)}-{archive.safe_id(video.id)}.mp4"
            try:
                got = await retrying(
                    functools.partial(_fetch_for_sweep, session, kind, task, dest),
                    on=download_backoff,
                    deadline_s=READ_DEADLINE_S,
                    on_retry=on_retry,
                )
            except errors.ChainerError as exc:
                outcomes.append((f"account video {video.id}", f"not saved: {exc}"))
                continue
            manifest.videos.append(
                archive.AccountVideo(
                    kind=kind,
                    task_id=task.task_id,
                    video_id=video.id,
                    prompt=None,
                    reported_duration=video.seconds,
                    probed_duration=got.probed_duration,
                    units=task.units,
                    file=dest.name,
                    sha256=got.sha256,
                    size=got.size,
                    created_at=archive.from_ms(task.created_at),
                    expires_at=archive.expires_at(task.created_at),
                    archived_at=dt.datetime.now(dt.UTC),
                )
            )
            archive.write_account_manifest(folder, manifest)
            have.add(video.id)
            outcomes.append((f"account video {video.id}", "saved"))
        if len(tasks) < SWEEP_PAGE_SIZE:
            break


async def _fetch_for_sweep(
    session: Session, kind: rules.TaskKind, task: Task, dest: Path
) -> downloads.Downloaded:
    try:
        assert task.video is not None
        return await downloads.download(
            session.http, task.video.url, dest, reported_duration=task.video.seconds
        )
    except errors.UrlExpired:
        fresh = await session.client.get_task(kind, task.task_id)
        if fresh.video is None:
            raise
        task.task_result = fresh.task_result
        raise
