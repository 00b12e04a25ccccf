"""The `chainer` command: a thin layer over the library (chainer.session and friends)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import stamina.instrumentation
import typer
from rich.console import Console
from rich.table import Table

from . import archive, balance, errors, profiles, simulated
from .adopt import adopt as adopt_task
from .batch import Batch, RunOptions
from .batch import stopped as batch_stopped
from .budget import remaining_units
from .events import ChainResult
from .journal import Journal
from .plan import Plan, chain_plan, load_plan
from .progress import Mode, Progress, summary_table, write_summary
from .provider.client import KlingClient
from .report import write_report
from .session import EMBEDDED_TIME_SCALE, Session
from .simulator import SimConfig, serve_forever
from .storyboard import json_schema as storyboard_schema
from .sweep import archive_pending, sweep_account

#: `chainer status` warns about results not archived this close to their deletion.
WARN_DAYS = 7
#: A run that may spend more units than this asks first (about 20 minutes of std video).
DEFAULT_CONFIRM_UNITS = 250.0

# ---- options several commands share (one definition each)
BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="Provider base URL; overrides KLING_BASE_URL and the profile."),
]
PathPrefix = Annotated[
    str | None,
    typer.Option(
        "--path-prefix",
        help="Path prefix in front of /v1/... (proxies often use /kling); overrides KLING_PATH_PREFIX.",
    ),
]
StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Folder for the journals (and the offline simulator's files).")
]
ArchiveDir = Annotated[
    Path,
    typer.Option("--archive-dir", help="Folder where every result is archived, one sub-folder per chain."),
]
ArchiveUrl = Annotated[
    str | None,
    typer.Option(
        "--archive-url",
        envvar="CHAINER_ARCHIVE_URL",
        help="Also keep the archive at this fsspec URL (e.g. s3://bucket/prefix), synced after every step.",
    ),
]
SimTimeScale = Annotated[
    float,
    typer.Option(
        "--sim-time-scale",
        min=0.0001,
        help="Offline simulator only: task time as a fraction of Kling's real minutes.",
    ),
]

app = typer.Typer(
    name="chainer",
    help=(
        "Turn a storyboard into a multi-minute AI video by chaining Kling video-extend calls.\n\n"
        "Credentials come from the environment: KLING_ACCESS_KEY + KLING_SECRET_KEY for the official "
        "API, or KLING_API_KEY + KLING_BASE_URL for a proxy. With none set, chainer runs against its "
        "built-in offline simulator and spends no credits."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: errors.ChainerError) -> typer.Exit:
    _print_error(exc)
    return typer.Exit(exc.exit_code)


def _print_error(exc: errors.ChainerError) -> None:
    """An error as the user reads it: its problems, or its message and notes."""
    if isinstance(exc, errors.StoryboardError):
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        err.print(f"{len(exc.problems)} problem(s); nothing was sent.", style="red")
    else:
        err.print(f"error: {exc}", style="red", markup=False)
        for note in getattr(exc, "__notes__", []):
            err.print(f"  ({note})", markup=False)


def _allow_open_files() -> None:
    """Raise the soft limit on open files to the hard one: every chain of a batch holds its
    lock file open, and a 1,000-storyboard batch would pass the usual soft limit of 1,024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed: keep it
        pass


def _run_async(main: Callable[[], Awaitable[int]]) -> None:
    """Run a command's async body; errors become their exit codes, Ctrl-C exits 130."""
    _allow_open_files()
    try:
        code = anyio.run(main)
    except errors.ChainerError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print("Interrupted. Everything sent so far is in the journal; run the same command to resume.")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


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


