"""The journal on PostgreSQL: the schema, transactions and chain ownership of the SQLite
file, on a server that workers on several machines share (team mode).

The journal's SQL (chainer.journal) is written once; this backend translates only what
differs (placeholders, column types, the schema version's home). A chain is owned through
a lease: a row naming its owner and when it runs out, by the server's clock so machines'
clocks need not agree. A thread renews this process's leases every third of their length;
a process that dies (SIGKILL, power off) stops renewing, and once its leases have run out
another worker takes its chains over, reconciling exactly as a local resume does.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors

from ..errors import ChainLocked, ConfigError, JournalError

#: How long a lease lasts without renewal (s); CHAINER_LEASE_SECONDS overrides it.
DEFAULT_LEASE_S = 30.0
#: The server's clock, in seconds since the epoch (what every lease is measured by).
NOW = "extract(epoch from clock_timestamp())"

#: Tables of team mode beside the journal's own (made once, under the schema lock).
_TEAM_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS chainer_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # who owns a chain, until when (server clock)
    "CREATE TABLE IF NOT EXISTS chainer_leases ("
    " chain TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
    # chains submitted for any worker: queued until done, or stopped for the user
    "CREATE TABLE IF NOT EXISTS chainer_queue ("
    " chain TEXT PRIMARY KEY, state TEXT NOT NULL, submitted_at DOUBLE PRECISION NOT NULL,"
    " taken INTEGER NOT NULL DEFAULT 0, finished_at DOUBLE PRECISION, error TEXT,"
    " not_before DOUBLE PRECISION)",
    # an account's learned limit (chainer.scheduler's rules, shared by every worker)
    "CREATE TABLE IF NOT EXISTS chainer_accounts ("
    " account TEXT PRIMARY KEY, lim INTEGER NOT NULL, ceiling INTEGER NOT NULL,"
    " clean INTEGER NOT NULL DEFAULT 0, rejections INTEGER NOT NULL DEFAULT 0)",
    # the slots each chain holds on an account: tasks in flight, creates not yet answered
    "CREATE TABLE IF NOT EXISTS chainer_slots ("
    " account TEXT NOT NULL, chain TEXT NOT NULL, held INTEGER NOT NULL, pending INTEGER NOT NULL,"
    " PRIMARY KEY (account, chain))",
)

#: SQLite's column types as PostgreSQL spells them (REAL is 4 bytes there: too few for a time).
_TYPES = (
    (r"\bINTEGER PRIMARY KEY\b", "BIGSERIAL PRIMARY KEY"),
    (r"\bINTEGER\b", "BIGINT"),
    (r"\bREAL\b", "DOUBLE PRECISION"),
)


class Row(dict[str, Any]):
    """A result row read by name or by position, as sqlite3.Row is."""

    def __init__(self, names: Sequence[str], values: Sequence[Any]):
        super().__init__(zip(names, values, strict=True))
        self._values = tuple(values)

    def __getitem__(self, key: str | int) -> Any:
        return self._values[key] if isinstance(key, int) else super().__getitem__(key)


def _rows(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    return lambda values: Row(names, values)


def redact(url: str) -> str:
    """`url` without its password (for messages and the status line)."""
    return re.sub(r"(://[^:@/]*):[^@/]*@", r"\1:***@", url)


def lease_seconds() -> float:
    """The lease length in force: CHAINER_LEASE_SECONDS, else DEFAULT_LEASE_S."""
    raw = os.environ.get("CHAINER_LEASE_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        raise ConfigError(f"CHAINER_LEASE_SECONDS={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"CHAINER_LEASE_SECONDS={raw!r} must be above 0")
    return value


def _connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, row_factory=_rows, connect_timeout=10)
    except psycopg.Error as exc:
        raise JournalError(
            f"cannot reach the journal at {redact(url)}: {str(exc).strip()}; check the URL given to "
            "--journal (or CHAINER_JOURNAL) and that the server runs (nothing was sent)"
        ) from None


class PgDb:
    """One connection to a PostgreSQL journal, plus this process's chain leases."""

    in_memory = False
    shared = True
    folder: Path | None = None

    def __init__(self, url: str, *, lease_s: float | None = None):
        self.url = url
        self.where = redact(url)
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.conn = _connect(url)
        #: This process's name on its leases: unique even when a pid is reused.
        self.owner = f"pid {os.getpid()} on {socket.gethostname()} [{secrets.token_hex(3)}]"
        self.owned: set[str] = set()
        #: Chains whose lease another worker took while this one still ran them.
        self.lost: set[str] = set()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ the Database protocol

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run the journal's SQL: its `?` placeholders become psycopg's."""
        if params:
            sql = sql.replace("%", "%%").replace("?", "%s")
        try:
            return self.conn.execute(sql, tuple(params) if params else None)
        except psycopg.OperationalError as exc:
            raise JournalError(f"the journal at {self.where} stopped answering: {str(exc).strip()}") from exc

    @contextmanager
    def transaction(self) -> Iterator[PgDb]:
        with self.conn.transaction():
            yield self

    def ddl(self, statement: str) -> str:
        for pattern, replacement in _TYPES:
            statement = re.sub(pattern, replacement, statement)
        return statement

    def version(self) -> int:
        """The schema version (0: an empty database); takes the schema lock for the
        transaction, so workers starting at once migrate one after the other."""
        self.execute("SELECT pg_advisory_xact_lock(hashtext('chainer:schema'))")
        for statement in _TEAM_SCHEMA:
            self.execute(statement)
        row = self.execute("SELECT value FROM chainer_meta WHERE key = 'schema'").fetchone()
        return int(row["value"]) if row else 0

    def set_version(self, version: int) -> None:
        self.execute(
            "INSERT INTO chainer_meta (key, value) VALUES ('schema', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )

    def check(self) -> str:
        return "ok"  # the server keeps its own files whole

    def integrity_check(self) -> str:
        return self.check()

    def bind_provider(self, provider: str) -> None:
        """A journal on a server holds one provider's chains (as a journal file does): the
        first session names it; a session of another provider is refused."""
        with self.transaction():
            self.execute(
                "INSERT INTO chainer_meta (key, value) VALUES ('provider', ?) ON CONFLICT (key) DO NOTHING",
                (provider,),
            )
            row = self.execute("SELECT value FROM chainer_meta WHERE key = 'provider'").fetchone()
        assert row is not None
        if row["value"] != provider:
            raise ConfigError(
                f"the journal at {self.where} holds chains of the provider {row['value']!r}, and this "
                f"session reaches {provider!r}: set that provider's credentials, or use another database"
            )

    # ------------------------------------------------------------------ leases

    def lock_chain(self, name: str) -> None:
        """Own `name` by a lease; ChainLocked names the owner whose lease still runs. Taking
        over an expired lease forgets the slots the chain held (its new owner counts what it
        finds in flight, chainer.team.slots)."""
        with self.transaction():
            self.execute(
                f"INSERT INTO chainer_leases (chain, owner, expires_at) VALUES (?, ?, {NOW} - 1) "
                "ON CONFLICT (chain) DO NOTHING",
                (name, self.owner),
            )
            row = self.execute(
                f"SELECT owner, expires_at > {NOW} AS live FROM chainer_leases WHERE chain = ? FOR UPDATE",
                (name,),
            ).fetchone()
            assert row is not None  # inserted just above if it was missing
            if row["owner"] != self.owner and row["live"]:
                raise ChainLocked(
                    f"chain {name!r} is being run by {row['owner']} (a lease in {self.where}); wait for "
                    f"it to finish, or for its lease to run out ({self.lease_s:g} s after that worker stops)"
                )
            if name not in self.owned:
                self.execute("DELETE FROM chainer_slots WHERE chain = ?", (name,))
            self.execute(
                f"UPDATE chainer_leases SET owner = ?, expires_at = {NOW} + ? WHERE chain = ?",
                (self.owner, self.lease_s, name),
            )
        self.owned.add(name)
        self.lost.discard(name)
        self._start_renewing()

    def unlock_chain(self, name: str) -> None:
        if name in self.owned:
            self.owned.discard(name)
            self.execute("DELETE FROM chainer_leases WHERE chain = ? AND owner = ?", (name, self.owner))

    def lock_holder(self, name: str) -> str | None:
        if name in self.owned:
            return f"{self.owner} (this process)"
        row = self.execute(
            f"SELECT owner FROM chainer_leases WHERE chain = ? AND expires_at > {NOW}", (name,)
        ).fetchone()
        return str(row["owner"]) if row else None

    def _start_renewing(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(target=self._renew, name="chainer-leases", daemon=True)
            self._renewer.start()

    def _renew(self) -> None:
        """Renew every lease this process holds, every third of a lease, on a connection of
        its own (the event loop's may be busy). A lease missing from two renewals in a row
        was taken by another worker (once could be a lease being taken in a transaction not
        committed yet): it is noted in `lost`, and the worker stops running that chain."""
        conn: psycopg.Connection[Any] | None = None
        suspects: set[str] = set()
        while not self._stop.wait(self.lease_s / 3):
            try:
                conn = conn or _connect(self.url)
                before = set(self.owned)
                rows = conn.execute(
                    f"UPDATE chainer_leases SET expires_at = {NOW} + %s WHERE owner = %s RETURNING chain",
                    (self.lease_s, self.owner),
                ).fetchall()
                missed = before - {r["chain"] for r in rows}
                self.lost |= missed & suspects
                suspects = missed
            except (psycopg.Error, JournalError):
                conn = None  # the server is away: try again at the next turn
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Stop renewing and give every lease back (a clean stop frees its chains at once)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            if self.owned and not self.conn.closed:
                self.conn.execute("DELETE FROM chainer_leases WHERE owner = %s", (self.owner,))
        except psycopg.Error:
            pass  # the leases run out by themselves
        self.owned.clear()
        self.conn.close()
