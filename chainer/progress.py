"""What a run shows while it works and when it ends.

Four ways to show events: `live` (a terminal: one line per active chain and a bar for
the whole batch with an ETA), `plain` (log lines, for files and CI), `json` (one JSON
object per event, for scripts), `quiet` (nothing until the summary). The summary is a
table for people and a JSON file for machines.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from rich.table import Table

from .archive import write_atomically
from .chain import label
from .events import ChainResult, Event
from .plan import Plan

Mode = Literal["live", "plain", "json", "quiet"]

#: Events the live view also prints above itself: the user must see them, not just a state.
LOUD = {"retry", "warning", "failed", "submit_unknown"}
#: Events a plain (non-verbose) log keeps; the others are moment-to-moment detail.
MILESTONES = {
    "submitted",
    "succeeded",
    "failed",
    "skipped",
    "done",
    "submit_unknown",
    "retrying",
    "retry",
    "re-downloading",
    "re-roll",
    "joined",
    "restored",
    "warning",
}


@dataclasses.dataclass
class _Chain:
    steps: int
    step: int = 0
    state: str = "queued"
    seconds: float | None = None
    units: float = 0.0
    started: float | None = None
    finished: float | None = None
    #: What a waiting chain waits for ("for a free slot on the account (5/5 in use)").
    note: str = ""


class Progress:
    """Receives runner events and shows them in the chosen way. Use as a context manager."""

    def __init__(self, plans: list[Plan], mode: Mode, console: Console, *, verbose: bool = False):
        self.mode = mode
        self.console = console
        self.verbose = verbose
        self.started = time.monotonic()
        self.chains = {p.chain: _Chain(steps=len(p.steps)) for p in plans}
        self._bar = Bar(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("{task.fields[units]:g} units"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._bar.add_task("steps", total=sum(c.steps for c in self.chains.values()), units=0.0)
        #: Units of every chain, kept as events arrive (a batch has thousands of chains).
        self._units = 0.0
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.mode == "live":
            # rendered at rich's refresh rate, not once per event: a batch sends thousands
            self._live = Live(
                console=self.console, get_renderable=self._render, refresh_per_second=4, transient=True
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def on_event(self, event: Event) -> None:
        chain = self.chains.setdefault(event.chain, _Chain(steps=event.steps + 1))
        self._units += event.units - chain.units
        chain.step, chain.state, chain.units = event.step, event.state, event.units
        chain.note = event.message if event.state == "waiting" else ""
        chain.started = chain.started or time.monotonic()
        if event.total_seconds is not None:
            chain.seconds = event.total_seconds
        if event.state in ("downloaded", "skipped"):
            self._bar.advance(self._task)
        self._bar.update(self._task, units=round(self._units, 6))
        if event.state in ("done", "failed"):
            chain.finished = time.monotonic()
        match self.mode:
            case "json":
                self._json(dataclasses.asdict(event))
            case "plain":
                if self.verbose or event.state in MILESTONES:
                    self.console.print(_line(event), markup=False, soft_wrap=True)
            case "live":
                if self.verbose or event.state in LOUD:
                    self.console.print(_line(event), markup=False, soft_wrap=True)
            case "quiet":
                pass

    def finish(self, results: list[ChainResult]) -> None:
        """The run is over: `--json` ends with one `summary` event (what last-run.json holds)."""
        if self.mode == "json":
            self._json({"chain": None, "state": "summary", **summary_data(results)})

    def _json(self, data: dict[str, Any]) -> None:
        line = json.dumps({"at": round(time.time(), 3), **data})
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _render(self) -> Group:
        """Chains at work first, then finished ones (most recent first): as many as fit."""
        table = Table("chain", "step", "length", "state", "elapsed", "units", box=None, pad_edge=False)
        now = time.monotonic()
        started = [(n, c) for n, c in self.chains.items() if c.started is not None]
        working = [(n, c) for n, c in started if c.finished is None]
        finished = sorted(
            (x for x in started if x[1].finished is not None), key=lambda x: -(x[1].finished or 0)
        )
        room = max(3, (self.console.height or 24) - 6)
        for name, c in [*working, *finished][:room]:
            table.add_row(
                name,
                f"{c.step}/{c.steps - 1}",
                seconds(c.seconds),
                f"{c.state} {c.note}".strip(),
                f"{(c.finished or now) - c.started:.0f} s" if c.started is not None else "-",
                f"{c.units:g}",
            )
        hidden = len(working) + len(finished) - room
        if hidden > 0:
            table.add_row(f"... {hidden} more", "", "", "", "", "")
        return Group(table, self._bar)


def seconds(value: float | None) -> str:
    """A length as people read it: one decimal ("14.7 s"), "-" when not known yet."""
    return f"{value:.1f} s" if value is not None else "-"


def _line(event: Event) -> str:
    """A plain log line: local time, chain, step, state, length so far, message."""
    total = f" ({seconds(event.total_seconds)})" if event.total_seconds is not None else ""
    label = "start" if event.step == 0 else f"segment {event.step}/{event.steps}"
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp} [{event.chain}] {label}: {event.state}{total} {event.message}".rstrip()


def summary_table(results: list[ChainResult]) -> Table:
    table = Table("chain", "result", "length", "units", "output / what to do", box=None, pad_edge=False)
    table.columns[-1].overflow = "fold"
    for r in results:
        table.add_row(
            r.chain,
            label(r.state),
            f"{r.duration:.2f} s" if r.duration is not None else "-",
            f"{r.units:g}",
            str(r.output) if r.output else r.message,
        )
    return table


def write_summary(path: Path, results: list[ChainResult], *, extra: dict[str, Any]) -> None:
    """The run's results as JSON, written atomically."""
    data = {**summary_data(results), **extra}
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def summary_data(results: list[ChainResult]) -> dict[str, Any]:
    """The run's results as plain data: a row per chain and the counts."""
    return {
        "chains": [
            {
                "chain": r.chain,
                "state": r.state,
                "output": str(r.output) if r.output else None,
                "duration": r.duration,
                "units": r.units,
                "message": r.message,
            }
            for r in results
        ],
        "done": sum(r.state == "done" for r in results),
        "failed": sum(r.state == "failed" for r in results),
        "needs_attention": sum(r.state == "needs_attention" for r in results),
        "units": sum(r.units for r in results),
    }
