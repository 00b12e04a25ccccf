"""Submitting a step: getting a task id for it without ever creating a second task.

A step at `submit_intent` or `submit_unknown` comes here. When an earlier POST may have
reached the provider, the task is looked up first (by external_task_id, else in the task
list); only a lookup that proves no task exists lets the create be sent (again). The
create waits for a free slot on the account, is sent shielded from cancellation, and its
task id is committed the moment it is known.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import assert_never

import anyio

from .. import errors, failpoints, rules
from ..chain import StepRow
from ..plan import Step
from ..ports import Provider
from ..provider.wire import CreateRequest, Task
from ..retry import FullAccountWaits, create_backoff, read_backoff, retrying
from . import requests
from .context import CREATE_DEADLINE_S, READ_DEADLINE_S, ChainRun, task_kind

#: Lookup rounds after an ambiguous create before asking the user to check by hand.
RECONCILE_ROUNDS = 3
#: A list scan looks at tasks created from this long before the create was first tried.
LIST_WINDOW_MS = 60_000
#: ... over at most this many pages of LIST_PAGE_SIZE tasks.
LIST_PAGES = 20
LIST_PAGE_SIZE = 100


async def _account_full(
    run: ChainRun, step: Step, row: StepRow, exc: errors.AccountFull, waits: FullAccountWaits
) -> None:
    """A create refused with 1303: the account's limit is lower than believed. Learn it,
    give the slot back, and wait (chainer.retry.FullAccountWaits) unless it stayed full."""
    scheduler = run.ctx.scheduler
    scheduler.rejected()  # while the refused create still counts as one of ours
    run.let_go(step)
    run.emit(step.index, "waiting", f"the account is full (1303); limit now {scheduler.limit}")
    if waits.expired():
        run.journal.transition(row, "planned", "the account stayed full; nothing was created")
        raise exc
    if scheduler.in_flight == 0:  # full with tasks that are not ours: wait, then ask again
        await anyio.sleep(waits.next_wait(exc))


async def submit(run: ChainRun, step: Step, row: StepRow, parent: StepRow | None) -> StepRow:
    """Get a task id for `row` without ever creating a second task for it."""
    journal = run.journal
    assert row.external_task_id is not None
    lost_answers = 0
    waits = FullAccountWaits(CREATE_DEADLINE_S, time_scale=run.ctx.client.config.time_scale)
    while lost_answers < RECONCILE_ROUNDS:
        if step.index not in run.fresh_intents or row.state == "submit_unknown":
            # An earlier POST may have reached the provider: look before sending again.
            found = await lookup(run, step, row, parent)
            if found is not None:
                return _reconciled(run, step, row, found)
            if row.state == "submit_unknown":
                row = journal.transition(row, "submit_intent", "lookup found no task")
        _may_create(run, step, row)
        if run.settling(step):
            return journal.transition(row, "planned", "not created: the re-roll makes it anew")
        request = await _request_in_slot(run, step, row, parent)
        if request is None:
            continue  # a 1303 taught a lower limit since the slot was granted: queue again
        try:
            return await _create(run, step, row, request)
        except _Requeue:
            continue
        except errors.OutcomeUnknown as exc:
            lost_answers += 1
            run.fresh_intents.discard(step.index)
            row = journal.transition(row, "submit_unknown", str(exc))
            run.emit(step.index, "submit_unknown", f"{exc}; looking the task up")
        except errors.AccountFull as exc:  # the account's limit is lower than believed
            await _account_full(run, step, row, exc, waits)
        except errors.DuplicateExternalId:
            # The provider already has a task with our id: an earlier POST arrived.
            run.fresh_intents.discard(step.index)
        except (errors.InvalidRequestError, errors.PolicyError) as exc:
            run.let_go(step)
            return refused(run, row, step, exc)
        except (errors.AuthError, errors.AccountError, errors.RequestNotSent, errors.TooFast) as exc:
            # Nothing was created and nothing is wrong with the step itself (a TooFast here has
            # outlived its retries' deadline).
            if isinstance(exc, errors.AccountError):
                run.ctx.gate.reason = exc
            run.let_go(step)
            journal.transition(row, "planned", "create refused for now; nothing was created")
            raise
    raise errors.ProviderError(
        f"step {step.index} of {run.name!r}: the provider's answers to its create were lost "
        f"{RECONCILE_ROUNDS} times. Check your provider's task list for external_task_id "
        f"{row.external_task_id!r} before running again; chainer will look for it first."
    )


class _Requeue(Exception):
    """The slot granted turned out not to be free (a 1303 lowered the limit): wait again."""


def _reconciled(run: ChainRun, step: Step, row: StepRow, found: Task) -> StepRow:
    """An earlier POST did create `found`: the step goes on with it."""
    if found.task_status in ("submitted", "processing"):
        run.hold(step)  # the account holds it: it counts against the limit
    else:
        run.let_go(step)  # it has ended: it holds nothing (any more)
    run.emit(step.index, "submitted", f"found task {found.task_id} created earlier")
    return run.journal.transition(
        row,
        "submitted",
        "reconciled",
        task_id=found.task_id,
        submitted_at=found.created_at / 1000 if found.created_at else time.time(),
    )


def _may_create(run: ChainRun, step: Step, row: StepRow) -> None:
    """Refuse the create when the run's creates are shut (an account error earlier)."""
    if run.ctx.gate.reason is None or run.settling(step):
        return
    run.journal.transition(row, "planned", "creates stopped by an account error; nothing was sent")
    raise errors.CreatesStopped(
        f"step {step.index} of {run.name!r} was not sent: the account refused a create "
        f"earlier in this run ({run.ctx.gate.reason})"
    )


