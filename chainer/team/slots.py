"""The account's concurrency limit counted in PostgreSQL: one count for every worker.

Kling counts a task against the account from its creation until it ends, whoever made it.
Workers on several machines therefore keep the count where all of them see it: a row per
chain holding slots (tasks in flight, creates not yet answered), and a row per account
with the limit learned so far. The rules are chainer.scheduler's, shared:

- a slot is granted only while the account's count is under the limit, under a row lock
  on the account, so two workers never take the last slot together;
- creates go out one at a time across all workers (a session-level advisory lock, which
  the server drops if the worker dies), so the first 1303 is seen before another create;
- a 1303 lowers the shared limit to the tasks the account holds; 2 x limit tasks ended
  without one raise it by one again, never past the configured ceiling.

Slots of a chain whose owner died still count while the chain waits in the queue for
another worker (its task may still run at Kling); the worker that takes it over forgets
them (chainer.team.database) and counts what it finds in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from .database import NOW, PgDb

#: How often a worker waiting for a slot asks the database again (s), when no release of
#: its own wakes it sooner; scaled with the provider's time (a simulator's fast tasks).
WAIT_POLL_S = 1.0
#: The slots the account holds: chains owned now, and chains waiting for a new owner.
_COUNTED = (
    "SELECT COALESCE(SUM(s.held), 0) AS held, COALESCE(SUM(s.pending), 0) AS pending "
    "FROM chainer_slots s LEFT JOIN chainer_leases l ON l.chain = s.chain "
    "LEFT JOIN chainer_queue q ON q.chain = s.chain "
    f"WHERE s.account = ? AND (l.expires_at > {NOW} OR q.state = 'queued')"
)


class SharedSlots:
    """Slots of one account, shared through the journal's database (the Slots port)."""

    def __init__(self, db: PgDb, account: str, ceiling: int, *, time_scale: float = 1.0):
        if ceiling < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.db = db
        self.account = account
        self.poll_s = max(0.01, WAIT_POLL_S * min(1.0, time_scale * 20))
        #: The most tasks of the account in flight at once, as this worker saw it.
        self.peak = 0
        self._local = anyio.Lock()
        #: Held by this worker's one chain that asks the database for a slot; the others
        #: wait their turn here, so a full account costs one query a poll per worker.
        self._admission = anyio.Lock()
        self._released = anyio.Event()
        with db.transaction():
            db.execute(
                "INSERT INTO chainer_accounts (account, lim, ceiling) VALUES (?, ?, ?) "
                "ON CONFLICT (account) DO UPDATE SET ceiling = excluded.ceiling, "
                "lim = LEAST(chainer_accounts.lim, excluded.ceiling)",
                (account, ceiling, ceiling),
            )

    # ------------------------------------------------------------------ reads

    def _account(self, *, lock: bool = False) -> Any:
        row = self.db.execute(
            "SELECT lim, ceiling, clean, rejections FROM chainer_accounts WHERE account = ?"
            + (" FOR UPDATE" if lock else ""),
            (self.account,),
        ).fetchone()
        assert row is not None  # made in __init__
        return row

    def _counted(self) -> tuple[int, int]:
        row = self.db.execute(_COUNTED, (self.account,)).fetchone()
        assert row is not None
        return int(row["held"]), int(row["pending"])

    @property
    def limit(self) -> int:
        return int(self._account()["lim"])

    @property
    def ceiling(self) -> int:
        return int(self._account()["ceiling"])

    @property
    def rejections(self) -> int:
        return int(self._account()["rejections"])

    @property
    def in_flight(self) -> int:
        """Slots granted on the account, by every worker."""
        return self._counted()[0]

    def would_wait(self) -> bool:
        return self.in_flight >= self.limit

    def may_create(self) -> bool:
        """Checked under create_lock: does the account run fewer tasks than its limit?"""
        held, pending = self._counted()
        return held - pending < self.limit

    # ------------------------------------------------------------------ writes

    def _add(self, chain: str, held: int, pending: int) -> None:
        if chain in self.db.lost:  # another worker owns the chain now, and counts its slots
            return
        self.db.execute(
            "INSERT INTO chainer_slots (account, chain, held, pending) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (account, chain) DO UPDATE SET "
            "held = GREATEST(0, chainer_slots.held + excluded.held), "
            "pending = GREATEST(0, chainer_slots.pending + excluded.pending)",
            (self.account, chain, held, pending),
        )

    def _try_take(self, chain: str) -> bool:
        with self.db.transaction():
            limit = int(self._account(lock=True)["lim"])  # the row lock serialises grants
            held, _ = self._counted()
            if held >= limit:
                return False
            self._add(chain, 1, 1)
            return True

    async def acquire(self, remaining_steps: int, chain: str = "") -> None:
        """Wait until the account has a free slot, then take it for `chain`. A release by
        this worker wakes its waiters at once; another worker's is seen at the next poll."""
        async with self._admission:
            while not self._try_take(chain):
                released = self._released
                with anyio.move_on_after(self.poll_s):
                    await released.wait()

    def confirm(self, chain: str = "") -> None:
        with self.db.transaction():
            self._add(chain, 0, -1)
            held, pending = self._counted()
        self.peak = max(self.peak, held - pending)

    def force(self, chain: str = "") -> None:
        with self.db.transaction():
            self._add(chain, 1, 0)
            held, pending = self._counted()
        self.peak = max(self.peak, held - pending)

    def release(self, chain: str = "", *, created: bool) -> None:
        with self.db.transaction():
            account = self._account(lock=True)
            self._add(chain, -1, 0 if created else -1)
            if created:
                clean, limit = int(account["clean"]) + 1, int(account["lim"])
                if clean >= 2 * limit and limit < int(account["ceiling"]):
                    limit, clean = limit + 1, 0
                self.db.execute(
                    "UPDATE chainer_accounts SET clean = ?, lim = ? WHERE account = ?",
                    (clean, limit, self.account),
                )
        self._released.set()
        self._released = anyio.Event()

    def rejected(self) -> None:
        """A 1303: the account holds no more than the tasks confirmed by every worker."""
        with self.db.transaction():
            self._account(lock=True)
            held, pending = self._counted()
            self.db.execute(
                "UPDATE chainer_accounts SET rejections = rejections + 1, clean = 0, lim = ? "
                "WHERE account = ?",
                (max(1, held - pending), self.account),
            )

    def _try_create_lock(self) -> bool:
        row = self.db.execute(
            "SELECT pg_try_advisory_lock(hashtext(?)) AS got", ("chainer:create:" + self.account,)
        ).fetchone()
        return bool(row and row["got"])

    @property
    def create_lock(self) -> AbstractAsyncContextManager[Any]:
        """Held around each create: one at a time per account, across every worker."""
        return self._one_create()

    @asynccontextmanager
    async def _one_create(self) -> AsyncIterator[None]:
        async with self._local:
            while not self._try_create_lock():  # another worker is sending a create
                await anyio.sleep(self.poll_s / 4)
            try:
                yield
            finally:
                self.db.execute("SELECT pg_advisory_unlock(hashtext(?))", ("chainer:create:" + self.account,))
