"""The one run path: any number of chains (one is a batch of one) under one account's limit.

`run_batch` owns what a run of chains means whatever its size: names and outputs must
not clash, the preflight checks the whole batch at once, a run budget is shared, a
re-roll settles what is in flight first, and the failure policy is the same everywhere:
one chain's failure (a refused prompt, a bad source, a budget, a lock held by another
process) does not stop the others; an account error (1100-1103) shuts creates for every
chain while what was paid for is still finished and archived; an auth error stops all.
Every chain gets a result, so the summary and the report can always be written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc

from . import errors, simulated
from .budget import RunBudget, remaining_units
from .chain import outcome_of
from .engine import ChainOptions, ChainRunner, RunContext
from .engine.fetch import is_lost
from .engine.runner import first_error
from .events import ChainResult, Event
from .plan import Plan, chain_plan

if TYPE_CHECKING:  # the session composes a run; this module only uses what it opened
    from .session import Session

#: Stopped chains that need the user (or time), not a new prompt.
_ATTENTION = (errors.SubmitUnknown, errors.BudgetExceeded, errors.ChainLocked, errors.CreatesStopped)


@dataclass(frozen=True)
class RunOptions:
    """How the user asked for the chains of a run to be run (see ChainOptions)."""

    retry_failed: bool = False
    #: Caps each chain (overriding the storyboards' own).
    max_units: float | None = None
    resend_unknown: bool = False
    keep: Literal["all", "final"] | None = None
    #: Caps the units all chains together may spend (chainer.budget).
    budget: float | None = None
    #: Re-roll from this step (a batch of one only).
    from_step: int | None = None
    from_last_frame: bool = False


@dataclass
class Batch:
    """What a run of chains came to: a result per chain, in the order asked, and the error
    that stopped the whole run, if one did (auth, account)."""

    results: list[ChainResult]
    fatal: errors.ChainerError | None = None

    def raise_for_one(self) -> ChainResult:
        """A batch of one as a call: its result, or the error that stopped it."""
        if self.fatal is not None:
            raise self.fatal
        result = self.results[0]
        if result.error is not None:
            raise result.error
        return result


async def run_batch(
    session: Session,
    plans: list[Plan],
    *,
    options: RunOptions,
    on_event: Callable[[Event], None] | None = None,
) -> Batch:
    """Run (or resume) `plans` together; see the module's docstring for the policy."""
    _check_unique(session, plans)
    if options.from_step is not None and len(plans) != 1:
        raise errors.ConfigError("--from-step re-rolls one chain: use it with a single storyboard")
    results: dict[str, ChainResult] = {}
    owned: list[Plan] = []
    outputs = {c.output: c.name for c in session.journal.chains()}
    for p in plans:
        try:
            if p.placeholders:  # a create with them would only fail at the provider
                raise errors.StoryboardError(p.placeholders)
            mine = session.own(p)
            _not_another_chains_output(mine, outputs)
            owned.append(session.with_journal_handoffs(mine, options.from_step, options.from_last_frame))
        except (errors.ConfigError, errors.StoryboardError) as exc:
            if len(plans) == 1:
                raise
            results[p.chain] = stopped(session, p, exc)
    caps = [u for u in (options.budget, options.max_units) if u is not None]
    session.preflight(owned, budget=min(caps) if caps else None)  # the whole batch at once
    shared = RunBudget(options.budget, session.journal) if options.budget is not None else None
    for p in owned:
        if shared is not None:
            shared.add(p)
    ctx = replace(session.context(on_event), budget=shared)
    fatal: list[errors.ChainerError] = []

    async def one(plan: Plan, group: anyio.abc.TaskGroup) -> None:
        try:
            results[plan.chain] = await _run_one(session, plan, ctx, options)
        except errors.AuthError as exc:
            fatal.append(exc)
            results[plan.chain] = stopped(session, plan, exc)
            group.cancel_scope.cancel()
        except errors.AccountError as exc:
            # The account cannot pay: no chain creates again (the gate), but the others
            # still finish and archive the tasks already paid for.
            fatal.append(exc)
            results[plan.chain] = stopped(session, plan, exc)
        except errors.ChainerError as exc:
            results[plan.chain] = stopped(session, plan, exc)

    try:
        async with anyio.create_task_group() as group:
            for plan in owned:
                group.start_soon(one, plan, group)
    except BaseExceptionGroup as crashed:  # not a chain's failure: a bug, or the process stopping
        raise first_error(crashed) from None
    if fatal and isinstance(fatal[0], errors.AccountError):
        rest = sum(remaining_units(p, session.journal) for p in owned)
        whose = "the rest needs" if len(plans) == 1 else "the rest of this run needs"
        fatal[0].add_note(f"every task already paid for is archived; {whose} about {rest:g} units")
    ordered = [results.get(p.chain) or stopped(session, p, fatal[0]) for p in plans]
    return Batch(ordered, fatal[0] if fatal else None)


