"""Attaching a task found by hand to a step (`chainer adopt`), after the provider confirms it."""

from __future__ import annotations

import functools
import time
from typing import cast

from . import errors, rules
from .chain import StepRow, label
from .engine.context import READ_DEADLINE_S
from .errors import ConfigError
from .retry import read_backoff, retrying
from .session import Session


async def adopt(session: Session, name: str, idx: int, task_id: str) -> StepRow:
    """Attach task `task_id` (found in the provider's console or list) to step `idx` of chain
    `name`, after checking with the provider that it exists, is of the step's kind and,
    for an extension, extends the step's parent video. The next run goes on from it."""
    journal = session.journal
    if journal.chain(name) is None:
        raise ConfigError(f"no chain named {name!r} in {journal.where}")
    journal.lock_chain(name)
    row = journal.step(name, idx)
    if row.kind == "existing" or row.state not in (
        "planned",
        "submit_intent",
        "submit_unknown",
        "failed",
    ):
        raise ConfigError(
            f"step {idx} of {name!r} is {label(row.state)}: only a step whose task is not "
            "known (planned, submit unknown, failed) can adopt one"
        )
    holder = journal.holder(task_id)
    if holder is not None:
        raise ConfigError(
            f"task {task_id} already belongs to step {holder.idx} (attempt {holder.attempt}) of "
            f"{holder.chain!r}; a task is paid for once and used once"
        )
    kind = cast(rules.TaskKind, row.kind)
    try:
        task = await retrying(
            functools.partial(session.client.get_task, kind, task_id),
            on=read_backoff,
            deadline_s=READ_DEADLINE_S,
        )
    except errors.InvalidRequestError as exc:
        if not isinstance(exc, errors.NotFound):
            raise
        raise ConfigError(
            f"{session.provider.name} has no {kind} task {task_id} (step {idx} of {name!r} is a {kind}): "
            f"{exc}"
        ) from exc
    if kind == "video-extend":
        parent = journal.step(name, idx - 1)
        extends = task.task_info.parent_video.id if task.task_info.parent_video else None
        if extends is None or extends != parent.video_id:
            raise ConfigError(
                f"task {task_id} extends video {extends or '(none given)'}, but step {idx} of {name!r} "
                f"extends step {idx - 1}'s video {parent.video_id}: not this step's task"
            )
    ext = task.task_info.external_task_id or row.external_task_id or f"adopted-{task_id}"
    created = task.created_at / 1000 if task.created_at else time.time()
    return journal.adopt(row, task.task_id, external_task_id=ext, submitted_at=created)
