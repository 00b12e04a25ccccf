"""The journal: what happened to every chain and step, durable across any crash.

SQLite in WAL mode with synchronous=FULL: a transition that returned is on disk. Each
transition is one `BEGIN IMMEDIATE` transaction that checks the step's current state, so
a step can only move along the state machine (chainer.chain.TRANSITIONS), and the engine
can always ask the journal where it stands instead of trusting memory.

`submit_intent` is committed with the step's external_task_id BEFORE the create request
is sent; `submitted` is committed with the provider's task_id the moment it is known.
A chain is owned by one process at a time through an flock the kernel drops on death.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, cast

from .chain import TRANSITIONS, ChainState, ChainView, StepRow, StepState
from .errors import ChainLocked, JournalError
from .rules import TaskKind

SCHEMA_VERSION = 5
#: The path that opens a journal held in memory (sqlite's own name for it).
IN_MEMORY = ":memory:"

#: Version 1, as first released. A new journal is this plus every migration, in order,
#: so the upgrade path is the path every journal takes.
_SCHEMA_V1 = """
CREATE TABLE chains (
    name            TEXT PRIMARY KEY,
    uid             TEXT NOT NULL,
    storyboard      TEXT NOT NULL,
    storyboard_sha  TEXT NOT NULL,
    provider        TEXT NOT NULL,
    model           TEXT NOT NULL,
    mode            TEXT NOT NULL,
    output          TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE TABLE steps (
    chain            TEXT NOT NULL REFERENCES chains(name),
    idx              INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    prompt           TEXT,
    fingerprint      TEXT NOT NULL,
    state            TEXT NOT NULL,
    external_task_id TEXT,
    task_id          TEXT,
    video_id         TEXT,
    video_url        TEXT,
    duration         REAL,
    units            REAL,
    remote_created_ms INTEGER,
    file             TEXT,
    probed_duration  REAL,
    sha256           TEXT,
    size             INTEGER,
    error            TEXT,
    updated_at       REAL NOT NULL,
    PRIMARY KEY (chain, idx, attempt)
);
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    chain    TEXT NOT NULL,
    idx      INTEGER,
    attempt  INTEGER,
    state    TEXT NOT NULL,
    detail   TEXT,
    at       REAL NOT NULL
);
"""

#: MIGRATIONS[n] takes a journal from version n to n + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # when the create was answered and when the task ended (wall clock), so a resumed
        # run knows a task's age and the chain's typical task time
        "ALTER TABLE steps ADD COLUMN submitted_at REAL",
        "ALTER TABLE steps ADD COLUMN finished_at REAL",
        # the chain's credit budget, if the storyboard or the command line set one
        "ALTER TABLE chains ADD COLUMN max_units REAL",
    ),
    2: (
        # an intermediate result deleted on purpose (keep: final) after the final one was verified
        "ALTER TABLE steps ADD COLUMN pruned_at REAL",
    ),
    3: (
        # the storyboard text the chain was started from (or last re-rolled with), so an
        # edited file can still be finished as it began
        "ALTER TABLE chains ADD COLUMN storyboard_text TEXT",
        # what chainer learned about a provider by watching it, e.g. whether it really finds
        # tasks by external_task_id (a profile's claim is only a default)
        "CREATE TABLE provider_facts ("
        " provider TEXT NOT NULL, base_url TEXT NOT NULL, fact TEXT NOT NULL, value TEXT NOT NULL,"
        " evidence TEXT, at REAL NOT NULL, PRIMARY KEY (provider, base_url, fact))",
    ),
    4: (
        # the provider profile the chain's storyboard names (the provider column is the
        # client's name for it, "simulator-NAME" when the simulator imitated it)
        "ALTER TABLE chains ADD COLUMN profile TEXT",
        # older chains: the profile as the provider name spelled it
        "UPDATE chains SET profile = CASE WHEN provider = 'simulator' THEN 'kling' "
        "WHEN provider LIKE 'simulator-%' THEN substr(provider, 11) ELSE provider END",
    ),
}

_STEP_FIELDS = (
    "external_task_id",
    "task_id",
    "video_id",
    "video_url",
    "duration",
    "units",
    "remote_created_ms",
    "file",
    "probed_duration",
    "sha256",
    "size",
    "error",
    "submitted_at",
    "finished_at",
)


@dataclass(frozen=True)
class ChainRow:
    name: str
    uid: str
    storyboard: str
    storyboard_sha: str
    provider: str
    model: str
    mode: str
    output: str
    state: str
    max_units: float | None
    #: The storyboard text as the chain was started (None in journals older than schema 4).
    storyboard_text: str | None = None
    #: The provider profile its storyboard names (chainer.profiles), e.g. "kling".
    profile: str = "kling"


@dataclass(frozen=True)
class ProviderFact:
    """Something chainer saw a provider do (see Journal.fact)."""

    value: str
    evidence: str | None
    at: float


_CHAIN_COLUMNS = (
    "name, uid, storyboard, storyboard_sha, provider, model, mode, output, state, max_units, "
    "storyboard_text, profile"
)


@dataclass(frozen=True)
class ChainSummary:
    chain: ChainRow
    state: ChainState
    steps_done: int
    steps_total: int
    duration: float | None
    units: float
    attention: str


_PROC_LOCKS = Path("/proc/locks")


def _flock_held(st: os.stat_result) -> bool:
    """Whether the kernel's lock table lists a granted flock on the file `st` describes."""
    for line in _PROC_LOCKS.read_text().splitlines():
        fields = line.split()
        if "->" in fields or "FLOCK" not in fields:
            continue  # "->": a waiter, not a holder
        dev_ino = next((f for f in fields if f.count(":") == 2), "")
        major, minor, ino = dev_ino.split(":") if dev_ino else ("0", "0", "-1")
        if (int(major, 16), int(minor, 16), int(ino)) == (
            os.major(st.st_dev),
            os.minor(st.st_dev),
            st.st_ino,
        ):
            return True
    return False


