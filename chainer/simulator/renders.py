"""When the simulator renders a task's video: shortly before the task is due to end.

Kling's video exists only when its task ends, and is made on Kling's machines. The
simulator makes it on ours, so rendering every task at its create would spend the
client's CPU during the client's busiest moment (a batch sending hundreds of creates, a
resume reconciling them), which no real provider does. A task whose end is further off
than `RENDER_LEAD_MS` is rendered from that much before its end; the others (every task
at the time scales tests use) at once, as before. A render that takes longer than its
lead only makes the task answer `succeed` later, as a slow Kling would.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

#: How long before a task's end its render starts (simulated ms): longer than a render of
#: a long chain's video at the default size takes on a busy machine.
RENDER_LEAD_MS = 20_000


class RenderClock:
    """Starts each scheduled render once: when it is due, or sooner when asked to."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self._due: list[tuple[int, int, str]] = []
        self._pending: dict[str, Callable[[], None]] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def schedule(self, key: str, end_ms: int, launch: Callable[[], None]) -> None:
        """Call `launch` (which starts the render of task `key`) once, `RENDER_LEAD_MS`
        before `end_ms` on the simulated clock, or now if that is past."""
        start_ms = end_ms - RENDER_LEAD_MS
        if start_ms <= self._now_ms():
            launch()
            return
        with self._cond:
            self._pending[key] = launch
            heapq.heappush(self._due, (start_ms, next(self._seq), key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sim-render-clock", daemon=True)
                self._thread.start()
            self._cond.notify()

    def launch_now(self, key: str) -> None:
        """Start `key`'s render now if it is still waiting (a test finishing it early)."""
        with self._cond:
            launch = self._pending.pop(key, None)
        if launch is not None:
            launch()

    def kick(self) -> None:
        """The simulated clock moved: start what is now due, before returning."""
        for launch in self._take_due():
            launch()
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _take_due(self) -> list[Callable[[], None]]:
        with self._cond:
            now, due = self._now_ms(), []
            while self._due and self._due[0][0] <= now:
                launch = self._pending.pop(heapq.heappop(self._due)[2], None)
                if launch is not None:
                    due.append(launch)
            return due

    def _run(self) -> None:
        while True:
            due = self._take_due()
            for launch in due:
                launch()
            with self._cond:
                if self._closed:
                    return
                if not due:
                    # a second is the longest nap, whatever moves the clock
                    wait = min(1.0, (self._due[0][0] - self._now_ms()) / 1000) if self._due else None
                    self._cond.wait(max(0.0, wait) if wait is not None else None)
