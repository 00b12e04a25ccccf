"""When to ask again whether a task is done.

Kling tasks take minutes; fixed intervals either waste requests or add latency. The
schedule here is shaped by the time the task is expected to take (learned from the
chain's own earlier steps when there are any): it halves the remaining expected time
at each poll, so it is sparse early and dense near the expected end, then polls at a
small fraction of the task's age once it is overdue. Jitter keeps many chains
from polling in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PollPolicy:
    #: No two polls of one task closer than this.
    min_interval: float = 2.0
    #: ... and never further apart than this.
    max_interval: float = 30.0
    #: Give up waiting for a task after this long (it stays in the journal; resume continues).
    deadline: float = 3 * 3600.0
    #: Once overdue, poll every this fraction of the task's age.
    overdue_fraction: float = 0.05
    jitter: float = 0.1

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a provider whose tasks run `factor` times real time."""
        return replace(
            self,
            min_interval=max(0.005, self.min_interval * factor),
            max_interval=max(0.02, self.max_interval * factor),
            deadline=max(30.0, self.deadline * factor),
        )


def next_delay(policy: PollPolicy, *, elapsed: float, expected: float, rng: random.Random) -> float:
    """Seconds to wait before the next poll of a task `elapsed` seconds old."""
    remaining = expected - elapsed
    # Halve the remaining expected time while there is some; once overdue, poll at a
    # fraction of the task's age, so a task that runs long costs few polls and its
    # detection lag stays a small fraction of its time.
    delay = (
        remaining / 2 if remaining > policy.min_interval else max(expected, elapsed) * policy.overdue_fraction
    )
    delay = min(policy.max_interval, max(policy.min_interval, delay))
    return delay * rng.uniform(1 - policy.jitter, 1 + policy.jitter)