def _pid_alive(written: str) -> bool:
    """Whether the "pid N on HOST" an owner wrote names a live process of this host."""
    parts = written.split()
    if len(parts) != 4 or parts[0] != "pid" or not parts[1].isdigit():
        return False
    if parts[3] != socket.gethostname():
        return True  # another machine's process: nothing here can tell, so assume it runs
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Database(Protocol):
    """What the journal needs of the engine that keeps it: SQLite here (the embedded
    default), PostgreSQL for a team (chainer.team.database). The SQL is the journal's,
    written once in the dialect both accept; a backend translates only what differs."""

    #: The file, or the server's URL without its password: for messages.
    where: str
    #: The folder a journal file lives in (None for a server).
    folder: Path | None
    #: Lives in this process only (engine tests): no file, no locks.
    in_memory: bool
    #: Shared by processes on several machines (a server): team mode's queue and slots.
    shared: bool

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

    def ddl(self, statement: str) -> str: ...

    def version(self) -> int: ...

    def set_version(self, version: int) -> None: ...

    def check(self) -> str: ...

    def integrity_check(self) -> str: ...

    def lock_chain(self, name: str) -> None: ...

    def unlock_chain(self, name: str) -> None: ...

    def lock_holder(self, name: str) -> str | None: ...

    def close(self) -> None: ...


