"""`chainer status`: every chain in the journals, and what needs the user."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table

from .. import archive, errors
from ..chain import Liveness, liveness
from ..journal import Journal
from .common import JournalUrl, StateDir, app, fail, journal_url, out

#: `chainer status` warns about results not archived this close to their deletion.
WARN_DAYS = 7


@app.command(short_help="List every chain: state, progress, what needs you.")
def status(
    state_dir: StateDir = Path(".chainer"),
    journal: JournalUrl = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per chain instead of a table.")
    ] = False,
) -> None:
    """List every chain in the journals: running, stalled, interrupted, done, failed or
    needing attention; steps done, length, units, the last event and what needs you.

    Exits 1 while something needs you (a failed, stalled or interrupted chain, a lost
    answer, a result close to deletion)."""
    try:
        url = journal_url(journal)
    except errors.ChainerError as exc:
        raise fail(exc) from None
    journals: list[Path | str] = [url] if url else sorted(state_dir.glob("journal-*.sqlite"))
    if not journals:
        out.print(f"No journal in {state_dir}: nothing has been run from here yet.", markup=False)
        return
    try:
        rows = [row for path in journals for row in _rows(path)]
    except errors.ChainerError as exc:
        raise fail(exc) from None
    if as_json:
        for row in rows:
            print(row.model_dump_json())
    else:
        _print_table(rows)
    if any(row.needs for row in rows):
        raise typer.Exit(1)


class ChainStatus(BaseModel):
    """One chain as `chainer status` shows it; `--json` prints one of these per line."""

    chain: str
    provider: str
    state: Liveness
    steps_done: int
    steps_total: int
    length_s: float | None
    units: float
    #: "pid N on HOST" of the process that runs the chain now, if one does.
    held_by: str | None
    #: The chain's newest journal event (Unix time, s).
    last_event_at: float | None
    #: What needs the user ("" when nothing); status exits 1 when any chain has something.
    needs: str
    journal: str


def _rows(path: Path | str) -> list[ChainStatus]:
    """One journal's chains as status shows them (also its --json objects)."""
    now = time.time()
    rows = []
    with Journal(path) as journal:
        last = journal.last_events()
        queued = _queue_entries(journal)
        for chain in journal.chains():
            s = journal.summary(chain.name)
            holder = journal.lock_holder(chain.name)
            at = last.get(chain.name)
            entry = queued.get(chain.name)
            state = liveness(
                s.state,
                held=holder is not None,
                idle_s=None if at is None else now - at,
                queued=entry is not None and entry.state == "queued",
            )
            needs = [s.attention, _expiry_note(journal, chain.name), _liveness_note(state, holder, at, now)]
            if entry is not None and entry.state == "stopped" and s.state != "done":
                needs.append(f"a worker stopped it ({entry.error}); `chainer submit` it again when mended")
            rows.append(
                ChainStatus(
                    chain=chain.name,
                    provider=chain.provider,
                    state=state,
                    steps_done=s.steps_done,
                    steps_total=s.steps_total,
                    length_s=s.duration,
                    units=s.units,
                    held_by=holder,
                    last_event_at=at,
                    needs="; ".join(n for n in needs if n),
                    journal=journal.where,
                )
            )
    return rows


def _queue_entries(journal: Journal) -> dict[str, Any]:
    """A team's queue by chain (none for a journal file: no PostgreSQL driver is loaded)."""
    if not journal.db.shared:
        return {}
    from ..team import queue

    return dict(queue.entries(journal))


def _liveness_note(state: Liveness, holder: str | None, at: float | None, now: float) -> str:
    match state:
        case "interrupted":
            return "no process runs it: `chainer resume` goes on where it stopped (nothing is paid twice)"
        case "stalled":
            idle = _ago(at, now)
            return (
                f"no event for {idle} while {holder} holds it: a task may be queued long at the "
                "provider, or the process hangs (stop it, then `chainer resume`)"
            )
        case "running" | "queued" | "done" | "failed" | "needs attention":
            return ""


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    s = max(0, int(now - at))
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def _print_table(rows: list[ChainStatus]) -> None:
    now = time.time()
    table = Table(
        "chain", "provider", "state", "steps", "length", "units", "last event", box=None, pad_edge=False
    )
    table.add_column("needs / held by", overflow="fold")
    for row in rows:
        table.add_row(
            row.chain,
            row.provider,
            row.state,
            f"{row.steps_done}/{row.steps_total}",
            f"{row.length_s:g} s" if row.length_s is not None else "-",
            f"{row.units:g}",
            f"{_ago(row.last_event_at, now)} ago" if row.last_event_at else "-",
            row.needs or (f"run by {row.held_by}" if row.held_by else ""),
        )
    out.print(table)


def _expiry_note(journal: Journal, name: str) -> str:
    """A warning for results not archived yet: when the provider deletes them (or did)."""
    notes = []
    for row in journal.steps(name):
        if row.state != "succeeded" or row.kind == "existing":
            continue
        left = archive.time_left(row.remote_created_ms)
        if left is None:
            continue
        if left.total_seconds() < 0:
            notes.append(
                f"step {row.idx}: not archived and deleted by the provider on "
                f"{archive.expires_at(row.remote_created_ms):%Y-%m-%d}; make it again with "
                f"`chainer run STORYBOARD --from-step {row.idx}` (--from-last-frame if step {row.idx - 1}'s "
                "video is gone too)"
            )
        elif left.days < WARN_DAYS:
            notes.append(
                f"step {row.idx}: not archived, deleted in {left.days} d {left.seconds // 3600} h; "
                "run `chainer archive`"
            )
        else:
            notes.append(f"step {row.idx}: not archived yet ({left.days} days left)")
    return "; ".join(notes)
