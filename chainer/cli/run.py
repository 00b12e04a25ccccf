"""`chainer run`: storyboards to finished videos, through the one run path (batch.run_batch)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import typer
from rich.console import Console

from .. import archive, balance, callbacks, errors, profiles, simulated
from ..batch import Batch, RunOptions, unique_names
from ..batch import stopped as batch_stopped
from ..budget import remaining_units
from ..events import ChainResult
from ..plan import Plan, load_plan
from ..progress import Mode, Progress, summary_table, write_summary
from ..report import ReportSection, write_report
from ..session import EMBEDDED_TIME_SCALE, Session
from .common import (
    ArchiveDir,
    ArchiveUrl,
    BaseUrl,
    CallbackUrl,
    JournalUrl,
    Listen,
    PathPrefix,
    SimTimeScale,
    StateDir,
    app,
    err,
    fail,
    out,
    print_error,
    receive_callbacks,
    run_async,
    where,
)

#: A run that may spend more units than this asks first (about 20 minutes of std video).
DEFAULT_CONFIRM_UNITS = 250.0

# ---- chainer run's options
RunStoryboards = Annotated[
    list[Path],
    typer.Argument(help="Storyboard files, or folders of *.yaml storyboards, to run (or resume) together."),
]
RunOutput = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Where to write the final video (one storyboard only; default: its `output`, else "
        "out/<name>.mp4).",
    ),
]
RunConcurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        min=1,
        help="Tasks in flight at once on the account (default 5); lowered automatically when the "
        "provider answers 1303, raised again carefully.",
    ),
]
RunRetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="Give a step that failed (e.g. content policy) a new attempt: a new task, charged again.",
    ),
]
RunResendUnknown = Annotated[
    bool,
    typer.Option(
        "--resend-unknown",
        help="Send again a create whose answer was lost, at a provider that cannot be asked; only "
        "after checking its console that no task was made.",
    ),
]
RunMaxUnits = Annotated[
    float | None,
    typer.Option(
        "--max-units",
        min=0.0,
        help="Credit budget for the whole run, every chain together (what they spent before an "
        "interruption counts): stop before a task whose estimate would pass it. A storyboard's "
        "max_units caps its own chain.",
    ),
]
RunIgnoreBalance = Annotated[
    bool,
    typer.Option(
        "--ignore-balance",
        help="Run even though the account's resource packs look too small for the plan's estimate "
        "(the run then stops at the first create the provider refuses, code 1102).",
    ),
]
RunYes = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help="Go ahead without asking when the run may spend more than --confirm-above units.",
    ),
]
RunConfirmAbove = Annotated[
    float,
    typer.Option(
        "--confirm-above",
        envvar="CHAINER_CONFIRM_UNITS",
        min=0.0,
        help="Ask before a run that may spend more units than this (on a terminal; elsewhere "
        "refuse without --yes).",
    ),
]
RunKeep = Annotated[
    str | None,
    typer.Option(
        "--keep",
        help="all: archive every intermediate result; final: only the final video, once verified "
        "(overrides the storyboard's archive.keep).",
    ),
]
RunJsonEvents = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per event (for scripts) instead of text.")
]
RunQuiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")]
RunVerbose = Annotated[bool, typer.Option("--verbose", "-v", help="Print every event, not just milestones.")]
RunSummary = Annotated[
    Path | None,
    typer.Option(
        "--summary", help="Where to write the run's JSON summary (default: STATE_DIR/last-run.json)."
    ),
]
RunFromStep = Annotated[
    int | None,
    typer.Option(
        "--from-step",
        min=1,
        help="Re-roll: make steps N.. again as new takes, branching at step N-1's video; the old "
        "takes stay in the archive (one storyboard only).",
    ),
]
RunFromLastFrame = Annotated[
    bool,
    typer.Option(
        "--from-last-frame",
        help="With --from-step N: start step N from the last frame of step N-1's archived video "
        "(image2video, a new part), for when Kling has deleted that video.",
    ),
]
RunReport = Annotated[
    Path | None,
    typer.Option("--report", help="Where to write the run's HTML report (default: ARCHIVE_DIR/report.html)."),
]
RunSimulate = Annotated[
    bool,
    typer.Option(
        "--simulate",
        help="Rehearse on the built-in offline simulator even where credentials are set; its "
        "results are kept apart (NAME.simulated.mp4, ARCHIVE_DIR-simulated/). Without credentials "
        "it is the default only where nothing was ever run for real from STATE_DIR.",
    ),
]


@app.command(short_help="Run storyboards to finished videos (or resume them).")
def run(
    storyboards: RunStoryboards,
    output: RunOutput = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = None,
    archive_url: ArchiveUrl = None,
    concurrency: RunConcurrency = None,
    retry_failed: RunRetryFailed = False,
    resend_unknown: RunResendUnknown = False,
    max_units: RunMaxUnits = None,
    ignore_balance: RunIgnoreBalance = False,
    yes: RunYes = False,
    confirm_above: RunConfirmAbove = DEFAULT_CONFIRM_UNITS,
    keep: RunKeep = None,
    json_events: RunJsonEvents = False,
    quiet: RunQuiet = False,
    verbose: RunVerbose = False,
    summary: RunSummary = None,
    from_step: RunFromStep = None,
    from_last_frame: RunFromLastFrame = False,
    report: RunReport = None,
    sim_time_scale: SimTimeScale = EMBEDDED_TIME_SCALE,
    simulate: RunSimulate = False,
    callback_url: CallbackUrl = None,
    listen: Listen = callbacks.DEFAULT_LISTEN,
    journal: JournalUrl = None,
) -> None:
    """Run storyboards to finished videos (many at once share the account), resuming interrupted ones."""
    plans, keep_mode = run_inputs(storyboards, output, from_step, from_last_frame, keep)
    mode: Mode = "json" if json_events else "quiet" if quiet else "live" if out.is_terminal else "plain"
    # What the run says before it starts goes to stderr under --json and --quiet; its last
    # words (the summary) go to stdout except under --json, whose stdout is JSON lines only.
    talk = err if mode in ("json", "quiet") else out
    tell = err if mode == "json" else out
    options = RunOptions(
        retry_failed=retry_failed,
        resend_unknown=resend_unknown,
        keep=keep_mode,
        budget=max_units,
        from_step=from_step,
        from_last_frame=from_last_frame,
    )
    records = _RunRecords.at(state_dir, archive_dir, summary, report)
    archive_dir = records.archive_dir
    groups = by_provider(plans)
    if len(groups) > 1:
        _refuse_one_account_flags(groups, max_units, base_url, path_prefix, concurrency)

    async def main() -> int:
        common = where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale, journal)
        async with contextlib.AsyncExitStack() as stack:
            hub = await receive_callbacks(stack, callback_url, listen, talk)
            runs = await _open_groups(stack, groups, {**common, "callbacks": hub}, concurrency, simulate)
            for g in runs:
                _announce(g.session, simulate, talk)
                await _check_balance(g.session, g.plans, max_units, ignore_balance, talk)
            _confirm_spending([g for g in runs if g.session.simulator is None], max_units, confirm_above, yes)
            records.started = time.monotonic()
            with Progress(plans, mode, out, verbose=verbose) as progress:
                try:
                    await _run_groups(runs, options, progress)
                except errors.ConfigError:
                    raise  # refused before anything was sent: there is no run to record
                except BaseException as exc:  # Ctrl-C, a crash: the records still say where things are
                    with contextlib.suppress(OSError, errors.ChainerError):
                        records.write(runs, exc)
                    raise
                done = Batch(
                    [r for g in runs for r in g.results],
                    next((g.fatal for g in runs if g.fatal is not None), None),
                )
                progress.finish(done.results)
            report_path = records.write(runs, None)
            simulated_run = all(g.session.simulator is not None for g in runs)
            shown = records.shown_archive(simulated_run)
            return _tell_outcome(done, report_path, shown, tell, simulated_run=simulated_run)

    run_async(main)


@dataclasses.dataclass
class _Group:
    """One provider's share of a run: its session, its plans, and (once run) their results."""

    session: Session
    plans: list[Plan]
    results: list[ChainResult] = dataclasses.field(default_factory=list)
    fatal: errors.ChainerError | None = None