class SqliteDb:
    """A journal file: SQLite in WAL mode, synchronous=FULL, BEGIN IMMEDIATE per transaction;
    a chain is owned through an flock the kernel drops when its process dies."""

    folder: Path | None
    shared = False

    def __init__(self, path: str | os.PathLike[str]):
        self.in_memory = str(path) == IN_MEMORY
        self.path = Path(path)
        self.where = str(path)
        self.folder = None if self.in_memory else self.path.parent
        if not self.in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"the journal {self.path} cannot be opened: {exc}") from exc
        self._locks: dict[str, int] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[SqliteDb]:
        """One BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def ddl(self, statement: str) -> str:
        return statement  # the schema is written in SQLite's words

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def set_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")

    def check(self) -> str:
        return str(self.db.execute("PRAGMA quick_check").fetchone()[0])

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        for fd in self._locks.values():
            if fd >= 0:
                os.close(fd)
        self._locks.clear()
        self.db.close()

    def _lock_file(self, name: str) -> Path:
        return self.path.parent / "locks" / f"{name}.lock"

    def lock_holder(self, name: str) -> str | None:
        """Which process owns `name` now ("pid N on HOST"), or None when no process does.

        Asked without touching the lock (a probe that took it, even shared and for a moment,
        could make a starting run refuse the chain): the kernel's lock table where there is
        one (Linux), else whether the pid the owner wrote is alive. A killed owner's lock is
        gone with it, so its leftover lock file reads as not held."""
        if name in self._locks:
            return f"pid {os.getpid()} on {socket.gethostname()} (this process)"
        path = self._lock_file(name)
        try:
            written = path.read_text(errors="replace").strip()
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        held = _flock_held(st) if _PROC_LOCKS.exists() else _pid_alive(written)
        return (written or "another process") if held else None

    def lock_chain(self, name: str) -> None:
        """Own `name` until close(); ChainLocked says which process holds it otherwise."""
        if name in self._locks:
            return
        if self.in_memory:  # nothing outside this process can see the journal
            self._locks[name] = -1
            return
        self._lock_file(name).parent.mkdir(exist_ok=True)
        fd = os.open(self._lock_file(name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ChainLocked(
                f"chain {name!r} is being run by {holder}; wait for it to finish or stop it first"
            ) from None
        # overwritten in place, padded over a longer old text: truncating a written file costs
        # a journal commit on some file systems (a resume takes hundreds of locks)
        mine = f"pid {os.getpid()} on {socket.gethostname()}".encode()
        os.pwrite(fd, mine.ljust(os.fstat(fd).st_size, b" "), 0)
        self._locks[name] = fd

    def unlock_chain(self, name: str) -> None:
        fd = self._locks.pop(name, -1)
        if fd >= 0:
            os.close(fd)


def is_database_url(location: str | os.PathLike[str]) -> bool:
    """Whether `location` names a PostgreSQL server rather than a journal file."""
    return str(location).startswith(("postgresql://", "postgres://"))


def open_database(location: str | os.PathLike[str]) -> Database:
    """The backend for `location`: a PostgreSQL URL, else a SQLite file (or IN_MEMORY)."""
    if is_database_url(location):
        from .team.database import PgDb

        return PgDb(str(location))
    return SqliteDb(location)


class _Store:
    """The journal's database (chainer.journal.Database): schema migrations, transactions
    and the chain locks, the same whichever engine keeps it."""

    def __init__(self, location: str | os.PathLike[str]):
        self.db: Database = open_database(location)
        self.in_memory = self.db.in_memory
        #: The journal file, or the server's URL without its password: for messages.
        self.where = self.db.where
        #: The folder a journal file lives in (None for a server).
        self.folder = self.db.folder
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise JournalError(f"the journal {self.where} cannot be opened: {exc}") from exc
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.db.version()
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal {self.where} was written by a newer chainer (schema {version}); "
                    "upgrade chainer"
                )
            if version == 0:
                # one statement at a time: executescript() would COMMIT our transaction
                for statement in filter(str.strip, _SCHEMA_V1.split(";")):
                    self.db.execute(self.db.ddl(statement))
                version = 1
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    self.db.execute(self.db.ddl(statement))
                version += 1
            self.db.set_version(SCHEMA_VERSION)
        problem = self.db.check()
        if problem != "ok":
            raise JournalError(
                f"the journal {self.where} is damaged ({problem}); keep a copy of it and of the "
                "archive folder, then ask for help before running again"
            )

    def integrity_check(self) -> str:
        """The engine's own full check of the journal ("ok" when nothing is wrong)."""
        return self.db.integrity_check()

    def transaction(self) -> AbstractContextManager[Any]:
        """One transaction (SQLite: BEGIN IMMEDIATE); rolled back on any exception."""
        return self.db.transaction()

    def lock_holder(self, name: str) -> str | None:
        """Which process owns `name` now, or None when none does (see the backend's)."""
        return self.db.lock_holder(name)

    def lock_chain(self, name: str) -> None:
        """Own `name` until close() or unlock_chain(); ChainLocked names its owner otherwise."""
        self.db.lock_chain(name)

    def unlock_chain(self, name: str) -> None:
        """Let another process take `name` (its run here has ended)."""
        self.db.unlock_chain(name)


