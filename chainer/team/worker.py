"""`chainer worker`: take chains from the shared queue and run them, on any machine.

A worker runs up to `at_once` chains at a time, each on the one run path (a batch of one:
chainer.batch), all under the account's limit counted in the database
(chainer.team.slots). It takes a chain by its lease; a chain whose worker died is taken
over once its lease has run out, and its unfinished step is reconciled exactly as a local
resume does (a lookup by external_task_id before anything is sent again).

How a chain's run ends decides its queue state: done; stopped for the user (a refused
prompt, a budget, a lost answer: `chainer status` says what to do); back to the queue when
its task outlived the poll deadline (a worker waits on for it); or, when the stop was not
the chain's own (credentials, the account's balance, Ctrl-C), back to the queue for a
later run, and the worker stops with that error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .. import errors
from ..batch import RunOptions
from ..events import ChainResult, Event
from ..plan import chain_plan
from . import queue

if TYPE_CHECKING:  # the session composes the worker's run; this module only uses it
    from ..session import Session

#: How often an idle worker looks at the queue (s) at Kling's pace; scaled with the provider's time.
QUEUE_POLL_S = 2.0


@dataclass
class WorkerRun:
    """What a worker did: each chain it finished or stopped, and the error that stopped it."""

    results: list[ChainResult] = field(default_factory=list)
    fatal: errors.ChainerError | None = None


async def work(
    session: Session,
    options: RunOptions,
    *,
    at_once: int,
    until_idle: bool = False,
    on_event: Callable[[Event], None] | None = None,
    on_take: Callable[[str], None] | None = None,
    on_lost: Callable[[str], None] | None = None,
) -> WorkerRun:
    """Take and run queued chains until stopped (Ctrl-C), or with `until_idle` until the
    queue holds nothing queued (other workers' chains included: a chain whose worker dies
    is still to be taken over). A chain whose lease another worker took (this one was cut
    off longer than a lease) is stopped here at once, `on_lost` told."""
    if at_once < 1:
        raise errors.ConfigError("--chains must be at least 1")
    journal = session.journal
    queue.database(journal)  # a journal file is refused before anything is taken
    done = WorkerRun()
    #: Chains this worker runs, each in a scope cancelled if its lease is lost.
    running: dict[str, anyio.CancelScope] = {}
    poll_s = max(0.01, QUEUE_POLL_S * min(1.0, session.provider.time_scale * 20))
    wake = anyio.Event()

    async def one(name: str, group: anyio.abc.TaskGroup) -> None:
        nonlocal wake
        scope = running[name]
        try:
            with scope:
                result, fatal = await _run_chain(session, name, options, on_event)
            if scope.cancelled_caught:  # its lease was lost: the chain is another worker's now
                journal.unlock_chain(name)
                if on_lost is not None:
                    on_lost(name)
                return
            if fatal is not None:
                done.fatal = done.fatal or fatal
                queue.finish(journal, name, "queued")  # not the chain's fault: for a later run
                group.cancel_scope.cancel()
                return
            if isinstance(result.error, errors.StillRunning):
                # not stuck: waited on from the queue, asked about again at polling's slowest pace
                queue.finish(journal, name, "queued", after_s=session.poll.max_interval)
                return
            done.results.append(result)
            state: queue.QueueState = "done" if result.state == "done" else "stopped"
            queue.finish(journal, name, state, None if result.error is None else str(result.error))
        finally:
            running.pop(name, None)
            wake.set()

    async with anyio.create_task_group() as group:
        while done.fatal is None:
            for name in queue.lost(journal) & set(running):
                running[name].cancel()
            for name in queue.claim(journal, at_once - len(running)) if len(running) < at_once else []:
                running[name] = anyio.CancelScope()
                if on_take is not None:
                    on_take(name)
                group.start_soon(one, name, group)
            if until_idle and not running and queue.outstanding(journal) == 0:
                break
            with anyio.move_on_after(poll_s):
                await wake.wait()
            wake = anyio.Event()
    return done


async def _run_chain(
    session: Session, name: str, options: RunOptions, on_event: Callable[[Event], None] | None
) -> tuple[ChainResult, errors.ChainerError | None]:
    """Run one taken chain from the storyboard text the journal keeps (the submitter's file
    need not exist here): its result, and the error that should stop the worker, if any."""
    chain = session.journal.chain(name)
    assert chain is not None  # queued chains are recorded by submit
    try:
        plan = chain_plan(chain)
        batch = await session.run_batch([plan], options, on_event=on_event)
    except (errors.ConfigError, errors.StoryboardError) as exc:
        # this chain cannot run here (its storyboard no longer plans, its output folder
        # cannot be written, ...): it stops for the user, the worker goes on with others
        return ChainResult(name, "failed", None, None, 0.0, error=exc), None
    fatal = batch.fatal if isinstance(batch.fatal, errors.AuthError | errors.AccountError) else None
    return batch.results[0], fatal
