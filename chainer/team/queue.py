"""The shared queue: chains submitted for any worker to take, in the journal's database.

A chain is `queued` from `chainer submit` until a worker finishes it (`done`) or it stops
for the user (`stopped`, with why). Which worker runs it is not a queue state: it is the
chain's lease (chainer.team.database), so a worker that dies leaves its chains `queued`
and, once their leases run out, the next worker that looks takes them over.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..engine.runner import record
from ..errors import ChainLocked, ConfigError
from ..journal import Journal
from ..plan import Plan
from .database import NOW, PgDb

QueueState = Literal["queued", "done", "stopped"]


@dataclass(frozen=True)
class Entry:
    """One chain of the queue, as `chainer status` shows it."""

    chain: str
    state: QueueState
    #: How many times a worker took it (more than 1: it was taken over, or resubmitted).
    taken: int
    error: str | None


def database(journal: Journal) -> PgDb:
    """The journal's server, or ConfigError: a queue needs a database every worker reaches."""
    if not isinstance(journal.db, PgDb):
        raise ConfigError(
            f"the journal {journal.where} is a file on this machine; submit and worker need a journal "
            "on PostgreSQL that every worker reaches: --journal postgresql://USER@HOST/DB "
            "(or CHAINER_JOURNAL)"
        )
    return journal.db


def submit(journal: Journal, plans: Sequence[Plan], provider: str) -> list[str]:
    """Record each plan's chain and queue it (again, if it had stopped or was done: a done
    chain is found done by the worker and costs nothing)."""
    db = database(journal)
    for plan in plans:
        kept = journal.chain(plan.chain)
        if kept is not None and kept.storyboard_sha != plan.storyboard_sha256:
            raise ConfigError(
                f"{plan.storyboard}: chain {plan.chain!r} is in the journal from another version of "
                "this storyboard, and a worker runs a chain from the text it was submitted with. "
                f"Give the edited storyboard another `name`, or run it once with `chainer run "
                f"{plan.storyboard} --journal ...`, which takes edits to steps not sent yet (and "
                "offers --from-step for the others); nothing was queued"
            )
    with db.transaction():
        for plan in plans:
            record(journal, plan, provider)
            db.execute(
                "INSERT INTO chainer_queue (chain, state, submitted_at) VALUES (?, 'queued', ?) "
                "ON CONFLICT (chain) DO UPDATE SET state = 'queued', error = NULL, finished_at = NULL, "
                "not_before = NULL",
                (plan.chain, time.time()),
            )
    return [p.chain for p in plans]


def claim(journal: Journal, at_most: int) -> list[str]:
    """Take up to `at_most` queued chains that no live lease holds, oldest first; each is
    leased to this process (several workers asking at once never get the same chain)."""
    db = database(journal)
    taken: list[str] = []
    with db.transaction():
        rows = db.execute(
            "SELECT q.chain FROM chainer_queue q LEFT JOIN chainer_leases l ON l.chain = q.chain "
            f"WHERE q.state = 'queued' AND (l.chain IS NULL OR l.expires_at < {NOW}) "
            f"AND (q.not_before IS NULL OR q.not_before <= {NOW}) "
            "ORDER BY q.submitted_at, q.chain LIMIT ? FOR UPDATE OF q SKIP LOCKED",
            (at_most,),
        ).fetchall()
        for row in rows:
            try:
                with db.transaction():  # a savepoint: a lease taken meanwhile skips this one
                    journal.lock_chain(row["chain"])
                    db.execute("UPDATE chainer_queue SET taken = taken + 1 WHERE chain = ?", (row["chain"],))
            except ChainLocked:
                continue
            taken.append(row["chain"])
    return taken


def finish(
    journal: Journal, chain: str, state: QueueState, error: str | None = None, *, after_s: float = 0.0
) -> None:
    """Record how the chain's run ended here and give its lease back (`queued`: for another
    worker to take, as after a stop that was not the chain's own, no sooner than `after_s`
    from now)."""
    db = database(journal)
    db.execute(
        f"UPDATE chainer_queue SET state = ?, error = ?, finished_at = ?, not_before = {NOW} + ? "
        "WHERE chain = ?",
        (state, error, None if state == "queued" else time.time(), after_s, chain),
    )
    journal.unlock_chain(chain)


def lost(journal: Journal) -> set[str]:
    """Chains whose lease this process held and another worker has taken since."""
    return set(database(journal).lost)


def outstanding(journal: Journal) -> int:
    """Chains still queued: waiting for a worker, or being run by one."""
    row = (
        database(journal).execute("SELECT count(*) AS n FROM chainer_queue WHERE state = 'queued'").fetchone()
    )
    return int(row["n"]) if row else 0


def entries(journal: Journal) -> dict[str, Entry]:
    """Every chain of the queue by name (empty for a journal file: it has no queue)."""
    if not isinstance(journal.db, PgDb):
        return {}
    rows = journal.db.execute("SELECT chain, state, taken, error FROM chainer_queue").fetchall()
    return {r["chain"]: Entry(r["chain"], r["state"], int(r["taken"]), r["error"]) for r in rows}