async def _open_groups(
    stack: contextlib.AsyncExitStack,
    groups: list[list[Plan]],
    common: dict[str, Any],
    concurrency: int | None,
    simulate: bool,
) -> list[_Group]:
    """Every provider's session, open (credentials, journal, simulator) before anything is
    asked of any of them, so a missing key stops the whole run unspent."""
    runs = [
        _Group(
            await stack.enter_async_context(
                Session.open(
                    **common,
                    concurrency=concurrency,
                    profile=group[0].provider,
                    simulate=True if simulate else None,
                )
            ),
            group,
        )
        for group in groups
    ]
    _no_silent_rehearsal(runs, simulate)
    return runs


def by_provider(plans: list[Plan]) -> list[list[Plan]]:
    """The plans grouped by the provider profile they name, in the order first named."""
    groups: dict[str, list[Plan]] = {}
    for p in plans:
        groups.setdefault(p.provider.name, []).append(p)
    return list(groups.values())


def _refuse_one_account_flags(
    groups: list[list[Plan]],
    budget: float | None,
    base_url: str | None,
    path_prefix: str | None,
    concurrency: int | None,
) -> None:
    """Flags that speak of one account or one address cannot be shared by several providers."""
    names = ", ".join(g[0].provider.name for g in groups)
    for flag, value in (
        ("--max-units", budget),
        ("--base-url", base_url),
        ("--path-prefix", path_prefix),
        ("--concurrency", concurrency),
    ):
        if value is not None:
            raise fail(
                errors.ConfigError(
                    f"{flag} is one account's setting, and these storyboards name {len(groups)} "
                    f"providers ({names}); run each provider's storyboards on their own to use it, "
                    "or set it per provider (a storyboard's max_units, providers.toml)"
                )
            )


