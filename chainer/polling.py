"""When to ask again whether a task is done.

Kling tasks take minutes; fixed intervals either waste requests or add latency. The
schedule here is shaped by the time the task is expected to take (learned from the run's
and the chain's earlier tasks when there are any): each poll waits a fixed share of the
remaining expected time (EARLY_SHARE), so it is sparse early and dense near the expected
end, then polls at a small fraction of the task's age once it is overdue. Jitter keeps
many chains from polling in lockstep.

The share, the overdue fraction and the longest interval were chosen with a Monte Carlo
of the schedule over Kling-like task times (log-normal, sigma 0.25, plus a queue of 1-6 s,
the expected time learned from the last 10): 70 % of the remaining time and 5 % of the age
once overdue costs 5.2 queries a task for a median lag of 3.7 % of its time (mean 7.2 %);
60 % and 5 % cost 5.8 for 3.4 % (mean 6.1 %); 60 % and 4 %, 6.3 for 2.9 %; 50 % and 3 %,
7.9 for 2.2 %. 60 % and 5 % leave room under 8 queries for the looks a step adds (a batch's
first tasks, with no history yet, measured 7.9 a task with 4 %: bench/polling.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

#: Before the expected end, each poll waits this share of the time still expected.
EARLY_SHARE = 0.6


@dataclass(frozen=True)
class PollPolicy:
    #: No two polls of one task closer than this.
    min_interval: float = 2.0
    #: ... and never further apart than this.
    max_interval: float = 60.0
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
    # A share of the remaining expected time while there is some; once overdue, poll at a
    # fraction of the task's age, so a task that runs long costs few polls and its
    # detection lag stays a small fraction of its time.
    if remaining > policy.min_interval:
        delay = remaining * EARLY_SHARE
    else:
        delay = max(expected, elapsed) * policy.overdue_fraction
    delay = min(policy.max_interval, max(policy.min_interval, delay))
    return delay * rng.uniform(1 - policy.jitter, 1 + policy.jitter)
