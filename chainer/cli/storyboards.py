"""`chainer plan`, `validate` and `schema`: storyboards checked and planned, nothing sent."""

from __future__ import annotations

import datetime as dt
import errno
import json
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.table import Table

from .. import balance, errors, profiles
from ..archive import write_atomically
from ..plan import Plan, load_plan
from ..provider.client import KlingClient
from ..storyboard import json_schema as storyboard_schema
from .common import app, err, fail, out
from .run import money


@app.command(short_help="Show a storyboard's steps, lengths and units.")
def plan(
    storyboard: Annotated[Path, typer.Argument(help="The storyboard YAML file to plan.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON instead of a table.")
    ] = False,
) -> None:
    """Show the steps a storyboard will take: projected lengths, estimated units, warnings. Sends nothing."""
    try:
        p = load_plan(storyboard)
    except errors.ChainerError as exc:
        raise fail(exc) from None
    data = p.summary()
    if as_json:
        out.print_json(data=data)
        return
    out.print(
        f"{p.chain}: {p.provider.name}, {p.model} {p.mode}, {len(p.steps)} steps -> {p.output}", markup=False
    )

    def span(lo: float, hi: float, sign: str = "") -> str:
        return f"{sign}{lo:g}-{hi:g} s" if lo != hi else f"{sign}{hi:g} s"

    table = Table("step", "kind", "adds", "length after", "units", "prompt", box=None, pad_edge=False)
    for s in p.steps:
        prompt = (s.prompt or "")[:60] + ("..." if s.prompt and len(s.prompt) > 60 else "")
        kind = ("hand-off: " if s.handoff else "") + s.kind + (" (if needed)" if s.optional else "")
        adds = span(*p.adds(s), sign="+")
        table.add_row(str(s.index), kind, adds, span(s.min_total, s.max_total), f"{s.units:g}", prompt)
    out.print(table)
    last = p.steps[-1]
    handoffs = p.handoffs
    shots = data["shots"]
    out.print(
        f"Length: {span(last.min_total, last.max_total)}"
        + (
            f" in {len(handoffs) + 1} parts joined at the end; Kling's 180 s cap is met by starting a new "
            f"part from the last frame at step{'s' if len(handoffs) > 1 else ''} "
            f"{', '.join(map(str, handoffs))}."
            if handoffs
            else "."
        )
        + (
            f" Steps {shots[0]}-{shots[-1]} are {len(shots)} Omni-Video shots, each a new video "
            "that continues the one before it; they are joined into one file at the end."
            if len(shots) > 1
            else (
                f" Step {shots[0]} is an Omni-Video shot, joined after the video before it." if shots else ""
            )
        )
        + (f" Stops once {p.target_duration:g} s is reached." if p.target_duration else ""),
        markup=False,
    )
    other = next(k for k in data if k.startswith("estimated_units_if_"))
    out.print(
        f"Estimated units: {p.total_units:g}{money(p.provider, p.total_units)} "
        f"({other.removeprefix('estimated_units_if_')} would be "
        f"{data[other]:g}); the provider's final_unit_deduction is what counts.",
        markup=False,
    )
    for warning in p.warnings:
        err.print(f"warning: {warning}", markup=False)
    _plan_balance(p)


def _plan_balance(p: Plan) -> None:
    """With credentials set, what the account's packs hold against the plan (a free read)."""
    try:
        provider = profiles.from_environment(profile=p.provider)
    except errors.ConfigError:
        provider = None
    if provider is None:
        out.print("Account balance: not checked (no credentials set)", markup=False)
        return

    async def main() -> balance.Balance:
        async with KlingClient(provider) as client:
            return await balance.fetch(client)

    found = anyio.run(main)
    out.print(found.describe(), markup=False)
    took = balance.expected_seconds([p], concurrency=provider.concurrency, time_scale=provider.time_scale)
    ends = dt.datetime.now().astimezone() + dt.timedelta(seconds=took)
    problem, warnings = balance.assess(found, p.total_units, ends_at=ends)
    for warning in [*warnings, *([problem] if problem else [])]:
        err.print(f"warning: {warning}", markup=False)


@app.command(short_help="Print the storyboard JSON Schema for editors.")
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON Schema here instead of printing it.")
    ] = None,
) -> None:
    """Print the storyboard JSON Schema, so editors (yaml-language-server) check storyboards as you type."""
    text = json.dumps(storyboard_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            if not output.parent.is_dir():  # write_atomically would make it: not asked for here
                raise FileNotFoundError(errno.ENOENT, f"no folder {output.parent}")
            write_atomically(output, text)
        except OSError as exc:
            err.print(
                f"cannot write {output}: {exc.strerror or exc}; pick a file in a folder that exists "
                "and that you can write to",
                markup=False,
            )
            raise typer.Exit(1) from None
        out.print(
            f"wrote {output}; add `# yaml-language-server: $schema={output}` to a storyboard", markup=False
        )


@app.command(short_help="Check storyboards; each problem as file:line:col.")
def validate(
    storyboards: Annotated[list[Path], typer.Argument(help="Storyboard files to check.")],
) -> None:
    """Check storyboards without sending anything; print every problem as file:line:col."""
    bad = 0
    for path in storyboards:
        try:
            load_plan(path)
            out.print(f"{path}: ok", markup=False)
        except errors.StoryboardError as exc:
            bad += 1
            for problem in exc.problems:
                err.print(str(problem), markup=False)
    if bad:
        err.print(f"{bad} of {len(storyboards)} storyboard(s) have problems.", style="red")
        raise typer.Exit(2)
