"""`chainer submit` and `chainer worker`: team mode, a shared queue on PostgreSQL (chainer.team)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from .. import callbacks, errors
from ..batch import RunOptions
from ..progress import Mode, Progress, summary_table
from ..session import Session
from .common import (
    ArchiveDir,
    ArchiveUrl,
    BaseUrl,
    CallbackUrl,
    JournalUrl,
    Listen,
    PathPrefix,
    StateDir,
    app,
    err,
    fail,
    journal_url,
    out,
    receive_callbacks,
    run_async,
    where,
)
from .run import (
    RunConcurrency,
    RunJsonEvents,
    RunKeep,
    RunQuiet,
    RunRetryFailed,
    RunStoryboards,
    RunVerbose,
    by_provider,
    run_inputs,
)

#: Chains a worker runs at once unless told: enough to keep its share of the account busy
#: while some of its chains download or wait.
DEFAULT_CHAINS = 4


# ---- chainer worker's own options
WorkerChains = Annotated[int, typer.Option("--chains", min=1, help="Chains this worker runs at once.")]
WorkerUntilIdle = Annotated[
    bool,
    typer.Option("--until-idle", help="Exit once no chain is queued (by default a worker waits for more)."),
]
WorkerLease = Annotated[
    float | None,
    typer.Option(
        "--lease",
        envvar="CHAINER_LEASE_SECONDS",
        min=0.1,
        help="Seconds a chain stays this worker's without renewal (default 30): after its death, "
        "another worker takes its chains over this long after its last renewal.",
    ),
]


def _team_journal(journal: str | None) -> str:
    """The --journal a team command needs, or the error that says how to give it."""
    url = journal_url(journal)
    if url is None:
        raise errors.ConfigError(
            "team mode needs a journal on PostgreSQL that every machine reaches: pass --journal "
            "postgresql://USER@HOST:PORT/DB or set CHAINER_JOURNAL (see README: Team mode)"
        )
    return url


def _say_lost(name: str) -> None:
    err.print(
        f"Lost the lease of chain {name} (another worker took it over after this one was cut off "
        "from the journal): stopped running it here",
        markup=False,
    )


@app.command(short_help="Queue storyboards for a team's workers (team mode).")
def submit(
    storyboards: RunStoryboards,
    journal: JournalUrl = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
) -> None:
    """Check storyboards as `chainer run` does and put their chains on the shared queue in the
    journal on PostgreSQL; any `chainer worker` of the team takes them. Nothing is sent to the
    provider here."""
    plans, _ = run_inputs(storyboards, None, None, False, None)
    try:
        url = _team_journal(journal)
        refused = [w for p in plans for w in p.placeholders]
        if refused:
            raise errors.StoryboardError(refused)
        if len(by_provider(plans)) > 1:
            raise errors.ConfigError(
                "these storyboards name several providers; a team's journal holds one provider's "
                "chains: submit each provider's storyboards to its own database"
            )
    except errors.ChainerError as exc:
        raise fail(exc) from None
    common = where(state_dir, None, None, base_url, path_prefix, 1.0, url)

    async def main() -> int:
        from ..team import queue  # loads the PostgreSQL driver: only for the team's commands

        async with Session.open(**common, profile=plans[0].provider) as session:
            names = queue.submit(session.journal, plans, session.provider.name)
            waiting = queue.outstanding(session.journal)
        out.print(
            f"Queued {len(names)} chain(s) on {session.journal.where}: {', '.join(names)} "
            f"({waiting} queued in all). Any `chainer worker` with this --journal takes them.",
            markup=False,
        )
        return 0

    run_async(main)


@app.command("worker", short_help="Take chains from the queue and run them (team mode).")
def worker_command(
    journal: JournalUrl = None,
    chains: WorkerChains = DEFAULT_CHAINS,
    until_idle: WorkerUntilIdle = False,
    lease: WorkerLease = None,
    concurrency: RunConcurrency = None,
    base_url: BaseUrl = None,
    path_prefix: PathPrefix = None,
    state_dir: StateDir = Path(".chainer"),
    archive_dir: ArchiveDir = None,
    archive_url: ArchiveUrl = None,
    retry_failed: RunRetryFailed = False,
    keep: RunKeep = None,
    json_events: RunJsonEvents = False,
    quiet: RunQuiet = False,
    verbose: RunVerbose = False,
    callback_url: CallbackUrl = None,
    listen: Listen = callbacks.DEFAULT_LISTEN,
) -> None:
    """Take chains from the team's queue and run them under the account's limit, which every
    worker shares through the journal; a chain whose worker died is taken over once its lease
    runs out, without paying for any step twice. Exits 1 if a chain stopped for you."""
    if lease is not None:
        os.environ["CHAINER_LEASE_SECONDS"] = str(lease)
    if keep not in (None, "all", "final"):
        err.print(f"--keep {keep!r}: expected all or final", markup=False)
        raise typer.Exit(2)
    mode: Mode = "json" if json_events else "quiet" if quiet else "plain"
    talk = err if mode in ("json", "quiet") else out
    options = RunOptions(retry_failed=retry_failed, keep="final" if keep == "final" else None)

    async def main() -> int:
        from ..team.worker import work  # loads the PostgreSQL driver: only for the team's commands

        common = where(
            state_dir, archive_dir, archive_url, base_url, path_prefix, 1.0, _team_journal(journal)
        )
        async with contextlib.AsyncExitStack() as stack:
            hub = await receive_callbacks(stack, callback_url, listen, talk)
            session = await stack.enter_async_context(
                Session.open(**common, callbacks=hub, concurrency=concurrency)
            )
            talk.print(
                f"Worker: journal {session.journal.where}, provider {session.provider.name} at "
                f"{session.provider.base_url}, up to {chains} chain(s) at once; account limit "
                f"{session.scheduler.limit} shared by every worker.",
                markup=False,
            )
            with Progress([], mode, out, verbose=verbose) as view:
                done = await work(
                    session,
                    options,
                    at_once=chains,
                    until_idle=until_idle,
                    on_event=view.on_event,
                    on_take=lambda name: talk.print(f"Took chain {name}", markup=False),
                    on_lost=_say_lost,
                )
                view.finish(done.results)
        if done.results and mode != "json":
            out.print(summary_table(done.results))
        if done.fatal is not None:
            raise done.fatal
        return 1 if any(r.state != "done" for r in done.results) else 0

    run_async(main)
