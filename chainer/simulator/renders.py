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
        #: Renders not started yet: how to start each, and when it is due (unheld).
        self._pending: dict[str, tuple[Callable[[], None], int]] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def schedule(self, key: str, end_ms: int, launch: Callable[[], None], *, hold_ms: int = 0) -> None:
        """Call `launch` (which starts the render of task `key`) once, `RENDER_LEAD_MS`
        before `end_ms` on the simulated clock, or now if that is past. `hold_ms` holds a
        render due now back that long, or until `release`: a create's handler releases it
        once its answer is written, as a render thread started while the answer is being
        written takes the GIL from it (a create's round trip: 2.9 ms without a render,
        5.8 ms with one started at once)."""
        due_ms = end_ms - RENDER_LEAD_MS
        start_ms = max(due_ms, self._now_ms() + hold_ms)
        if start_ms <= self._now_ms():
            launch()
            return
        with self._cond:
            self._pending[key] = (launch, due_ms)
            heapq.heappush(self._due, (start_ms, next(self._seq), key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sim-render-clock", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self, key: str) -> None:
        """Start `key`'s render now if it was held back only by `hold_ms`."""
        with self._cond:  # launched under the lock: whoever sees it gone sees it started
            pending = self._pending.get(key)
            if pending is not None and pending[1] <= self._now_ms():
                del self._pending[key]
                pending[0]()

    def launch_now(self, key: str) -> None:
        """Start `key`'s render now if it is still waiting (a test finishing it early)."""
        with self._cond:
            pending = self._pending.pop(key, None)
            if pending is not None:
                pending[0]()

    def kick(self) -> None:
        """The simulated clock moved: start what is now due, before returning."""
        self._launch_due()
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _launch_due(self) -> bool:
        """Start every render now due (under the lock, like every launch); whether any was."""
        with self._cond:
            now, launched = self._now_ms(), False
            while self._due and self._due[0][0] <= now:
                pending = self._pending.pop(heapq.heappop(self._due)[2], None)
                if pending is not None:
                    pending[0]()
                    launched = True
            return launched

    def _run(self) -> None:
        while True:
            launched = self._launch_due()
            with self._cond:
                if self._closed:
                    return
                if not launched:
                    # a second is the longest nap, whatever moves the clock
                    wait = min(1.0, (self._due[0][0] - self._now_ms()) / 1000) if self._due else None
                    self._cond.wait(max(0.0, wait) if wait is not None else None)