def _no_silent_rehearsal(runs: list[_Group], simulate: bool) -> None:
    """Refuse a run in which some providers are real and others would silently be simulated
    (their credentials missing): the user would pay for half a batch and rehearse the rest."""
    fake = [g for g in runs if g.session.simulator is not None]
    if simulate or not fake or len(fake) == len(runs):
        return
    names = ", ".join(g.plans[0].provider.name for g in fake)
    raise fail(
        errors.ConfigError(
            f"no credentials are set for {names}, while the other storyboards run for real; nothing "
            "was sent. Set that provider's credentials (see `chainer providers`), run its storyboards "
            "separately with --simulate, or pass --simulate to rehearse them all"
        )
    )


async def _run_groups(runs: list[_Group], options: RunOptions, progress: Progress) -> None:
    """Every provider's plans at once, each under its own account's limit. A group that
    raises (a refusal before sending, a crash) stops the others as Ctrl-C would (the
    journal keeps where each chain is), and its error is raised as it was, not grouped."""

    async def one(g: _Group) -> None:
        done = await g.session.run_batch(g.plans, options, on_event=progress.on_event)
        g.results, g.fatal = done.results, done.fatal

    if len(runs) == 1:
        await one(runs[0])
        return
    try:
        async with anyio.create_task_group() as tg:
            for g in runs:
                tg.start_soon(one, g)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def run_inputs(
    storyboards: list[Path],
    output: Path | None,
    from_step: int | None,
    from_last_frame: bool,
    keep: str | None,
) -> tuple[list[Plan], Literal["all", "final"] | None]:
    """The plans `chainer run` was asked for, checked together (exits on bad input)."""
    try:
        paths = _storyboard_files(storyboards)
        if output is not None and len(paths) > 1:
            raise errors.ConfigError("--output names one file: use it with a single storyboard")
        if from_step is not None and len(paths) > 1:
            raise errors.ConfigError("--from-step re-rolls one chain: use it with a single storyboard")
        if from_last_frame and from_step is None:
            raise errors.ConfigError("--from-last-frame goes with --from-step N (the step to start from)")
        plans = _load_all(paths, output=output)
        unique_names(plans)
        if len(plans) == 1 and plans[0].placeholders:  # refused before anything starts
            raise errors.StoryboardError(plans[0].placeholders)
    except errors.ChainerError as exc:
        raise fail(exc) from None
    for p in plans:
        for warning in p.warnings:
            if warning not in p.placeholders:  # the batch refuses those chains, saying why
                err.print(f"warning: {warning}", markup=False)
    if keep not in (None, "all", "final"):
        err.print(f"--keep {keep!r}: expected all or final", markup=False)
        raise typer.Exit(2)
    return plans, ("final" if keep == "final" else "all" if keep == "all" else None)


