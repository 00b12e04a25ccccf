"""Retries with a deadline, driven by what the error says (stamina underneath).

Every "should this be tried again, and when" is answered here. Reads (polls, lookups)
retry on anything transient. Creates retry only on what proves that no task was made:
the request never left (RequestNotSent), or the provider refused it for now: 1302 (too
fast) is sent again after a backoff; 1303 (the account is full) waits for a slot
instead (FullAccountWaits, with the scheduler). `Retry-After` sets the wait when the
provider sends one (capped). `stamina.set_testing(True)` turns every wait off in tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina

from .errors import (
    AccountFull,
    ApiError,
    DownloadError,
    OutcomeUnknown,
    RequestNotSent,
    TooFast,
    VerificationFailed,
)

T = TypeVar("T")

#: The longest wait a Retry-After header can impose.
MAX_RETRY_AFTER_S = 120.0
#: How long a request that never reached the provider (connection refused, DNS, TLS) is
#: tried again before giving up: long enough for a network blip, short enough that a wrong
#: base URL is reported within a minute instead of hanging.
UNREACHABLE_DEADLINE_S = 15.0

#: Told about every retry before its wait: (the error, the attempt that failed, the wait the
#: provider asked for in s, or None when backoff chooses it).
OnRetry = Callable[[Exception, int, float | None], None]


def _retry_after(exc: ApiError) -> bool | float:
    if exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER_S)
    return True


def read_backoff(exc: Exception) -> bool | float:
    """For idempotent calls: retry transport trouble and retryable business codes."""
    if isinstance(exc, ApiError):
        return _retry_after(exc) if exc.retryable else False
    return isinstance(exc, RequestNotSent | OutcomeUnknown) and exc.retryable


def download_backoff(exc: Exception) -> bool | float:
    """For downloads: retry interrupted transfers and dead urls, never a file that failed checks."""
    if isinstance(exc, VerificationFailed):
        return False
    return isinstance(exc, DownloadError) or read_backoff(exc)


def create_backoff(exc: Exception) -> bool | float:
    """For creates: retry only what proves nothing was created.

    1302 (too fast) waits and tries again; 1303 (the account is full) is not retried
    here: the scheduler learns from it and waits for a slot instead.
    """
    if isinstance(exc, TooFast):
        return _retry_after(exc)
    if isinstance(exc, AccountFull):
        return False
    return isinstance(exc, RequestNotSent) and exc.retryable


class FullAccountWaits:
    """The waits between creates an account refused as full (1303), for one step.

    A 1303 is not retried like a 1302: sending sooner only meets it again. The scheduler
    first waits for one of the run's own tasks to end; only when the account is full with
    tasks that are not ours does the step wait here, doubling from 1 s (scaled like the
    provider's task times) up to a minute, or as long as Retry-After says, and it gives
    up `deadline_s` after the first refusal.
    """

    def __init__(self, deadline_s: float, *, time_scale: float = 1.0):
        self.since = time.monotonic()
        self.deadline_s = deadline_s
        self.time_scale = time_scale
        self._backoff = 1.0

    def expired(self) -> bool:
        return time.monotonic() - self.since > self.deadline_s

    def next_wait(self, exc: AccountFull) -> float:
        """Seconds to wait before asking the account again (at least 10 ms, at most the
        Retry-After cap)."""
        wait = exc.retry_after or self._backoff * self.time_scale
        self._backoff = min(self._backoff * 2, 60.0)
        return min(MAX_RETRY_AFTER_S, max(0.01, wait))


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    on: Callable[[Exception], bool | float],
    deadline_s: float,
    wait_initial: float = 1.0,
    wait_max: float = 30.0,
    on_retry: OnRetry | None = None,
    unreachable_deadline_s: float = UNREACHABLE_DEADLINE_S,
) -> T:
    """Run `call` until it succeeds, `on` refuses the error, or `deadline_s` passes.

    A provider that cannot be reached at all (RequestNotSent) is given only
    `unreachable_deadline_s`: a wrong URL does not get better by waiting. `on_retry` hears
    of every retry, so the user sees each one. The last error is raised as it is when
    giving up, so callers see the real cause.
    """
    started = time.monotonic()
    attempts = 0

    def decide(exc: BaseException) -> bool | float:
        if not isinstance(exc, Exception):  # Ctrl-C, cancellation: never retried
            return False
        verdict = on(exc)
        elapsed = time.monotonic() - started
        if verdict is False or elapsed >= deadline_s:
            return False
        if isinstance(exc, RequestNotSent) and elapsed >= unreachable_deadline_s:
            return False
        if on_retry is not None:
            on_retry(exc, attempts, None if isinstance(verdict, bool) else verdict)
        return verdict

    try:
        async for attempt in stamina.retry_context(
            on=decide, attempts=None, timeout=deadline_s, wait_initial=wait_initial, wait_max=wait_max
        ):
            with attempt:
                attempts = attempt.num
                return await call()
    except Exception as exc:
        if attempts > 1:
            exc.add_note(f"gave up after {attempts} attempts in {time.monotonic() - started:.0f} s")
        raise
    raise AssertionError("unreachable: stamina either returns or raises")