@app.command()
def run(
    storyboards: RunStoryboards,
    output: RunOutput = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = Path("archive"),
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
) -> None:
    """Run storyboards to finished videos (many at once share the account), resuming interrupted ones."""
    plans, keep_mode = _run_inputs(storyboards, output, from_step, from_last_frame, keep)
    mode: Mode = "json" if json_events else "quiet" if quiet else "live" if out.is_terminal else "plain"
    talk = err if mode in ("json", "quiet") else out
    options = RunOptions(
        retry_failed=retry_failed,
        resend_unknown=resend_unknown,
        keep=keep_mode,
        budget=max_units,
        from_step=from_step,
        from_last_frame=from_last_frame,
    )
    records = _RunRecords(state_dir, archive_dir, summary, report)

    async def main() -> int:
        async with Session.open(
            **_where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
            concurrency=concurrency,
            profile=plans[0].provider,
            simulate=True if simulate else None,
        ) as session:
            _announce(session, simulate, talk)
            await _check_balance(session, plans, max_units, ignore_balance, talk)
            if session.simulator is None:
                _confirm_spending(session, plans, max_units, confirm_above, yes)
            records.started = time.monotonic()
            with Progress(plans, mode, out, verbose=verbose) as progress:
                try:
                    done = await session.run_batch(plans, options, on_event=progress.on_event)
                except errors.ConfigError:
                    raise  # refused before anything was sent: there is no run to record
                except BaseException as exc:  # Ctrl-C, a crash: the records still say where things are
                    with contextlib.suppress(OSError, errors.ChainerError):
                        records.write(session, plans, None, exc)
                    raise
            report_path = records.write(session, plans, done.results, None)
            shown = records.shown_archive(session)
            return _tell_outcome(done, report_path, shown, talk, simulated_run=session.simulator is not None)

    _run_async(main)