def _announce(session: Session, simulate: bool, talk: Console) -> None:
    """Say which provider this run talks to (and that the simulator spends nothing)."""
    if session.simulator is not None:
        why = "As asked (--simulate)" if simulate else "No Kling credentials configured"
        talk.print(
            f"{why}: using the offline simulator at {session.simulator.base_url} (no credits are "
            f"spent; results are kept apart, in *.simulated.mp4 and {session.archive_dir.name}/; "
            "set KLING_ACCESS_KEY/KLING_SECRET_KEY or KLING_API_KEY to use Kling).",
            markup=False,
        )
    else:
        talk.print(f"Provider: {session.provider.name} at {session.provider.base_url}", markup=False)


@dataclasses.dataclass
class _RunRecords:
    """Where a run's summary (last-run.json) and report go; written however the run ended."""

    state_dir: Path
    archive_dir: Path
    summary: Path | None
    report: Path | None
    started: float = 0.0

    @classmethod
    def at(
        cls, state_dir: Path, archive_dir: Path | None, summary: Path | None, report: Path | None
    ) -> _RunRecords:
        """The records of a run from `state_dir`, its archive where the state dir keeps it."""
        try:
            return cls(state_dir, archive.location(state_dir, archive_dir), summary, report)
        except errors.ChainerError as exc:
            raise fail(exc) from None

    def shown_archive(self, simulated_run: bool) -> Path:
        return simulated.archive_root(self.archive_dir) if simulated_run else self.archive_dir

    def write(self, runs: list[_Group], interrupted: BaseException | None) -> Path:
        """Write both; after an interruption each chain is written as the journal has it."""
        if interrupted is not None:
            why = errors.ChainerError(f"the run was interrupted ({type(interrupted).__name__}); resume it")
            for g in runs:
                g.results = [batch_stopped(g.session, p, why) for p in g.plans]
        simulated_run = all(g.session.simulator is not None for g in runs)
        default_summary = self.state_dir / "last-run.json"
        per_provider = [
            {
                "provider": g.session.provider.name,
                "simulated": g.session.simulator is not None,
                "peak_concurrency": g.session.scheduler.peak,
                "concurrency_limit": g.session.scheduler.limit,
                "rejected_creates_1303": g.session.scheduler.rejections,
                "chains": [p.chain for p in g.plans],
            }
            for g in runs
        ]
        write_summary(
            self.summary or (simulated.summary_path(default_summary) if simulated_run else default_summary),
            [r for g in runs for r in g.results],
            extra={
                "simulated": simulated_run,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                # One provider: its figures at the top level too, as scripts read them.
                **({k: v for k, v in per_provider[0].items() if k != "chains"} if len(runs) == 1 else {}),
                "providers": per_provider,
            },
        )
        dest = self.report or self.shown_archive(simulated_run) / "report.html"
        sections = [
            ReportSection(
                g.session.journal,
                g.session.archive_dir,
                g.results,
                provider=g.session.provider.name,
                address=g.session.provider.base_url,
                simulated=g.session.simulator is not None,
            )
            for g in runs
        ]
        return write_report(sections, dest)


def _tell_outcome(
    done: Batch, report_path: Path, shown_archive: Path, talk: Console, *, simulated_run: bool
) -> int:
    """The run's last words, and its exit code: 0 when every chain is done; a chain's own
    error's code for a run of one; 1 when some chain of a batch is not done."""
    results = done.results
    single = results[0] if len(results) == 1 else None
    if single is not None and single.state == "done":
        dur = f"{single.duration:.2f} s" if single.duration is not None else "unknown length"
        head = "Done (simulated, no credits spent)" if simulated_run else "Done"
        talk.print(f"{head}: {single.output} ({dur}, {single.units:g} units)", markup=False)
        talk.print(f"Archive: {shown_archive / single.chain}", markup=False)
        talk.print(f"Report: {report_path}", markup=False)
        return 0
    stop = done.fatal or (single.error if single is not None else None)
    if single is None:
        talk.print(summary_table(results))
        finished = sum(r.state == "done" for r in results)
        talk.print(f"{finished} of {len(results)} chains done. Report: {report_path}", markup=False)
    else:
        talk.print(f"Report: {report_path}", markup=False)
    if stop is not None:
        print_error(stop)
        return stop.exit_code
    return 0 if all(r.state == "done" for r in results) else 1