async def _run_one(session: Session, plan: Plan, ctx: RunContext, options: RunOptions) -> ChainResult:
    """One chain of the batch: settle what a re-roll would replace, then run it."""
    chain_options = ChainOptions(
        retry_failed=options.retry_failed,
        max_units=options.max_units,
        resend_unknown=options.resend_unknown,
        keep=options.keep,
        from_step=options.from_step,
    )
    if options.from_step is not None:
        await _settle(session, plan.chain, options.from_step, ctx)
    return await ChainRunner(plan, ctx, chain_options).run()


async def _settle(session: Session, name: str, from_step: int, ctx: RunContext) -> None:
    """Before re-rolling `name` from `from_step`: finish the tasks still in flight from
    there on (they are paid for: their results are archived as earlier takes), from the
    storyboard text the chain began with, creating nothing new."""
    chain = session.journal.chain(name)
    if chain is None:
        return
    rows = session.journal.steps(name)
    lost = frozenset(r.idx for r in rows if is_lost(r))
    if not session.journal.view(name).in_flight_from(from_step, lost=lost):
        return
    old = session.with_journal_handoffs(session.own(chain_plan(chain)), None, False)
    await ChainRunner(old, ctx, ChainOptions(settle_before=from_step)).run()


def unique_names(plans: list[Plan]) -> None:
    """Chain names name archive folders: none may repeat within a run (of any providers)."""
    seen: dict[str, Path] = {}
    for p in plans:
        if p.chain in seen:
            raise errors.ConfigError(
                f"two storyboards name the chain {p.chain!r}: {seen[p.chain]} and {p.storyboard}; "
                "chain names must be unique (they name the archive folders)"
            )
        seen[p.chain] = p.storyboard


def _check_unique(session: Session, plans: list[Plan]) -> None:
    """Chain names name archive folders and outputs name files: neither may clash."""
    unique_names(plans)
    outputs: dict[Path, str] = {}
    for p in plans:
        out = simulated.output_path(p.output).resolve() if session.simulator else p.output_abs
        if out in outputs:
            raise errors.ConfigError(f"chains {outputs[out]!r} and {p.chain!r} would both write {p.output}")
        outputs[out] = p.chain


def _not_another_chains_output(plan: Plan, outputs: dict[str, str]) -> None:
    """A chain the journal already has (run before from this state folder) keeps its output
    file: another chain naming the same `output:` would replace that video without a word."""
    other = outputs.get(str(plan.output_abs))
    if other is not None and other != plan.chain:
        raise errors.ConfigError(
            f"{plan.output} is already the output of chain {other!r}, run before from this state "
            f"folder; give {plan.chain!r} its own `output:` in {plan.storyboard} (or --output), so "
            "that neither video replaces the other"
        )


def stopped(session: Session, plan: Plan, exc: errors.ChainerError) -> ChainResult:
    """The result of a chain that stopped before its end, with what it had reached. A chain
    the journal has with nothing of it failed (a paid task may still be in flight: the
    provider or the network stopped it, or the run was interrupted) needs attention, it did
    not fail: the next run goes on (the chain model's reading, chain.outcome_of)."""
    duration, units = None, 0.0
    state: Literal["failed", "needs_attention"] = (
        "needs_attention" if isinstance(exc, _ATTENTION) else "failed"
    )
    with contextlib.suppress(errors.JournalError):
        if session.journal.chain(plan.chain) is not None:
            view = session.journal.view(plan.chain)
            duration, units = view.length(), view.units()
            if outcome_of(view.state()) == "needs_attention":
                state = "needs_attention"
    return ChainResult(plan.chain, state, None, duration, units, error=exc)
