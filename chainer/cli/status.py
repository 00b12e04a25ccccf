"""`chainer status`: every chain in the journals, and what needs the user."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.table import Table

from .. import archive, errors
from ..journal import Journal
from .common import StateDir, app, fail, out

#: `chainer status` warns about results not archived this close to their deletion.
WARN_DAYS = 7


@app.command(short_help="List every chain: state, progress, what needs you.")
def status(
    state_dir: StateDir = Path(".chainer"),
) -> None:
    """List every chain in the journals: state, steps done, length so far, units spent, attention."""
    journals = sorted(state_dir.glob("journal-*.sqlite"))
    if not journals:
        out.print(f"No journal in {state_dir}: nothing has been run from here yet.", markup=False)
        return
    table = Table("chain", "provider", "state", "steps", "length", "units", box=None, pad_edge=False)
    table.add_column("needs", overflow="fold")
    attention = 0
    for path in journals:
        try:
            with Journal(path) as journal:
                for chain in journal.chains():
                    s = journal.summary(chain.name)
                    expiry = _expiry_note(journal, chain.name)
                    attention += s.state in ("failed", "needs attention") or bool(expiry)
                    if expiry:
                        s = dataclasses.replace(s, attention=f"{s.attention}; {expiry}".strip("; "))
                    table.add_row(
                        chain.name,
                        chain.provider,
                        s.state,
                        f"{s.steps_done}/{s.steps_total}",
                        f"{s.duration:g} s" if s.duration is not None else "-",
                        f"{s.units:g}",
                        s.attention,
                    )
        except errors.ChainerError as exc:
            raise fail(exc) from None
    out.print(table)
    if attention:
        raise typer.Exit(1)


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