async def _request_in_slot(
    run: ChainRun, step: Step, row: StepRow, parent: StepRow | None
) -> CreateRequest | None:
    """Wait for one of the account's slots, then build the request (None: queue again)."""
    if step.index not in run.holding:
        sched = run.ctx.scheduler
        if sched.would_wait():
            run.emit(
                step.index,
                "waiting",
                f"for a free slot on the account ({sched.in_flight}/{sched.limit} in use)",
            )
        await run.ctx.scheduler.acquire(len(run.plan.steps) - step.index, run.name)
        run.holding[step.index] = False
    try:
        # Made once the slot is ours: an Omni shot's reference url is signed anew here,
        # so a long wait for a slot cannot leave it expired.
        request = await requests.build(run, step, row, parent)
    except BaseException:
        run.let_go(step)
        raise
    run.emit(step.index, "submitting", run.describe(step))
    return request


async def _create(run: ChainRun, step: Step, row: StepRow, request: CreateRequest) -> StepRow:
    """Send the create and commit its task id (shielded: once sent, the answer is worth
    waiting for, and the task id is committed before a Ctrl-C can land)."""
    client, scheduler, kind = run.ctx.client, run.ctx.scheduler, task_kind(step)
    with anyio.CancelScope(shield=True):
        async with scheduler.create_lock:  # one create at a time per account
            if not scheduler.may_create():
                run.let_go(step)
                raise _Requeue
            task = await retrying(
                functools.partial(client.create, kind, request),
                on=create_backoff,
                deadline_s=CREATE_DEADLINE_S,
                on_retry=run.on_retry(step.index, f"create {kind}"),
            )
            scheduler.confirm(run.name)
            run.holding[step.index] = True
        failpoints.hit("after-post", step.index)
        row = run.journal.transition(row, "submitted", task_id=task.task_id, submitted_at=time.time())
    run.emit(step.index, "submitted", f"task {task.task_id}")
    assert row.external_task_id is not None
    await check_lookup(run, step, task.task_id, row.external_task_id)
    return row


