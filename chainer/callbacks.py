"""The callback receiver: Kling POSTs a task's object to its `callback_url` on every status
change, so a run learns that a task ended the moment it does instead of at its next poll.

Nothing in a callback is trusted. The URL carries an unguessable per-run token in its
path; a POST with another token, a body over MAX_BODY bytes, a body that is not a task
object (flat, or wrapped in the `{code, message, data}` envelope: both are accepted), or
a task this run is not waiting for, is answered and ignored. A callback that claims a task
ended only wakes that task's poller, which asks the provider with one GET before anything
is committed: a forged callback can cost a GET, never a url, a status or a video id.
Repeated and out-of-order callbacks change nothing (a woken poller that finds the task
still running goes back to waiting).

Polling stays the safety net: until the first genuine callback of the run arrives, polls
keep their usual schedule; from then on a task is polled once after its create and then
only when a callback says it ended or when it is overdue (CallbackHub.wait_budget), so a
dropped callback costs detection time, never a result.

The HTTP side (the ASGI app and its server) is `chainer.receiver`, imported only by a run
that listens.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, StringConstraints, ValidationError

from .rules import TaskStatus

#: A task object is a few hundred bytes; anything far larger is not one.
MAX_BODY = 64 * 1024
#: Where the receiver listens unless told otherwise.
DEFAULT_LISTEN = "127.0.0.1:8787"
#: Claims about task ids not (yet) waited for that are kept, at most.
EARLY_KEPT = 1024
#: Why a wait ended (CallbackHub.wait).
Woken = Literal["ended", "live", "timeout"]
#: With callbacks arriving, a task is polled again without one only this long past its
#: expected time (as a multiple of it): its callback is overdue. Task times vary (Kling's
#: by tens of percent), so 2x leaves almost every task to its callback and still finds one
#: whose callback was lost within twice its usual time.
OVERDUE_FACTOR = 2.0


@dataclass
class CallbackHub:
    """The run's side of the callbacks: the URL sent with each create, the tasks waited
    for, and what arrived. Lives on the run's event loop (the receiver runs on it too)."""

    public_url: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: A genuine callback (right token, a task we wait for) has arrived in this run.
    live: bool = False
    #: Callbacks answered, by what was done with them ("woke", "noted", "wrong token", ...).
    counts: dict[str, int] = field(default_factory=dict)
    _waiting: dict[str, anyio.Event] = field(default_factory=dict)
    #: Tasks a callback said had ended, not yet told to their poller.
    _ended: set[str] = field(default_factory=set)
    #: The last claims about task ids nobody waits for (yet), oldest first.
    _early: dict[str, TaskStatus] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The callback_url of every create of this run (it holds the token: never logged)."""
        return f"{self.public_url.rstrip('/')}/{self.token}"

    @contextlib.contextmanager
    def expecting(self, task_id: str) -> Iterator[None]:
        """While a poller waits for `task_id`, callbacks about it are heard (also one that
        came between the create's answer and this: the provider announces at once)."""
        self._waiting.setdefault(task_id, anyio.Event())
        early = self._early.pop(task_id, None)
        if early is not None:
            self.heard(Claim(task_id=task_id, task_status=early))
        try:
            yield
        finally:
            self._waiting.pop(task_id, None)
            self._ended.discard(task_id)

    async def wait(self, task_id: str, timeout: float) -> Woken:
        """Sleep up to `timeout` s; less when a callback says the task ended ("ended"), or
        when the run's first genuine callback arrives ("live": the waiter may now wait
        longer, see wait_budget)."""
        event = self._waiting.get(task_id)
        if event is None:
            await anyio.sleep(timeout)
            return "timeout"
        if task_id not in self._ended:
            with anyio.move_on_after(timeout):
                await event.wait()
            self._waiting[task_id] = anyio.Event()  # the next wait waits for the next callback
        if task_id in self._ended:
            self._ended.discard(task_id)
            return "ended"
        return "live" if event.is_set() else "timeout"

    def wait_budget(self, *, elapsed: float, expected: float, usual: float) -> float:
        """How long a poller of a task `elapsed` s old waits before its next GET: `usual`
        until callbacks are seen to arrive; then until the task is overdue (its expected
        time x OVERDUE_FACTOR), after which the usual schedule again."""
        if not self.live:
            return usual
        overdue_at = expected * OVERDUE_FACTOR
        return max(usual, overdue_at - elapsed) if elapsed < overdue_at else usual

    def heard(self, task: Claim) -> str:
        """A well-formed callback with the right token: what it changes (see the module)."""
        if task.task_id not in self._waiting:
            # Kept a little while (bounded), changing nothing unless a poller of ours later
            # waits for that very task id: its create's answer may still be on its way.
            self._early[task.task_id] = task.task_status
            while len(self._early) > EARLY_KEPT:
                self._early.pop(next(iter(self._early)))
            return "not waited for"
        if not self.live:  # callbacks reach us: every poller may stretch its wait
            self.live = True
            for event in self._waiting.values():
                event.set()
        if task.task_status not in ("succeed", "failed"):
            return "noted"  # still running: nothing to ask the provider yet
        self._ended.add(task.task_id)
        self._waiting[task.task_id].set()
        return "woke"

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class Claim(BaseModel):
    """What chainer reads of a callback body: which task, and the status it claims. The
    rest (urls, video ids, units) is never used: the poller's GET tells those."""

    task_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    task_status: TaskStatus


def parse_task(body: bytes) -> Claim | None:
    """The claim of a callback body, flat or in the envelope; None if it is not a task."""
    try:
        data: Any = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            data = data["data"]
        return Claim.model_validate(data)
    except (ValueError, ValidationError):
        return None
