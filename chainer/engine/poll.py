"""Waiting for a submitted task: poll until it ends, then commit its video or its failure."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import assert_never

import anyio

from .. import errors, failpoints, rules
from ..chain import StepRow
from ..plan import Step
from ..polling import next_delay
from ..provider.wire import Task
from ..retry import read_backoff, retrying
from .context import READ_DEADLINE_S, ChainRun, task_kind
from .submit import local_time

#: How many of a chain's last task times set the expected time of its next task.
EXPECTED_FROM_LAST = 3


async def await_task(run: ChainRun, step: Step, row: StepRow) -> StepRow:
    """Poll the task until it ends; commit its result or its failure."""
    kind = task_kind(step)
    assert row.task_id is not None
    task_id = row.task_id
    # The task's age counts from its submission, also when this process is a resume.
    submitted = row.submitted_at or time.time()
    expected = expected_seconds(run, kind)
    run.emit(step.index, "processing", f"task {task_id}")
    hub = run.ctx.callbacks
    # a task sent before this run (a resume) is first looked up on a list page it shares
    survey = run.ctx.survey if submitted < run.ctx.started_at else None
    seen = await survey.first_look(kind, task_id) if survey is not None else None
    with hub.expecting(task_id) if hub is not None else contextlib.nullcontext():
        while True:
            failpoints.hit("polling", step.index)
            try:
                task = seen if seen is not None else await query(run, step, kind, task_id)
            except errors.NotFound as exc:
                return forgotten(run, step, row, exc)
            seen = None
            match task.task_status:
                case "submitted" | "processing":
                    # Counted once the provider says it runs: a resumed task that has already
                    # ended holds none of the account's slots (nor the run's peak).
                    run.hold(step)
                    elapsed = time.time() - submitted
                    if elapsed > run.ctx.poll.deadline:
                        raise errors.StillRunning(
                            f"task {task_id} is still {task.task_status} after {elapsed:.0f} s; "
                            "run again later to keep waiting (nothing will be re-created)"
                        )
                    await pause(run, task_id, elapsed=elapsed, expected=expected)
                case "succeed":
                    run.let_go(step)
                    learn(run, kind, task, submitted)
                    return succeeded(run, step, row, task)
                case "failed":
                    run.let_go(step)
                    learn(run, kind, task, submitted)
                    reason = task.task_status_msg or "the provider gave no reason"
                    row = run.journal.transition(
                        row, "failed", reason, error=reason, units=task.units, finished_at=time.time()
                    )
                    run.emit(step.index, "failed", reason)
                    return row
                case _:
                    assert_never(task.task_status)


async def query(run: ChainRun, step: Step, kind: rules.TaskKind, task_id: str) -> Task:
    """One status query of the task by its id, retried while the API does not answer."""
    return await retrying(
        functools.partial(run.ctx.client.get_task, kind, task_id),
        on=read_backoff,
        deadline_s=READ_DEADLINE_S,
        on_retry=run.on_retry(step.index, f"poll of task {task_id}"),
    )


async def pause(run: ChainRun, task_id: str, *, elapsed: float, expected: float) -> None:
    """Wait before the next poll: the usual schedule (chainer.polling) or, with callbacks
    on, until a callback says the task ended or it is overdue (chainer.callbacks)."""
    usual = next_delay(run.ctx.poll, elapsed=elapsed, expected=expected, rng=run.ctx.rng)
    hub = run.ctx.callbacks
    if hub is None:
        await anyio.sleep(usual)
        return
    began = time.monotonic()
    woken = await hub.wait(task_id, hub.wait_budget(elapsed=elapsed, expected=expected, usual=usual))
    if woken == "live":  # callbacks just proved to arrive: wait as long as they allow
        spent = time.monotonic() - began
        rest = hub.wait_budget(elapsed=elapsed + spent, expected=expected, usual=max(0.0, usual - spent))
        await hub.wait(task_id, rest)


def forgotten(run: ChainRun, step: Step, row: StepRow, exc: errors.ApiError) -> StepRow:
    """The provider answers "not found" for a task it accepted: the step stops, failed,
    with the ways on (its charge, if any, is the provider's to explain)."""
    run.let_go(step)
    reason = (
        f"the provider no longer knows task {row.task_id} (created {local_time(row.submitted_at)}; "
        f"it answered {exc}). If the task shows in the provider's console, attach it: `chainer adopt "
        f"{run.name} {step.index} TASK_ID`; otherwise make the step again as a new task, "
        "charged again: run with --retry-failed"
    )
    row = run.journal.transition(row, "failed", reason, error=reason, finished_at=time.time())
    run.emit(step.index, "failed", reason)
    return row


def succeeded(run: ChainRun, step: Step, row: StepRow, task: Task) -> StepRow:
    """Commit a finished task's video (its id, url, length and charge)."""
    video = task.video
    if video is None:
        raise errors.ProtocolError(f"task {task.task_id} succeeded without a video in task_result")
    row = run.journal.transition(
        row,
        "succeeded",
        video_id=video.id,
        video_url=video.url,
        duration=video.seconds,
        units=task.units,
        remote_created_ms=task.created_at,
        finished_at=time.time(),
    )
    run.emit(step.index, "succeeded", f"video {video.id}", run.length())
    return row


def expected_seconds(run: ChainRun, kind: rules.TaskKind) -> float:
    """How long a task of `kind` should take: the run's last few (any chain of the batch),
    else this chain's last few in the journal (a resume), else Kling's usual."""
    took = run.ctx.task_times.get(kind, [])[-EXPECTED_FROM_LAST:] or run.journal.task_times(
        run.name, kind, last=EXPECTED_FROM_LAST
    )
    if took:
        return sum(took) / len(took)
    return rules.EXPECTED_SECONDS[kind] * run.ctx.client.config.time_scale


def learn(run: ChainRun, kind: rules.TaskKind, task: Task, submitted: float) -> None:
    """Remember how long a task of this run took, for every chain's next expectation: by
    the provider's own clock where it says (created_at to updated_at, so the time it took
    us to notice is not learned as the task's: a late callback would feed on itself),
    else by ours."""
    took = time.time() - submitted
    if task.created_at and task.updated_at and task.updated_at >= task.created_at:
        took = (task.updated_at - task.created_at) / 1000
    times = run.ctx.task_times.setdefault(kind, [])
    times.append(took)
    del times[:-EXPECTED_FROM_LAST]