async def check_lookup(run: ChainRun, step: Step, task_id: str, ext: str) -> None:
    """On the run's first task: does the provider find it by external_task_id? (lookup.py)"""
    assert run.ctx.lookup is not None
    works = await run.ctx.lookup.check(
        task_kind(step), task_id, ext, on_retry=run.on_retry(step.index, "lookup check")
    )
    if works is False:
        run.emit(
            step.index,
            "warning",
            f"{run.ctx.client.config.name} does not find tasks by external_task_id "
            f"({run.ctx.lookup.evidence()}); a create whose answer is lost will be looked up in "
            "the task list instead, or left for you to check: never sent again on a 'not found'",
        )


def refused(run: ChainRun, row: StepRow, step: Step, exc: errors.ApiError) -> StepRow:
    """The provider refused the create (nothing was made): the step fails with the reason,
    and the way on where there is one."""
    reason = str(exc)
    if step.kind == "video-extend" and isinstance(exc, errors.NotFound):
        reason += (
            f". The video it extends is gone from the provider (it deletes videos "
            f"{rules.RETENTION_DAYS} days after they are made); nothing was charged. Make this step from "
            f"the archived file's last frame instead: `chainer run {run.plan.storyboard} --from-step "
            f"{step.index} --from-last-frame`"
        )
    row = run.journal.transition(row, "failed", reason, error=reason)
    run.emit(step.index, "failed", reason)
    return row


# ---------------------------------------------------------------------- lookups


async def lookup(run: ChainRun, step: Step, row: StepRow, parent: StepRow | None) -> Task | None:
    """The task an earlier POST of `row` created, or None when provably none was.

    Raises SubmitUnknown (leaving the step `submit_unknown`) when the provider offers
    no way to tell, unless the user said they checked (`resend_unknown`).
    """
    client = run.ctx.client
    lookup_by = client.config.task_lookup
    why = f"task lookup: {lookup_by}"
    match lookup_by:
        case "external_id":
            decided, found, why = await _by_external_id(run, step, row, parent)
            if decided:
                return found
        case "list":
            decided, found = await scan(run, step, row, parent)
            if decided:
                return found
        case "none":
            pass
        case _:
            assert_never(lookup_by)
    if run.options.resend_unknown:
        return None
    if row.state != "submit_unknown":
        row = run.journal.transition(row, "submit_unknown", "no way to look the task up")
    raise _undecided(run, step, row, why)


async def _by_external_id(
    run: ChainRun, step: Step, row: StepRow, parent: StepRow | None
) -> tuple[bool, Task | None, str]:
    """Look `row`'s task up by its external_task_id: (decided, task, why not decided)."""
    assert row.external_task_id is not None and run.ctx.lookup is not None
    ext = row.external_task_id
    try:
        found = await retrying(
            functools.partial(run.ctx.client.find_by_external_id, task_kind(step), ext),
            on=read_backoff,
            deadline_s=READ_DEADLINE_S,
            on_retry=run.on_retry(step.index, f"lookup of external_task_id {ext}"),
        )
    except errors.LookupUndecided:
        found = None  # cannot tell: the list scan below decides, or the user
    trusted = await run.ctx.lookup.verdict(on_retry=run.on_retry(step.index, "lookup check"))
    if trusted or (found is not None and found.task_info.external_task_id == ext):
        return True, found, ""  # a 'not found' counts only from a lookup seen to work
    why = (
        f"its lookup by external_task_id is not to be trusted ({run.ctx.lookup.evidence()})"
        if trusted is False
        else "its lookup by external_task_id has not been seen to work yet"
    )
    decided, found = await scan(run, step, row, parent)
    return decided, found, why


