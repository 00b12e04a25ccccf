"""What the engine works with: the run's shared context and one chain's run state.

`RunContext` is what every chain of a run shares (the provider, the journal, the
archive folder, the account's slots, the budget, the create gate). `ChainRun` is one
chain's plan, its options and what it holds while it runs (slots, thumbnails, the
intents made in this process); the step handlers (submit, poll, fetch, assembly,
revise) take it as their first argument.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from .. import archive, downloads, errors
from ..budget import RunBudget
from ..callbacks import CallbackHub
from ..chain import ChainView, StepRow
from ..events import Event
from ..lookup import LookupCheck
from ..plan import Plan, Step
from ..polling import PollPolicy
from ..ports import JournalPort, Provider, Slots
from ..provider.wire import Task
from ..retry import UNREACHABLE_DEADLINE_S, OnRetry
from ..rules import TaskKind
from ..scheduler import Scheduler
from .survey import Survey

if TYPE_CHECKING:  # Pillow loads where thumbnails are made, not with every run
    from PIL import Image

#: How long reads (polls, lookups, downloads) keep retrying transient errors.
READ_DEADLINE_S = 600.0
#: How long a create keeps retrying 1302/1303 and unsent requests before giving up.
CREATE_DEADLINE_S = 3600.0
#: Downloads running at once in one run (each streams; the limit spares bandwidth and disk).
DOWNLOADS_AT_ONCE = 4


@dataclass
class CreateGate:
    """Closed for the whole run by the first account error (1100-1103): no chain sends
    another create, while tasks already paid for are still polled and archived."""

    reason: errors.ApiError | None = None


@dataclass
class RunContext:
    """What every chain of a run shares: the provider, the journal, the archive."""

    client: Provider
    journal: JournalPort
    #: What results are downloaded with (a blocking client on the network: downloads.py).
    http: downloads.Http
    archive_dir: Path
    poll: PollPolicy = field(default_factory=PollPolicy)
    scheduler: Slots = field(default_factory=lambda: Scheduler(5))
    on_event: Callable[[Event], None] = lambda event: None
    rng: random.Random = field(default_factory=random.Random)
    #: A copy of the archive at an fsspec URL, synced after every step.
    mirror: archive.Mirror | None = None
    #: Downloads at once across all chains of a run.
    downloads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(DOWNLOADS_AT_ONCE))
    #: Whether the provider's lookup by external_task_id is seen to work (checked once a run).
    lookup: LookupCheck | None = None
    #: The whole run's credit budget (--max-units), shared by its chains.
    budget: RunBudget | None = None
    #: Shut by an account error: no more creates in this run.
    gate: CreateGate = field(default_factory=CreateGate)
    #: The callback receiver's side of the run, when callbacks are on (chainer.callbacks).
    callbacks: CallbackHub | None = None
    #: How long the tasks of this run took, by kind, newest last: every chain's poll
    #: schedule learns from all of them (a batch's first tasks teach the others).
    task_times: dict[str, list[float]] = field(default_factory=dict)
    #: When this run began: a task submitted before it is a resumed one.
    started_at: float = field(default_factory=time.time)
    #: Resumed tasks' first look, one list page for all chains (engine.survey).
    survey: Survey | None = None

    def __post_init__(self) -> None:
        if self.lookup is None:
            self.lookup = LookupCheck(self.client, self.journal)
        if self.survey is None:
            self.survey = Survey(self.client)


@dataclass(frozen=True)
class ChainOptions:
    """How the user asked for one chain to be run."""

    #: Give a failed step a new attempt (a new external_task_id, a new charge).
    retry_failed: bool = False
    #: The command line's budget for this chain (wins over the storyboard's).
    max_units: float | None = None
    #: The user checked that a create whose answer was lost made no task: send it again.
    resend_unknown: bool = False
    #: The command line's retention (wins over the storyboard's).
    keep: Literal["all", "final"] | None = None
    #: Re-roll: regenerate the steps from this one on as new takes (engine.revise).
    from_step: int | None = None
    #: Before a re-roll from this step: finish what is in flight from here on (it is paid
    #: for), create nothing new from here on, publish nothing.
    settle_before: int | None = None


class ChainRun:
    """One chain's plan, options and the state it holds while it runs."""

    def __init__(self, plan: Plan, ctx: RunContext, options: ChainOptions):
        self.plan = plan
        self.ctx = ctx
        self.options = options
        self.folder = ctx.archive_dir / plan.chain
        self.max_units = options.max_units if options.max_units is not None else plan.max_units
        #: Steps whose submit_intent this process committed (nothing was sent before it).
        self.fresh_intents: set[int] = set()
        #: Contact sheet pictures taken as each result lands, by (step, take).
        self.thumbs: dict[tuple[int, int], Image.Image] = {}
        #: Steps holding one of the account's slots -> whether their task surely exists.
        self.holding: dict[int, bool] = {}
        #: Tasks a list scan could not tell apart from ours, by step (offered for adoption).
        self.candidates: dict[int, list[Task]] = {}

    @property
    def journal(self) -> JournalPort:
        return self.ctx.journal

    @property
    def name(self) -> str:
        return self.plan.chain

    def view(self) -> ChainView:
        """The chain's journal rows as the chain model reads them."""
        return self.ctx.journal.view(self.plan.chain)

    def length(self) -> float | None:
        """The chain's video length so far, over all its parts."""
        return self.view().length()

    def units_spent(self) -> float:
        """Units the provider reported for this chain's tasks (every attempt counts)."""
        return self.ctx.journal.units(self.plan.chain)

    def describe(self, step: Step) -> str:
        return "the start" if step.index == 0 else f"segment {step.index}"

    def settling(self, step: Step) -> bool:
        """Whether `step` is one that a coming re-roll makes anew: finish it, never create it."""
        settle = self.options.settle_before
        return settle is not None and step.index >= settle

    def external_id(self, row: StepRow) -> str:
        chain = self.ctx.journal.chain(self.plan.chain)
        assert chain is not None
        # Deterministic from the journal: chain instance, step, attempt, request fingerprint.
        return f"chainer-{chain.uid}-{row.idx:03d}-a{row.attempt}-{row.fingerprint[:10]}"

    # ------------------------------------------------------------------ telling

    def emit(self, idx: int, state: str, message: str = "", total: float | None = None) -> None:
        units = self.units_spent()
        self.ctx.on_event(Event(self.plan.chain, idx, len(self.plan.steps) - 1, state, message, total, units))

    def on_retry(self, idx: int, what: str) -> OnRetry:
        """Tell the user of every retry of a request (state `retry`), before its wait."""

        def report(exc: Exception, attempt: int, wait: float | None) -> None:
            asked = f"; waiting {wait:g} s as the provider asked" if wait is not None else ""
            if isinstance(exc, errors.RequestNotSent):
                asked += f"; giving up {UNREACHABLE_DEADLINE_S:g} s after the first try"
            self.emit(idx, "retry", f"{what}, attempt {attempt}: {exc}{asked}; trying again")

        return report

    # ------------------------------------------------------------------ the account's slots

    def hold(self, step: Step) -> None:
        """Count `step`'s task against the account: it exists (found, or resumed)."""
        match self.holding.get(step.index):
            case None:
                self.ctx.scheduler.force(self.name)
            case False:  # the slot of a create whose answer was lost: the task turned up
                self.ctx.scheduler.confirm(self.name)
            case True:
                pass
        self.holding[step.index] = True

    def let_go(self, step: Step) -> None:
        """Give the step's slot back: its task ended, or its create made none."""
        if step.index in self.holding:
            self.ctx.scheduler.release(self.name, created=self.holding.pop(step.index))

    def release_all(self) -> None:
        """However the chain stopped, nothing of it polls any more: its slots go back to the
        batch (a task that does exist on the account is then met as a 1303)."""
        for idx in list(self.holding):
            self.ctx.scheduler.release(self.name, created=self.holding.pop(idx))


def task_kind(step: Step) -> TaskKind:
    if step.kind == "existing":
        raise AssertionError("an existing video has no task kind")
    return step.kind