class _Reads(_Store):
    """Everything the journal can be asked (no writes)."""

    def chain(self, name: str) -> ChainRow | None:
        row = self.db.execute(f"SELECT {_CHAIN_COLUMNS} FROM chains WHERE name = ?", (name,)).fetchone()
        return ChainRow(**dict(row)) if row else None

    def chains(self) -> list[ChainRow]:
        rows = self.db.execute(f"SELECT {_CHAIN_COLUMNS} FROM chains ORDER BY name").fetchall()
        return [ChainRow(**dict(r)) for r in rows]

    def view(self, name: str) -> ChainView:
        """Chain `name`'s rows as the chain model reads them (chainer.chain)."""
        chain = self.chain(name)
        return ChainView.of(
            self.steps(name), self.takes(name), written=chain is not None and chain.state == "done"
        )

    def summary(self, name: str) -> ChainSummary:
        """Where a chain stands, derived from its steps (chainer.chain)."""
        chain = self.chain(name)
        if chain is None:
            raise JournalError(f"no chain named {name!r} in {self.where}")
        view = self.view(name)
        attention = view.attention(name, chain.output, output_exists=Path(chain.output).exists())
        return ChainSummary(
            chain, view.state(), view.steps_done(), view.steps_total(), view.length(), view.units(), attention
        )

    def last_events(self) -> dict[str, float]:
        """Each chain's newest journal event (wall clock, s)."""
        rows = self.db.execute("SELECT chain, max(at) FROM events GROUP BY chain").fetchall()
        return {r[0]: r[1] for r in rows}

    def fact(self, provider: str, base_url: str, name: str) -> ProviderFact | None:
        """What was last seen of `provider` at `base_url` about `name`, if anything."""
        row = self.db.execute(
            "SELECT value, evidence, at FROM provider_facts WHERE provider = ? AND base_url = ? AND fact = ?",
            (provider, base_url, name),
        ).fetchone()
        return ProviderFact(row["value"], row["evidence"], row["at"]) if row else None

    def held_task_ids(self) -> set[str]:
        """Every task id any step of any chain of this journal holds (all attempts)."""
        rows = self.db.execute("SELECT task_id FROM steps WHERE task_id IS NOT NULL").fetchall()
        return {r[0] for r in rows}

    def holder(self, task_id: str) -> StepRow | None:
        """The step (any attempt) that holds `task_id`, if one does."""
        row = self.db.execute("SELECT * FROM steps WHERE task_id = ? LIMIT 1", (task_id,)).fetchone()
        return self._row(row) if row else None

    def units(self, chain: str) -> float:
        """Units the provider reported for every attempt of every step of `chain` (the chain
        model's count: chainer.chain.ChainView.units)."""
        return ChainView.of(self.steps(chain), self.takes(chain)).units()

    def task_times(self, chain: str, kind: str, *, last: int) -> list[float]:
        """How long (s) the `last` newest ended tasks of `kind` in `chain` took, newest first."""
        rows = self.db.execute(
            "SELECT finished_at - submitted_at FROM steps WHERE chain = ? AND kind = ? AND "
            "finished_at IS NOT NULL AND submitted_at IS NOT NULL ORDER BY idx DESC, attempt DESC LIMIT ?",
            (chain, kind, last),
        ).fetchall()
        return [float(r[0]) for r in rows if r[0] and r[0] > 0]

    def latest_created_task(self) -> tuple[TaskKind, str, str] | None:
        """(kind, task_id, external_task_id) of the newest task this journal created, if any."""
        row = self.db.execute(
            "SELECT kind, task_id, external_task_id FROM steps WHERE task_id IS NOT NULL AND "
            "external_task_id IS NOT NULL AND kind != 'existing' ORDER BY submitted_at DESC LIMIT 1"
        ).fetchone()
        return (cast(TaskKind, row["kind"]), row["task_id"], row["external_task_id"]) if row else None

    def steps(self, chain: str) -> list[StepRow]:
        """The current (latest) attempt of every step of `chain`, in order."""
        rows = self.db.execute(
            "SELECT * FROM steps s WHERE chain = ? AND attempt = "
            "(SELECT MAX(attempt) FROM steps WHERE chain = s.chain AND idx = s.idx) ORDER BY idx",
            (chain,),
        ).fetchall()
        return [self._row(r) for r in rows]

    def takes(self, chain: str) -> list[StepRow]:
        """Every attempt of every step that is not the current one (earlier takes), in order."""
        rows = self.db.execute(
            "SELECT * FROM steps s WHERE chain = ? AND attempt < "
            "(SELECT MAX(attempt) FROM steps WHERE chain = s.chain AND idx = s.idx) ORDER BY idx, attempt",
            (chain,),
        ).fetchall()
        return [self._row(r) for r in rows]

    def step(self, chain: str, idx: int) -> StepRow:
        row = self.db.execute(
            "SELECT * FROM steps WHERE chain = ? AND idx = ? ORDER BY attempt DESC LIMIT 1", (chain, idx)
        ).fetchone()
        if row is None:
            raise JournalError(f"chain {chain!r} has no step {idx}")
        return self._row(row)

    @staticmethod
    def _row(row: Any) -> StepRow:
        data = {k: row[k] for k in row.keys() if k != "updated_at"}  # noqa: SIM118 (a row, not a dict)
        return StepRow(**data)

    def intent_time(self, step: StepRow) -> float | None:
        """When `step`'s current attempt first committed submit_intent (wall clock)."""
        row = self.db.execute(
            "SELECT MIN(at) FROM events "
            "WHERE chain = ? AND idx = ? AND attempt = ? AND state = 'submit_intent'",
            (step.chain, step.idx, step.attempt),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None


class Journal(_Reads):
    """One SQLite journal file; use as a context manager or call close()."""

    def ensure_chain(
        self,
        *,
        name: str,
        storyboard: str,
        storyboard_sha: str,
        provider: str,
        model: str,
        mode: str,
        output: str,
        steps: Sequence[tuple[int, str, str | None, str]],
        storyboard_text: str | None = None,
        profile: str = "kling",
    ) -> ChainRow:
        """Create the chain and its planned steps once; later calls return it unchanged
        (but for the storyboard text of a chain from a journal that did not keep it)."""
        known = self.chain(name)
        if known is not None and (storyboard_text is None or known.storyboard_text is not None):
            return known  # the common resume: no write, so no write lock to wait for
        now = time.time()
        with self.transaction() as db:
            if self.chain(name) is None:
                uid = os.urandom(6).hex()
                db.execute(
                    "INSERT INTO chains (name, uid, storyboard, storyboard_sha, provider, model, mode, "
                    "output, state, created_at, updated_at, storyboard_text, profile) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        name,
                        uid,
                        storyboard,
                        storyboard_sha,
                        provider,
                        model,
                        mode,
                        output,
                        "running",
                        now,
                        now,
                        storyboard_text,
                        profile,
                    ),
                )
                for idx, kind, prompt, fingerprint in steps:
                    db.execute(
                        "INSERT INTO steps (chain, idx, attempt, kind, prompt, fingerprint, state, "
                        "updated_at) VALUES (?,?,?,?,?,?,?,?)",
                        (name, idx, 1, kind, prompt, fingerprint, "planned", now),
                    )
                    db.execute(
                        "INSERT INTO events (chain, idx, attempt, state, at) VALUES (?,?,?,?,?)",
                        (name, idx, 1, "planned", now),
                    )
            elif storyboard_text is not None:
                db.execute(
                    "UPDATE chains SET storyboard_text = ? WHERE name = ? AND storyboard_text IS NULL "
                    "AND storyboard_sha = ?",
                    (storyboard_text, name, storyboard_sha),
                )
        chain = self.chain(name)
        assert chain is not None
        return chain

    def set_max_units(self, name: str, max_units: float | None) -> None:
        """Record the chain's budget (None: no budget); no write when it is already that
        (a resume of a thousand chains would otherwise pay a thousand synchronous commits)."""
        chain = self.chain(name)
        if chain is not None and chain.max_units == max_units:
            return
        with self.transaction() as db:
            db.execute("UPDATE chains SET max_units = ? WHERE name = ?", (max_units, name))

    def set_chain_state(self, name: str, state: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE chains SET state = ?, updated_at = ? WHERE name = ?", (state, time.time(), name)
            )
            db.execute(
                "INSERT INTO events (chain, state, at) VALUES (?,?,?)", (name, f"chain:{state}", time.time())
            )

    def set_fact(self, provider: str, base_url: str, name: str, value: str, evidence: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO provider_facts (provider, base_url, fact, value, evidence, at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (provider, base_url, fact) DO UPDATE SET "
                "value = excluded.value, evidence = excluded.evidence, at = excluded.at",
                (provider, base_url, name, value, evidence, time.time()),
            )

    def refresh_url(self, step: StepRow, url: str) -> StepRow:
        """Remember a newly signed url of `step`'s video (the provider re-signs on every
        query; the old one expires). Nothing else about the step changes."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE steps SET video_url = ?, updated_at = ? WHERE chain = ? AND idx = ? AND attempt = ?",
                (url, now, step.chain, step.idx, step.attempt),
            )
        return self.step(step.chain, step.idx)

    def relocate(self, step: StepRow, file: str) -> StepRow:
        """Record that `step`'s verified file now lives at `file` (restored on this machine
        from the archive mirror); its size and sha256 stay as they were checked."""
        return self._annotate(step, "file", file, "relocated", file)

    def mark_pruned(self, step: StepRow) -> StepRow:
        """Record that `step`'s archived file was deleted on purpose (keep: final)."""
        return self._annotate(step, "pruned_at", time.time(), "pruned", step.file)

    def _annotate(self, step: StepRow, column: str, value: object, event: str, detail: object) -> StepRow:
        """Set one column of `step`'s current attempt, with an event saying why; its state
        stays as it is."""
        if column not in ("file", "pruned_at"):
            raise ValueError(f"not a column to annotate: {column}")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                f"UPDATE steps SET {column} = ?, updated_at = ? WHERE chain = ? AND idx = ? AND attempt = ?",
                (value, now, step.chain, step.idx, step.attempt),
            )
            db.execute(
                "INSERT INTO events (chain, idx, attempt, state, detail, at) VALUES (?,?,?,?,?,?)",
                (step.chain, step.idx, step.attempt, event, json.dumps(detail), now),
            )
        return self.step(step.chain, step.idx)

    def replan(
        self,
        chain: str,
        from_idx: int,
        steps: Sequence[tuple[int, str, str | None, str]],
        storyboard_sha: str,
        storyboard_text: str | None,
    ) -> None:
        """Take an edited storyboard's steps from `from_idx` on, where none of them was ever
        sent (each is `planned`): rewritten in place, new ones added, dropped ones skipped."""
        now = time.time()
        current = {r.idx: r for r in self.steps(chain)}
        if any(r.state != "planned" for i, r in current.items() if i >= from_idx):
            raise JournalError(f"chain {chain!r}: a step from {from_idx} on was already sent")
        wanted = {idx: (kind, prompt, fp) for idx, kind, prompt, fp in steps if idx >= from_idx}
        detail = json.dumps("storyboard edited before this step was sent")
        with self.transaction() as db:
            for idx in sorted(set(wanted) | {i for i in current if i >= from_idx}):
                old = current.get(idx)
                if idx not in wanted:
                    assert old is not None
                    db.execute(
                        "UPDATE steps SET state = 'skipped', updated_at = ? "
                        "WHERE chain = ? AND idx = ? AND attempt = ?",
                        (now, chain, idx, old.attempt),
                    )
                elif old is not None:
                    db.execute(
                        "UPDATE steps SET kind = ?, prompt = ?, fingerprint = ?, updated_at = ? "
                        "WHERE chain = ? AND idx = ? AND attempt = ?",
                        (*wanted[idx], now, chain, idx, old.attempt),
                    )
                else:
                    db.execute(
                        "INSERT INTO steps (chain, idx, attempt, kind, prompt, fingerprint, state, "
                        "updated_at) VALUES (?,?,1,?,?,?,'planned',?)",
                        (chain, idx, *wanted[idx], now),
                    )
                db.execute(
                    "INSERT INTO events (chain, idx, attempt, state, detail, at) VALUES (?,?,?,?,?,?)",
                    (chain, idx, old.attempt if old else 1, "replanned", detail, now),
                )
            db.execute(
                "UPDATE chains SET storyboard_sha = ?, storyboard_text = COALESCE(?, storyboard_text), "
                "state = 'running', updated_at = ? WHERE name = ?",
                (storyboard_sha, storyboard_text, now, chain),
            )

    def reroll(
        self,
        chain: str,
        from_idx: int,
        steps: Sequence[tuple[int, str, str | None, str]],
        storyboard_sha: str,
        storyboard_text: str | None = None,
    ) -> None:
        """Start a new take of every step from `from_idx` on: (idx, kind, prompt, fingerprint)
        for the steps the plan now has; a step the plan no longer has gets a skipped take.
        The earlier takes stay as they are, files and all."""
        now = time.time()
        detail = json.dumps(f"re-roll from step {from_idx}")
        current = {r.idx: r for r in self.steps(chain)}
        wanted = {idx: (kind, prompt, fp) for idx, kind, prompt, fp in steps if idx >= from_idx}
        with self.transaction() as db:
            for idx in sorted(set(wanted) | {i for i in current if i >= from_idx}):
                old = current.get(idx)
                kind, prompt, fp = wanted.get(idx) or (old.kind, old.prompt, old.fingerprint)  # type: ignore[union-attr]
                state = "planned" if idx in wanted else "skipped"
                attempt = old.attempt + 1 if old else 1
                db.execute(
                    "INSERT INTO steps (chain, idx, attempt, kind, prompt, fingerprint, state, updated_at) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (chain, idx, attempt, kind, prompt, fp, state, now),
                )
                db.execute(
                    "INSERT INTO events (chain, idx, attempt, state, detail, at) VALUES (?,?,?,?,?,?)",
                    (chain, idx, attempt, state, detail, now),
                )
            db.execute(
                "UPDATE chains SET storyboard_sha = ?, storyboard_text = COALESCE(?, storyboard_text), "
                "state = 'running', updated_at = ? WHERE name = ?",
                (storyboard_sha, storyboard_text, now, chain),
            )

    def adopt(self, step: StepRow, task_id: str, *, external_task_id: str, submitted_at: float) -> StepRow:
        """Attach an existing task to `step` (planned, submit_intent, submit_unknown or failed):
        the step becomes `submitted` with that task, as if its own create had been answered."""
        if step.state == "failed":
            step = self.new_attempt(step, f"adopting task {task_id}")
        if step.state == "planned":
            step = self.transition(
                step, "submit_intent", f"adopting task {task_id}", external_task_id=external_task_id
            )
        return self.transition(
            step, "submitted", f"adopted task {task_id}", task_id=task_id, submitted_at=submitted_at
        )

    def new_attempt(self, step: StepRow, detail: str) -> StepRow:
        """Start attempt n+1 of a failed step: planned again, so it gets a new external_task_id."""
        if step.state != "failed":
            raise JournalError(f"step {step.idx} of {step.chain!r} is {step.state}, not failed")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO steps (chain, idx, attempt, kind, prompt, fingerprint, state, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    step.chain,
                    step.idx,
                    step.attempt + 1,
                    step.kind,
                    step.prompt,
                    step.fingerprint,
                    "planned",
                    now,
                ),
            )
            db.execute(
                "INSERT INTO events (chain, idx, attempt, state, detail, at) VALUES (?,?,?,?,?,?)",
                (step.chain, step.idx, step.attempt + 1, "planned", json.dumps(detail), now),
            )
        return self.step(step.chain, step.idx)

    def transition(self, step: StepRow, to: StepState, detail: str | None = None, **fields: Any) -> StepRow:
        """Move `step` to `to`, setting `fields`, if (and only if) it is still where it was."""
        unknown = set(fields) - set(_STEP_FIELDS)
        if unknown:
            raise ValueError(f"unknown step fields: {sorted(unknown)}")
        if to not in TRANSITIONS[step.state]:
            raise JournalError(f"step {step.idx} of {step.chain!r} cannot go from {step.state} to {to}")
        now = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE steps SET state = ?, updated_at = ?{', ' + sets if sets else ''} "
                "WHERE chain = ? AND idx = ? AND attempt = ? AND state = ?",
                (to, now, *fields.values(), step.chain, step.idx, step.attempt, step.state),
            )
            if cur.rowcount != 1:
                raise JournalError(
                    f"step {step.idx} of {step.chain!r} changed under us (expected {step.state})"
                )
            db.execute(
                "INSERT INTO events (chain, idx, attempt, state, detail, at) VALUES (?,?,?,?,?,?)",
                (
                    step.chain,
                    step.idx,
                    step.attempt,
                    to,
                    json.dumps(detail if detail is not None else None),
                    now,
                ),
            )
        return self.step(step.chain, step.idx)