def _undecided(run: ChainRun, step: Step, row: StepRow, why: str) -> errors.SubmitUnknown:
    """What the user is told when nothing can say whether a lost create made a task."""
    kind, name, provider = task_kind(step), run.name, run.ctx.client.config.name
    candidates = run.candidates.get(step.index, [])
    listed = "".join(
        f"\n  chainer adopt {name} {step.index} {t.task_id}   # {kind}, created "
        f"{local_time(t.created_at / 1000 if t.created_at else None)}, {t.task_status}"
        for t in candidates[:10]
    )
    seen = (
        f" The provider's task list shows {len(candidates)} {kind} task(s) of that time that no step "
        f"holds; if one of them is this step's, attach it (nothing is paid again):{listed}"
        if candidates
        else ""
    )
    return errors.SubmitUnknown(
        f"step {step.index} of {name!r} ({run.describe(step)}): its create may have reached "
        f"{provider} but the answer was lost, and {provider} cannot be asked which "
        f"tasks exist ({why}). Check the provider's console for a {kind} task created "
        f"around {local_time(run.journal.intent_time(row))} with prompt {step.prompt!r}. If there is one, "
        f"attach it with `chainer adopt {name} {step.index} TASK_ID`; if there is none, run "
        f"again with --resend-unknown.{seen}"
    )


async def scan(run: ChainRun, step: Step, row: StepRow, parent: StepRow | None) -> tuple[bool, Task | None]:
    """Look for `row`'s task in the provider's task list: (decided, task); see scan_list.
    What it could not decide between is kept for the message that asks the user."""
    kind = task_kind(step)
    assert row.external_task_id is not None
    since_ms = int((run.journal.intent_time(row) or time.time()) * 1000) - LIST_WINDOW_MS
    parent_video = parent.video_id if step.kind == "video-extend" and parent else None
    held = run.journal.held_task_ids()
    found = await retrying(
        functools.partial(
            scan_list, run.ctx.client, kind, row.external_task_id, parent_video, since_ms, held
        ),
        on=read_backoff,
        deadline_s=READ_DEADLINE_S,
        on_retry=run.on_retry(step.index, f"scan of the {kind} task list"),
    )
    run.candidates[step.index] = found.candidates
    return found.decided, found.found


@dataclass(frozen=True)
class ListScan:
    """What the provider's task list says about a lost create."""

    #: True when the list can tell whether our task exists (then `found` is it, or None).
    decided: bool
    found: Task | None
    #: Recent tasks of the step's kind that no step of the journal holds (for an extension,
    #: only those extending the step's parent video): what the user may adopt.
    candidates: list[Task]


async def scan_list(
    client: Provider,
    kind: rules.TaskKind,
    ext: str,
    parent_video: str | None,
    since_ms: int,
    held: Collection[str] = (),
) -> ListScan:
    """Look for our task in the provider's task list.

    Decided when the provider echoes external_task_id (ours is there or not), or, for an
    extension, when the tasks extending our parent video can be counted (none: not
    created; one: ours). Tasks the journal already holds (earlier attempts, other steps and
    chains) are never counted as ours. Undecided otherwise.
    """
    echoes = False
    candidates: list[Task] = []
    for page in range(1, LIST_PAGES + 1):
        tasks = await client.list_tasks(kind, page=page, page_size=LIST_PAGE_SIZE)
        recent = [t for t in tasks if (t.created_at or 0) >= since_ms]
        for task in recent:
            if task.task_info.external_task_id is not None:
                echoes = True
                if task.task_info.external_task_id == ext:
                    return ListScan(True, task, [task])
            if task.task_id in held:
                continue
            parent = task.task_info.parent_video
            if parent_video is None or (parent is not None and parent.id == parent_video):
                candidates.append(task)
        if len(tasks) < LIST_PAGE_SIZE or len(recent) < len(tasks):
            break  # the end of the list, or past the window (lists are newest first)
    if echoes:
        return ListScan(True, None, candidates)
    if parent_video is not None and len(candidates) <= 1:
        return ListScan(True, candidates[0] if candidates else None, candidates)
    return ListScan(False, None, candidates)


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return "the time of the last run"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
