"""Admission of tasks under an account's concurrency limit, shared by every chain of a run.

Kling counts a task against the account's limit from creation until it ends, and
answers 1303 to a create past the limit. The limit depends on the resource pack and
is often unknown. The scheduler:

- holds a slot per task from just before its create until the task ends;
- sends creates one at a time, so the first 1303 is seen before another create goes
  out, and the limit drops to exactly the number of tasks the account accepted (no
  storm of rejected creates);
- probes upward again, one slot at a time, after 2 x limit tasks finished without a
  rejection (so a larger pack, or other users' tasks ending, are noticed), never past
  the configured ceiling;
- serves waiting chains longest-remaining-first, which keeps the batch's makespan
  close to max(longest chain, total work / limit).

Guarantee: told the right limit (and alone on the account), no create gets 1303. Told
too much, the number of 1303 answers is at most 1 + (tasks finished) / (2 x limit).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import anyio


@dataclass(order=True)
class _Waiter:
    priority: float
    seq: int
    event: anyio.Event = field(compare=False)


class Scheduler:
    """Slots for tasks in flight; one instance per provider account and run."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.ceiling = limit
        self.limit = limit
        #: Slots granted: tasks created and not ended, plus creates about to be sent.
        self.in_flight = 0
        #: Of those, the ones whose create has not been answered yet.
        self.pending = 0
        #: The most tasks of ours the account had at once.
        self.peak = 0
        self.rejections = 0
        self._clean = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        #: Held around each create request: creates go out one at a time.
        self.create_lock = anyio.Lock()

    def would_wait(self) -> bool:
        """Whether an acquire now would wait (every slot is taken, or others wait first)."""
        return self.in_flight >= self.limit or bool(self._waiters)

    async def acquire(self, remaining_steps: int, chain: str = "") -> None:
        """Wait for a slot; chains with more steps left go first. (`chain` names the
        holder, for a count shared with other processes: chainer.team.slots.)"""
        if not self.would_wait():
            self._take()
            return
        waiter = _Waiter(-float(remaining_steps), next(self._seq), anyio.Event())
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.event.wait()  # the slot was taken for us by _wake
        except BaseException:
            if waiter.event.is_set():
                self.release(chain, created=False)
            else:
                self._waiters.remove(waiter)
                heapq.heapify(self._waiters)
            raise

    @property
    def confirmed(self) -> int:
        """Tasks of ours the account is running now."""
        return self.in_flight - self.pending

    def may_create(self) -> bool:
        """Checked under create_lock just before a create: is there room on the account?"""
        return self.confirmed < self.limit

    def confirm(self, chain: str = "") -> None:
        """The create of a granted slot was accepted: the account runs one more task."""
        self.pending = max(0, self.pending - 1)
        self.peak = max(self.peak, self.confirmed)

    def force(self, chain: str = "") -> None:
        """Count a task that is already in flight on the account (found on resume)."""
        self.in_flight += 1
        self.peak = max(self.peak, self.confirmed)

    def release(self, chain: str = "", *, created: bool) -> None:
        """Give a slot back: its task ended (created=True), or its create made none (False)."""
        self.in_flight = max(0, self.in_flight - 1)
        if not created:
            self.pending = max(0, self.pending - 1)
        else:
            self._clean += 1
            if self._clean >= 2 * self.limit and self.limit < self.ceiling:
                self.limit += 1
                self._clean = 0
        self._wake()

    def rejected(self) -> None:
        """The account refused a create (1303): it holds no more than our confirmed tasks."""
        self.rejections += 1
        self._clean = 0
        self.limit = max(1, self.confirmed)

    def _take(self) -> None:
        self.in_flight += 1
        self.pending += 1

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = heapq.heappop(self._waiters)
            self._take()
            waiter.event.set()
