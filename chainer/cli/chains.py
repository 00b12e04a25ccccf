"""`chainer archive`, `adopt` and `resume`: commands that act on the chains in the journals."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import anyio
import typer

from .. import callbacks, errors, profiles, simulated
from ..adopt import adopt as adopt_task
from ..batch import RunOptions
from ..callbacks import CallbackHub
from ..journal import Journal
from ..plan import Plan, chain_plan
from ..progress import Progress
from ..session import EMBEDDED_TIME_SCALE, Session
from ..sweep import archive_pending, sweep_account
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
    journal_session,
    journal_url,
    out,
    receive_callbacks,
    run_async,
    show_retry,
    where,
)


@app.command("archive", short_help="Download every result not archived yet.")
def archive_command(
    names: Annotated[list[str] | None, typer.Argument(help="Chains to archive (default: all).")] = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = None,
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
        async with journal_session(
            path,
            profile,
            **where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
        ) as session:
            outcomes = await archive_pending(session, names, on_retry=show_retry)
        return _tally([(f"{chain} step {step}", outcome) for chain, step, outcome in outcomes])

    async def main() -> int:
        journals = sorted(state_dir.glob("journal-*.sqlite"))
        unknown = set(names or ()) - {c for path in journals for c in _chain_names(path)}
        if unknown:
            raise errors.ConfigError(
                f"no chain named {', '.join(sorted(unknown))} in {state_dir} (see `chainer status`"
                + (", or --state-dir for the folder the chains were run from)" if not journals else ")")
            )
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
            **where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
            profile=chains_profile,
        ) as session:
            return _tally(await sweep_account(session, on_retry=show_retry, known=known))

    run_async(main)


def _chain_names(journal_path: Path) -> list[str]:
    with Journal(journal_path) as journal:
        return [c.name for c in journal.chains()]


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


@app.command(short_help="Attach a found task to a step whose answer was lost.")
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
            async with journal_session(
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

    run_async(main)


_Found = tuple[Path | str, str, Plan | errors.ChainerError]


def _to_resume(state_dir: Path, names: list[str] | None, url: str | None = None) -> list[_Found]:
    """(journal, chain, its plan or why it has none) for the chains named, else every
    unfinished one. Chains live in one journal per provider: all of them are read (or the
    one on a server, `url`)."""
    journals: list[Path | str] = [url] if url else sorted(state_dir.glob("journal-*.sqlite"))
    if not journals:
        raise errors.ConfigError(
            f"No journal in {state_dir}: nothing was run from here. Run `chainer resume` in the "
            "folder you ran `chainer run` in, or pass --state-dir"
        )
    found: list[_Found] = []
    for path in journals:
        with Journal(path) as journal:
            for c in journal.chains():
                if c.name in names if names else journal.summary(c.name).state != "done":
                    try:
                        found.append((path, c.name, chain_plan(c)))
                    except errors.ChainerError as exc:
                        found.append((path, c.name, exc))
    return found


@app.command(short_help="Resume unfinished chains from the journals.")
def resume(
    names: Annotated[
        list[str] | None, typer.Argument(help="Chains to resume (default: every unfinished one).")
    ] = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = None,
    archive_url: ArchiveUrl = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Give failed steps a new attempt (charged again).")
    ] = False,
    sim_time_scale: SimTimeScale = EMBEDDED_TIME_SCALE,
    callback_url: CallbackUrl = None,
    listen: Listen = callbacks.DEFAULT_LISTEN,
    journal: JournalUrl = None,
) -> None:
    """Resume unfinished chains from the journal, each from its recorded storyboard."""

    async def main() -> int:
        url = journal_url(journal)
        found = _to_resume(state_dir, names, url)
        unknown = set(names or ()) - {name for _, name, _ in found}
        if unknown:
            place: object = state_dir
            if url:
                from ..team.database import redact  # the PostgreSQL driver: only with a server journal

                place = redact(url)
            raise errors.ConfigError(f"no chain named {', '.join(sorted(unknown))} in {place}")
        if not found:
            out.print("Nothing to resume: every chain is done.", markup=False)
            return 0
        failures = 0
        by_journal: dict[Path | str, list[Plan]] = {}
        for path, name, plan in found:
            if isinstance(plan, errors.ChainerError):
                failures += 1
                err.print(f"{name}: its storyboard cannot be used: {plan}", markup=False)
            else:
                by_journal.setdefault(path, []).append(plan)
        counts: list[int] = []
        async with contextlib.AsyncExitStack() as stack:
            hub = await receive_callbacks(stack, callback_url, listen, err)
            async with anyio.create_task_group() as group:  # each journal's provider at once
                for path, plans in by_journal.items():
                    group.start_soon(_resume_group, path, plans, counts, hub)
        return 1 if failures or sum(counts) else 0

    async def _resume_group(
        path: Path | str, group: list[Plan], counts: list[int], hub: CallbackHub | None
    ) -> None:
        """Resume the chains of one journal with its own provider, as one batch (the same
        path and failure policy as `chainer run`); counts how many did not finish."""
        try:
            async with journal_session(
                path,
                group[0].provider.name,
                **where(state_dir, archive_dir, archive_url, base_url, path_prefix, sim_time_scale),
                callbacks=hub,
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

    run_async(main)