def _run_inputs(
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
        providers = sorted({p.provider.name for p in plans})
        if len(providers) > 1:
            raise errors.ConfigError(
                f"these storyboards name different providers ({', '.join(providers)}); one run talks to "
                "one provider: run each provider's storyboards separately"
            )
    except errors.ChainerError as exc:
        raise _fail(exc) from None
    for p in plans:
        for warning in p.warnings:
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

    def shown_archive(self, session: Session) -> Path:
        return self.archive_dir if session.simulator is None else simulated.archive_root(self.archive_dir)

    def write(
        self,
        session: Session,
        plans: list[Plan],
        results: list[ChainResult] | None,
        interrupted: BaseException | None,
    ) -> Path:
        """Write both; `results` None (the run was interrupted): each chain as the journal has it."""
        if results is None:
            why = errors.ChainerError(f"the run was interrupted ({type(interrupted).__name__}); resume it")
            results = [batch_stopped(session, p, why) for p in plans]
        simulated_run = session.simulator is not None
        default_summary = self.state_dir / "last-run.json"
        write_summary(
            self.summary or (simulated.summary_path(default_summary) if simulated_run else default_summary),
            results,
            extra={
                "simulated": simulated_run,
                "provider": session.provider.name,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                "peak_concurrency": session.scheduler.peak,
                "concurrency_limit": session.scheduler.limit,
                "rejected_creates_1303": session.scheduler.rejections,
            },
        )
        dest = self.report or self.shown_archive(session) / "report.html"
        return write_report(session.journal, results, session.archive_dir, dest)


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
        _print_error(stop)
        return stop.exit_code
    return 0 if all(r.state == "done" for r in results) else 1


def _confirm_spending(
    session: Session, plans: list[Plan], budget: float | None, threshold: float, yes: bool
) -> None:
    """Ask (on a terminal) or refuse (elsewhere) before a run that may spend more than `threshold`."""
    estimate = sum(remaining_units(p, session.journal) for p in plans)
    at_most = min(estimate, budget) if budget is not None else estimate
    if yes or at_most <= threshold:
        return
    price = _money(plans[0].provider, at_most)
    what = (
        f"this run may spend about {at_most:g} units{price} on {session.provider.name} "
        f"({len(plans)} chain{'s' if len(plans) != 1 else ''}"
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


def _money(profile: profiles.Profile, units: float) -> str:
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


@app.command()
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
            raise _fail(exc) from None
    out.print(table)
    if attention:
        raise typer.Exit(1)


@app.command("archive")
def archive_command(
    names: Annotated[list[str] | None, typer.Argument(help="Chains to archive (default: all).")] = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = Path("archive"),
    archive_url: ArchiveUrl = None,
    account: Annotated[
        bool,
        typer.Option(
            "--account",
            help="Also walk the provider's task lists and archive every succeeded video of the account "
            "that the archive lacks, including ones chainer did not make (into ARCHIVE_DIR/_account).",
        ),
    ] = False,
    sim_time_scale: SimTimeScale = EMBEDDED_TIME_SCALE,
) -> None:
    """Download every result not safely archived yet (asking for fresh urls); exit 1 if any could not be."""

    async def archive_journal(path: Path, profile: str) -> tuple[int, int]:
        """Archive one journal's pending results with its own provider: (saved, problems)."""
        async with _journal_session(
            path,
            profile,
            **_where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
        ) as session:
            outcomes = await archive_pending(session, names, on_retry=_show_retry)
        return _tally([(f"{chain} step {step}", outcome) for chain, step, outcome in outcomes])

    async def main() -> int:
        journals = sorted(state_dir.glob("journal-*.sqlite"))
        if not journals:
            out.print(f"No journal in {state_dir}: nothing to archive.", markup=False)
            return 0
        bad = 0
        saved = 0
        for path in journals:
            with Journal(path) as journal:
                chains = journal.chains()
            if not chains:
                continue
            try:
                got, problems = await archive_journal(path, chains[0].profile)
            except errors.ConfigError as exc:  # e.g. no credentials for this journal's provider
                got, problems = 0, 1
                err.print(str(exc) if str(exc).startswith(path.name) else f"{path.name}: {exc}", markup=False)
            saved, bad = saved + got, bad + problems
        if account:
            try:
                got, problems = await sweep(journals)
            except errors.ChainerError as exc:
                got, problems = 0, 1
                err.print(f"account sweep: {exc}", markup=False)
            saved, bad = saved + got, bad + problems
        out.print(f"{saved} result(s) saved; {bad} problem(s).", markup=False)
        return 1 if bad else 0

    async def sweep(journals: list[Path]) -> tuple[int, int]:
        """The account sweep, on the profile the chains ran with; (saved, problems)."""
        known: set[str] = set()
        chains_profile: profiles.Profile | None = None
        for path in journals:
            with Journal(path) as journal:
                for c in journal.chains():
                    known |= {r.video_id for r in journal.steps(c.name) if r.video_id}
                    if chains_profile is None and not simulated.is_simulated_journal(path):
                        chains_profile = profiles.get(c.profile)
        async with Session.open(
            **_where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
            profile=chains_profile,
        ) as session:
            return _tally(await sweep_account(session, on_retry=_show_retry, known=known))

    _run_async(main)


def _tally(outcomes: list[tuple[str, str]]) -> tuple[int, int]:
    """Print each (what, outcome) of an archive command; returns (saved, problems)."""
    saved = 0
    for what, outcome in outcomes:
        if outcome == "saved":
            saved += 1
            out.print(f"{what}: saved", markup=False)
        else:
            err.print(f"{what}: {outcome}", markup=False)
    return saved, len(outcomes) - saved


def _where(
    state_dir: Path,
    archive_dir: Path,
    archive_url: str | None,
    base_url: str | None,
    path_prefix: str | None,
    sim_time_scale: float,
) -> dict[str, Any]:
    """The Session.open settings every command that talks to a provider takes from its flags."""
    return {
        "state_dir": state_dir,
        "archive_dir": archive_dir,
        "archive_url": archive_url,
        "base_url": base_url,
        "path_prefix": path_prefix,
        "sim_config": SimConfig(time_scale=sim_time_scale),
    }


@asynccontextmanager
async def _journal_session(path: Path, profile: str, **common: Any) -> AsyncIterator[Session]:
    """A session on the provider profile a journal's chains were made with (the simulator
    for a simulated journal, the credentials for a real one), or ConfigError saying what is off."""
    async with Session.open(
        **common, profile=profiles.get(profile), simulate=simulated.is_simulated_journal(path)
    ) as session:
        if session.journal.path.resolve() != path.resolve():
            raise errors.ConfigError(
                f"{path.name}: its chains were made with another provider than the credentials set now "
                f"reach ({session.provider.name}); set that provider's credentials"
            )
        yield session


@app.command()
def adopt(
    chain: Annotated[str, typer.Argument(help="The chain (see `chainer status`).")],
    step: Annotated[
        int, typer.Argument(help="The step whose task is unknown (its number in `chainer plan`).")
    ],
    task_id: Annotated[str, typer.Argument(help="The provider's task id, from its console or task list.")],
    state_dir: StateDir = Path(".chainer"),
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
) -> None:
    """Attach an existing task to a step whose create's answer was lost (or that failed), after
    checking with the provider that it is that step's task; the next run goes on from it."""

    async def main() -> int:
        for path in sorted(state_dir.glob("journal-*.sqlite")):
            with Journal(path) as journal:
                row = journal.chain(chain)
            if row is None:
                continue
            async with _journal_session(
                path, row.profile, state_dir=state_dir, base_url=base_url, path_prefix=path_prefix
            ) as session:
                adopted = await adopt_task(session, chain, step, task_id)
            out.print(
                f"step {step} of {chain} is now task {adopted.task_id}; `chainer resume {chain}` (or running "
                "its storyboard) goes on from it: nothing is created for it again",
                markup=False,
            )
            return 0
        raise errors.ConfigError(f"no chain named {chain!r} in {state_dir} (see `chainer status`)")

    _run_async(main)


def _show_retry(exc: Exception, attempt: int, wait: float | None) -> None:
    """Every retry of a request is shown (the run's events do this for `chainer run`)."""
    asked = f"; waiting {wait:g} s as the provider asked" if wait is not None else ""
    err.print(f"retry, attempt {attempt}: {exc}{asked}; trying again", markup=False)


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


@app.command()
def resume(
    names: Annotated[
        list[str] | None, typer.Argument(help="Chains to resume (default: every unfinished one).")
    ] = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = Path("archive"),
    archive_url: ArchiveUrl = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Give failed steps a new attempt (charged again).")
    ] = False,
    sim_time_scale: SimTimeScale = EMBEDDED_TIME_SCALE,
) -> None:
    """Resume unfinished chains from the journal, each from its recorded storyboard."""

    async def main() -> int:
        # Chains live in one journal per provider: look in all of them.
        found: list[tuple[Path, str, Plan | errors.ChainerError]] = []
        for path in sorted(state_dir.glob("journal-*.sqlite")):
            with Journal(path) as journal:
                for c in journal.chains():
                    wanted = c.name in names if names else journal.summary(c.name).state != "done"
                    if wanted:
                        try:
                            found.append((path, c.name, chain_plan(c)))
                        except errors.ChainerError as exc:
                            found.append((path, c.name, exc))
        unknown = set(names or ()) - {name for _, name, _ in found}
        if unknown:
            raise errors.ConfigError(f"no chain named {', '.join(sorted(unknown))} in {state_dir}")
        if not found:
            out.print("Nothing to resume: every chain is done.", markup=False)
            return 0
        failures = 0
        by_journal: dict[Path, list[Plan]] = {}
        for path, name, plan in found:
            if isinstance(plan, errors.ChainerError):
                failures += 1
                err.print(f"{name}: its storyboard cannot be used: {plan}", markup=False)
            else:
                by_journal.setdefault(path, []).append(plan)
        counts: list[int] = []
        async with anyio.create_task_group() as group:  # each journal's provider at once
            for path, plans in by_journal.items():
                group.start_soon(_resume_group, path, plans, counts)
        return 1 if failures or sum(counts) else 0

    async def _resume_group(path: Path, group: list[Plan], counts: list[int]) -> None:
        """Resume the chains of one journal with its own provider, as one batch (the same
        path and failure policy as `chainer run`); counts how many did not finish."""
        try:
            async with _journal_session(
                path,
                group[0].provider.name,
                **_where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
            ) as session:
                with Progress(group, "plain", out) as view:
                    done = await session.run_batch(
                        group, RunOptions(retry_failed=retry_failed), on_event=view.on_event
                    )
        except errors.ConfigError as exc:  # e.g. this journal's provider has no credentials now
            counts.append(len(group))
            err.print(f"{', '.join(p.chain for p in group)}: {exc}", markup=False)
            return
        for result in done.results:
            if result.state == "done":
                out.print(f"Done: {result.output}", markup=False)
            else:
                err.print(f"{result.chain}: {result.message}", markup=False)
        counts.append(sum(r.state != "done" for r in done.results))

    _run_async(main)


providers_app = typer.Typer(
    help="Provider profiles: what differs between Kling and the proxies (list; `check NAME`).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(providers_app, name="providers")


@providers_app.callback()
def providers(ctx: typer.Context) -> None:
    """List the provider profiles (built in, and from the user's providers.toml) and their settings."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        found = profiles.registry()
    except errors.ChainerError as exc:
        raise _fail(exc) from None
    for p in found.values():
        out.print(f"{p.name}: {p.description}", markup=False)
        settings = {
            "base_url": p.base_url or "(set KLING_BASE_URL)",
            "path_prefix": p.path_prefix or "(none)",
            "auth": "JWT from KLING_ACCESS_KEY + KLING_SECRET_KEY" if p.auth == "jwt" else "KLING_API_KEY",
            "send_parent_task_id": p.send_parent_task_id,
            "prompt_max_chars": p.prompt_max_chars,
            "negative_prompt_max_chars": p.negative_prompt_max_chars,
            "extend_fields": ", ".join(p.extend_fields),
            "extend_v1_5": p.extend_v1_5,
            "task_lookup": p.task_lookup,
            "concurrency": p.concurrency,
            "unit_price": f"{p.unit_price:g} {p.currency}" if p.unit_price is not None else "(not set)",
        }
        for key, value in settings.items():
            out.print(f"    {key} = {str(value).lower() if isinstance(value, bool) else value}", markup=False)
    out.print(f"User profiles: {profiles.user_file()}", markup=False)


@providers_app.command("check")
def providers_check(
    name: Annotated[str, typer.Argument(help="The profile to check (see `chainer providers`).")],
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Overrides the profile's base URL.")
    ] = None,
) -> None:
    """Make one cheap authenticated read (a one-task page of the task list): no credits are spent."""

    async def main() -> str:
        profile = profiles.get(name)
        if profile is None:
            raise errors.ConfigError(f"no provider profile {name!r}; see `chainer providers`")
        provider = profiles.from_environment(profile=profile, base_url=base_url)
        if provider is None:
            needs = "KLING_ACCESS_KEY and KLING_SECRET_KEY" if profile.auth == "jwt" else "KLING_API_KEY"
            raise errors.ConfigError(f"no credentials set: {name} needs {needs}")
        async with KlingClient(provider) as client:
            tasks = await client.list_tasks("text2video", page=1, page_size=1)
            found = await balance.fetch(client)
        packs = "".join(
            f"\n    {p.resource_pack_name or p.resource_pack_id} ({p.resource_pack_type or 'untyped'}): "
            f"{p.remaining_quantity:g} of {p.total_quantity:g} units left, {p.status}, valid until "
            f"{balance.day(p.invalid_time)}"
            for p in found.packs
        )
        return (
            f"{name}: credentials and base URL work ({provider.endpoint('/v1/videos/text2video')}, "
            f"{len(tasks)} task(s) on the first page)\n{found.describe()}{packs}"
        )

    try:
        out.print(anyio.run(main), markup=False)
    except errors.ChainerError as exc:
        raise _fail(exc) from None


@app.command()
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
        raise _fail(exc) from None
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
        f"Estimated units: {p.total_units:g}{_money(p.provider, p.total_units)} "
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


@app.command()
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
        output.write_text(text)
        out.print(
            f"wrote {output}; add `# yaml-language-server: $schema={output}` to a storyboard", markup=False
        )


@app.command()
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


# ---- chainer sim's options
SimHost = Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
SimPort = Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")]
SimDialect = Annotated[
    str, typer.Option(help="official (JWT auth) or proxy (bearer key under --path-prefix).")
]
SimPathPrefix = Annotated[
    str, typer.Option("--path-prefix", help="Path prefix for the API routes, e.g. /kling.")
]
SimTaskTimeScale = Annotated[
    float,
    typer.Option(min=0.0001, help="Task time as a fraction of Kling's real minutes (1.0 = real time)."),
]
SimConcurrency = Annotated[
    int, typer.Option(min=1, help="Tasks the account may have in flight; more get code 1303.")
]
SimWidth = Annotated[int, typer.Option(min=64, help="Width of the videos made.")]
SimHeight = Annotated[int, typer.Option(min=64, help="Height of the videos made.")]
SimSeed = Annotated[int, typer.Option(help="Random seed (task ids, timings, extension lengths).")]
SimRequireParentTaskId = Annotated[
    bool, typer.Option(help="Proxy behaviour: video-extend needs the parent task_id.")
]
SimPromptMaxChars = Annotated[
    int, typer.Option(min=1, help="Longest prompt accepted (2500 on Kling, 500 on CometAPI).")
]
SimRefuseV15 = Annotated[bool, typer.Option(help="Refuse to extend kling-v1-5 videos, as some proxies do.")]
SimExternalIdLookup = Annotated[
    bool,
    typer.Option(
        help="Answer lookups by external_task_id (--no-external-id-lookup: like proxies that cannot)."
    ),
]
SimIgnoreExternalTaskId = Annotated[
    bool,
    typer.Option(
        help="Accept external_task_id and throw it away (never stored, echoed or found), as some "
        "proxies do: a test of chainer's own lookup check."
    ),
]
SimLoseCreateRate = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Fault: fraction of creates whose answer is lost (502) after the task was made.",
    ),
]
SimErrorRate = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Fault: fraction of API requests answered 500 / code 5000."),
]
SimRateLimit = Annotated[
    float | None,
    typer.Option(min=0.001, help="API requests per second; more get 429 / code 1302 with Retry-After."),
]
SimUnitBudget = Annotated[
    float | None,
    typer.Option(min=0.0, help="Units in the resource pack; a create past it gets 429 / code 1102."),
]
SimTruncateDownloadRate = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Fault: fraction of downloads cut off half-way.")
]
SimDownloadBytesPerS = Annotated[
    float, typer.Option(min=0.0, help="Serve downloads at most this fast (0: unlimited).")
]
SimLatency = Annotated[
    list[str] | None,
    typer.Option(help="Extra delay per endpoint, ENDPOINT=SECONDS (create, query, download); repeatable."),
]
SimConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML or JSON file of simulator settings (the field names of these options, e.g. "
        "time_scale, lose_create_rate, latency_s); when given, it replaces the option values.",
    ),
]
SimAdmin = Annotated[
    bool, typer.Option(help="Serve the inspection API under /_sim/ (creates, stats, clock).")
]
SimDataDir = Annotated[Path | None, typer.Option(help="Where videos are kept (default: a temporary folder).")]
SimSslCertfile = Annotated[
    Path | None,
    typer.Option("--ssl-certfile", help="Serve https with this PEM certificate (with --ssl-keyfile)."),
]
SimSslKeyfile = Annotated[
    Path | None, typer.Option("--ssl-keyfile", help="The PEM private key of --ssl-certfile.")
]


@app.command()
def sim(
    host: SimHost = "127.0.0.1",
    port: SimPort = 8765,
    dialect: SimDialect = "official",
    path_prefix: SimPathPrefix = "",
    time_scale: SimTaskTimeScale = 1.0,
    concurrency: SimConcurrency = 5,
    width: SimWidth = 640,
    height: SimHeight = 360,
    seed: SimSeed = 0,
    require_parent_task_id: SimRequireParentTaskId = False,
    prompt_max_chars: SimPromptMaxChars = 2500,
    refuse_v1_5: SimRefuseV15 = False,
    external_id_lookup: SimExternalIdLookup = True,
    ignore_external_task_id: SimIgnoreExternalTaskId = False,
    lose_create_rate: SimLoseCreateRate = 0.0,
    error_rate: SimErrorRate = 0.0,
    rate_limit: SimRateLimit = None,
    unit_budget: SimUnitBudget = None,
    truncate_download_rate: SimTruncateDownloadRate = 0.0,
    download_bytes_per_s: SimDownloadBytesPerS = 0.0,
    latency: SimLatency = None,
    config_file: SimConfigFile = None,
    admin: SimAdmin = True,
    data_dir: SimDataDir = None,
    ssl_certfile: SimSslCertfile = None,
    ssl_keyfile: SimSslKeyfile = None,
) -> None:
    """Serve the offline Kling simulator in the foreground until Ctrl-C.

    Official dialect credentials: KLING_ACCESS_KEY=sim-access-key,
    KLING_SECRET_KEY=sim-secret-key-0123456789abcdef0123. Proxy dialect: KLING_API_KEY=sim-api-key.
    Admin API (with --admin): GET /_sim/creates, GET /_sim/stats, POST /_sim/advance?seconds=N.
    """
    config = SimConfig(
        dialect=dialect,
        path_prefix=path_prefix,
        time_scale=time_scale,
        concurrency=concurrency,
        width=width,
        height=height,
        seed=seed,
        send_parent_task_id=require_parent_task_id,
        prompt_max_chars=prompt_max_chars,
        extend_v1_5=not refuse_v1_5,
        lose_create_rate=lose_create_rate,
        error_rate=error_rate,
        task_lookup="external_id" if external_id_lookup else "list",
        ignore_external_task_id=ignore_external_task_id,
        rate_limit_per_s=rate_limit,
        unit_budget=unit_budget,
        truncate_download_rate=truncate_download_rate,
        download_bytes_per_s=download_bytes_per_s,
        latency_s=_latencies(latency or []),
    )
    if config_file is not None:
        config = _sim_config_file(config_file)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        err.print("--ssl-certfile and --ssl-keyfile go together", markup=False)
        raise typer.Exit(2)
    scheme = "https" if ssl_certfile else "http"
    out.print(
        f"Kling simulator ({config.dialect}) on {scheme}://{host}:{port}{config.path_prefix}", markup=False
    )
    serve_forever(
        config,
        data_dir=data_dir,
        host=host,
        port=port,
        admin=admin,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def _latencies(items: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for item in items:
        endpoint, _, seconds = item.partition("=")
        try:
            if endpoint not in ("create", "query", "download"):
                raise ValueError(endpoint)
            found[endpoint] = float(seconds)
        except ValueError:
            err.print(f"--latency {item!r}: expected create=S, query=S or download=S", markup=False)
            raise typer.Exit(2) from None
    return found


def _sim_config_file(path: Path) -> SimConfig:
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text())
        return SimConfig.model_validate(data or {})
    except OSError as exc:
        err.print(f"{path}: cannot read it: {exc.strerror or exc}", markup=False)
    except yaml.YAMLError as exc:
        err.print(f"{path}: not YAML/JSON: {exc}", markup=False)
    except ValidationError as exc:
        for e in exc.errors():
            err.print(f"{path}: {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}", markup=False)
    raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    # chainer reports waits itself; stamina's default hook would print raw log records.
    stamina.instrumentation.set_on_retry_hooks([])
    try:
        app()
    except errors.ChainerError as exc:  # pragma: no cover - commands catch their own
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