def _confirm_spending(runs: list[_Group], budget: float | None, threshold: float, yes: bool) -> None:
    """Ask (on a terminal) or refuse (elsewhere) before a run that may spend more than
    `threshold` units, counted over every provider that is paid (simulators are not)."""
    estimates = [(g, sum(remaining_units(p, g.session.journal) for p in g.plans)) for g in runs]
    estimate = sum(e for _, e in estimates)
    at_most = min(estimate, budget) if budget is not None else estimate
    if yes or at_most <= threshold or not runs:
        return
    if len(estimates) == 1:
        on = f"{money(runs[0].plans[0].provider, at_most)} on {runs[0].session.provider.name}"
    else:
        on = " on " + ", ".join(
            f"{g.session.provider.name} ({e:g}{money(g.plans[0].provider, e)})" for g, e in estimates
        )
    chains = sum(len(g.plans) for g in runs)
    what = (
        f"this run may spend about {at_most:g} units{on} ({chains} chain{'s' if chains != 1 else ''}"
        + (f", capped by --max-units {budget:g}" if budget is not None and budget < estimate else "")
        + ")"
    )
    if sys.stdin.isatty() and out.is_terminal:
        if typer.confirm(f"{what[0].upper()}{what[1:]}. Go on?", default=False):
            return
        raise errors.ConfigError("not confirmed; nothing was sent")
    raise errors.ConfigError(
        f"{what}, above the confirmation threshold of {threshold:g} (--confirm-above, "
        "CHAINER_CONFIRM_UNITS). Nothing was sent. Pass --yes to go on, or --max-units to cap "
        "what it may spend"
    )


async def _check_balance(
    session: Session, plans: list[Plan], budget: float | None, ignore: bool, talk: Console
) -> None:
    """Before spending: can the account's packs cover the run? Refuses (unless `ignore`), warns
    of a pack that expires before the run's expected end; proxies: not available, go on."""
    estimate = sum(remaining_units(p, session.journal) for p in plans)
    if budget is not None:
        estimate = min(estimate, budget)
    if estimate <= 0:  # nothing left to pay for (a finished chain run again): nothing to ask
        return
    found = await balance.fetch(session.client)
    talk.print(found.describe(), markup=False)
    took = balance.expected_seconds(
        plans, concurrency=session.scheduler.limit, time_scale=session.provider.time_scale
    )
    ends = dt.datetime.now().astimezone() + dt.timedelta(seconds=took)
    problem, warnings = balance.assess(found, estimate, ends_at=ends)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    if problem is not None and not ignore:
        raise errors.ConfigError(
            f"{problem}. Nothing was sent. Top up the account, cap the run with --max-units, or pass "
            "--ignore-balance to go on anyway"
        )
    if problem is not None:
        err.print(f"warning: {problem}; going on as asked (--ignore-balance)", markup=False)


def money(profile: profiles.Profile, units: float) -> str:
    """`units` in the profile's money, when it gives a price (`unit_price`), as ' (about 1.40 USD)'."""
    if profile.unit_price is None:
        return ""
    return f" (about {units * profile.unit_price:.2f} {profile.currency})"


def _storyboard_files(items: list[Path]) -> list[Path]:
    """The storyboard files named, folders expanded to their *.yaml / *.yml files."""
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted([*item.glob("*.yaml"), *item.glob("*.yml")])
            if not found:
                raise errors.ConfigError(f"{item} holds no *.yaml storyboards")
            files += found
        else:
            files.append(item)
    return files


def _load_all(paths: list[Path], *, output: Path | None) -> list[Plan]:
    """Every storyboard planned, or one StoryboardError with every problem of every file."""
    plans, problems = [], []
    for path in paths:
        try:
            plans.append(load_plan(path, output=output))
        except errors.StoryboardError as exc:
            problems += exc.problems
    if problems:
        raise errors.StoryboardError(problems)
    return plans
