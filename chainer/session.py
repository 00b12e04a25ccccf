"""A session: one provider, one journal, one archive, ready to run chains from Python.

    from chainer import Session, load_plan
    async with Session.open(state_dir=".chainer", archive_dir="archive") as session:
        result = await session.run(load_plan("storyboards/lighthouse.yaml"))

With no provider given and no credentials in the environment, the session starts the
offline simulator in-process on a free loopback port: no credits are spent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc
import httpx

from . import archive, batch, downloads, preflight, simulated
from .batch import Batch, RunOptions
from .callbacks import CallbackHub
from .engine import CreateGate, RunContext
from .engine.context import DOWNLOADS_AT_ONCE
from .errors import ConfigError
from .events import ChainResult, Event
from .journal import Journal, is_database_url
from .lookup import LookupCheck
from .plan import Plan, rebuild
from .polling import PollPolicy
from .profiles import BUILTIN, Profile, from_environment
from .provider.client import DEFAULT_LIMITS, DEFAULT_TIMEOUT, KlingClient
from .provider.config import ProviderConfig
from .scheduler import Scheduler
from .simulator import SimConfig

if TYPE_CHECKING:  # team mode's modules load the PostgreSQL driver: imported where used
    from .simulator import Simulator
    from .team.slots import SharedSlots

#: Tasks in flight at once when neither the command line nor the profile says otherwise.
DEFAULT_CONCURRENCY = 5
#: The embedded simulator runs tasks this many times faster than Kling (minutes become seconds).
EMBEDDED_TIME_SCALE = 0.05


def _may_simulate(simulate: bool | None, state: Path, archive: Path, real: dict[str, list[str]]) -> None:
    """Refuse the embedded simulator where the user did not ask for it and it is not safe."""
    if simulate is True:
        return
    creds = "KLING_ACCESS_KEY + KLING_SECRET_KEY (official API) or KLING_API_KEY (a proxy)"
    if simulate is False:
        raise ConfigError(f"no Kling credentials are set: this needs {creds}")
    if real:
        held = "; ".join(f"{journal}: {', '.join(names)}" for journal, names in real.items())
        raise ConfigError(
            f"no Kling credentials are set ({creds}), and {state} holds chains run for real ({held}). "
            "chainer will not switch to the offline simulator here. Set the credentials (a cron job "
            "needs them in its own environment), or pass --simulate to rehearse on the simulator "
            f"(its results are kept apart: NAME.simulated.mp4, {simulated.archive_root(archive)}/)"
        )


async def _clients(
    stack: AsyncExitStack, transport: httpx.AsyncBaseTransport | None
) -> tuple[httpx.AsyncClient, downloads.Http]:
    """The API's client, and what results are downloaded with: a blocking client read in
    worker threads on the network (downloads.py), the API's own under a test's transport.
    Both share one TLS context (building one reads the CA bundle: about 50 ms a start)."""
    tls = httpx.create_ssl_context()
    http = await stack.enter_async_context(
        httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=DEFAULT_LIMITS, transport=transport, verify=tls)
    )
    if transport is not None:
        return http, http
    return http, stack.enter_context(downloads.blocking_client(verify=tls))


def _state_folder(state: Path) -> Path:
    """`state`, made if missing, or ConfigError saying it cannot be (nothing was sent)."""
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the state folder {state}: {exc.strerror or exc}; choose another "
            "--state-dir (nothing was sent)"
        ) from None
    return state


def _no_team_simulator(journal: str | os.PathLike[str] | None) -> None:
    """A journal on a server is shared by workers that must reach one provider: an embedded
    simulator would be one private account per worker."""
    if journal is not None and is_database_url(journal):
        raise ConfigError(
            "a journal on PostgreSQL is shared by workers that must all reach one provider, and no "
            "credentials are set: set KLING_ACCESS_KEY + KLING_SECRET_KEY or KLING_API_KEY (to rehearse, "
            "point them at one `chainer sim` server: README, Team mode)"
        )


def _slots(journal: Journal, provider: ProviderConfig, limit: int) -> Scheduler | SharedSlots:
    """The account's slots: counted in this process, or in a team's database (imported
    only then: a run on a journal file never loads the PostgreSQL driver)."""
    if not journal.db.shared:
        return Scheduler(limit)
    from .team.database import PgDb
    from .team.slots import SharedSlots

    assert isinstance(journal.db, PgDb)
    journal.db.bind_provider(provider.name)
    return SharedSlots(journal.db, provider.name, limit, time_scale=provider.time_scale)


def simulator_provider(
    sim: Simulator, *, time_scale: float, name: str = "simulator", base_url: str | None = None
) -> ProviderConfig:
    """A ProviderConfig that talks to `sim` in its own dialect with its own credentials
    (at `base_url`: IN_PROCESS_URL for a simulator served in-process)."""
    cfg = sim.config
    url = base_url or sim.base_url
    official = cfg.dialect == "official"
    return Profile.of_simulator(cfg, name=name, base_url=url).client_config(
        base_url=url,
        access_key=cfg.access_key if official else "",
        secret_key=cfg.secret_key if official else "",
        api_key="" if official else cfg.api_key,
        time_scale=time_scale,
        offline=True,
    )


@dataclass
class Session:
    provider: ProviderConfig
    journal: Journal
    client: KlingClient
    #: What results are downloaded with (the API has its own client, `client`).
    http: downloads.Http
    archive_dir: Path
    poll: PollPolicy
    scheduler: Scheduler | SharedSlots
    simulator: Simulator | None = None
    mirror: archive.Mirror | None = None
    downloads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(DOWNLOADS_AT_ONCE))
    #: One check a session of whether the provider finds tasks by external_task_id.
    lookup: LookupCheck | None = None
    #: Chains of the state folder that were run for real (the simulator never touches them).
    real_chains: frozenset[str] = frozenset()
    #: Shut by the first account error (1100-1103): no more creates from this session.
    gate: CreateGate = field(default_factory=CreateGate)
    #: The callback receiver, when the session was opened with a callback_url.
    callbacks: CallbackHub | None = None

    def __post_init__(self) -> None:
        if self.lookup is None:
            self.lookup = LookupCheck(self.client, self.journal)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        state_dir: str | os.PathLike[str] = ".chainer",
        archive_dir: str | os.PathLike[str] | None = None,
        provider: ProviderConfig | None = None,
        base_url: str | None = None,
        path_prefix: str | None = None,
        sim_config: SimConfig | None = None,
        concurrency: int | None = None,
        profile: Profile | None = None,
        archive_url: str | None = None,
        simulate: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        callbacks: CallbackHub | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> AsyncIterator[Session]:
        """Resolve the provider (flags, environment, else the embedded simulator) and open everything.

        `profile` is the provider profile the storyboards name; with no credentials set,
        the embedded simulator imitates it (prefix, auth, required fields, limits).
        `simulate`: True uses the embedded simulator whatever the environment says; False
        never does (no credentials is then an error); None (the default) uses it only when
        no credentials are set and nothing was ever run for real from `state_dir`. The
        simulator's results are kept apart from real ones (see chainer.simulated).
        `archive_dir`: None is the one recorded in `state_dir` (chainer.archive.location),
        else `archive/` beside it.
        `callbacks`: a running callback receiver (`chainer.receiver.receiving`); each create
        then carries its URL, and pollers are woken by what it hears.
        `transport`: the seam under the API's requests (tests serve a simulator in-process
        through it, or wrap one to inject faults); downloads go through it too when it is
        given, and otherwise read the network in worker threads (downloads.py).
        `journal`: where the journal lives, a file or a PostgreSQL URL (team mode: several
        workers then share it and count the account's slots in it); None is the state
        folder's file for the provider.
        """
        state = _state_folder(Path(state_dir))
        archive_root = archive.location(state, archive_dir)
        real = simulated.real_history(state) if state.is_dir() else {}
        async with AsyncExitStack() as stack:
            sim: Simulator | None = None
            if provider is None and simulate is not True:
                provider = from_environment(profile=profile, base_url=base_url, path_prefix=path_prefix)
            if provider is None:
                _may_simulate(simulate, state, archive_root, real)
                _no_team_simulator(journal)
                chosen = profile or BUILTIN["kling"]
                config = chosen.simulator_config(
                    sim_config or SimConfig(time_scale=EMBEDDED_TIME_SCALE, seed=0)
                )
                from .simulator import Simulator  # its server and renderer: only when it runs

                sim = stack.enter_context(Simulator(config, data_dir=state / "simulator"))
                name = simulated.simulator_name(chosen.name)
                provider = simulator_provider(sim, time_scale=config.time_scale, name=name)
                archive_root = simulated.archive_root(archive_root)
            kept = stack.enter_context(Journal(journal or state / f"journal-{provider.name}.sqlite"))
            http, fetcher = await _clients(stack, transport)
            client = await stack.enter_async_context(KlingClient(provider, http=http))
            scheduler = _slots(kept, provider, concurrency or provider.concurrency or DEFAULT_CONCURRENCY)
            if sim is not None and archive_url:  # the mirror of real results is never written either
                archive_url = simulated.archive_url(archive_url)
            mirror = archive.Mirror(archive_url) if archive_url else None
            yield cls(
                provider,
                kept,
                client,
                fetcher,
                archive_root.resolve(),  # so a resume from another working folder finds its files
                PollPolicy().scaled(provider.time_scale),
                scheduler,
                sim,
                mirror,
                real_chains=frozenset(name for names in real.values() for name in names),
                callbacks=callbacks,
            )

    def own(self, plan: Plan) -> Plan:
        """`plan` as this session runs it: on the embedded simulator, with its output kept
        apart from real results, and refused outright for a chain with real history."""
        if self.simulator is None:
            return plan
        if plan.chain in self.real_chains:
            raise ConfigError(
                f"chain {plan.chain!r} was run for real from {self.journal.folder}; the offline "
                "simulator never runs it (its results would mix with paid ones). Set the provider's "
                "credentials to go on with it, or rehearse under another `name`"
            )
        return dataclasses.replace(plan, output=simulated.output_path(plan.output))

    async def run_batch(
        self,
        plans: list[Plan],
        options: RunOptions | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> Batch:
        """Run (or resume) `plans` together under the account's limit: the one run path
        (chainer.batch). Never raises for a chain's failure: each chain has a result, and
        an error that stopped the whole run is `fatal`."""
        return await batch.run_batch(self, plans, options=options or RunOptions(), on_event=on_event)

    async def run(
        self,
        plan: Plan,
        *,
        on_event: Callable[[Event], None] | None = None,
        retry_failed: bool = False,
        max_units: float | None = None,
        resend_unknown: bool = False,
        keep: Literal["all", "final"] | None = None,
        from_step: int | None = None,
        from_last_frame: bool = False,
        budget: float | None = None,
    ) -> ChainResult:
        """Run (or resume) one chain to its finished video: a batch of one whose error, if
        it stopped, is raised.

        `retry_failed` gives a failed step a new attempt (a new external_task_id, a new
        charge); `max_units` overrides the storyboard's budget for this chain; `budget` is
        the run's; `resend_unknown` sends again a create whose answer was lost at a
        provider that cannot be asked (after the user checked that no task was made);
        `from_step` re-rolls: steps from there on are made again as new takes, branching
        at the previous step's video, the old takes kept; `from_last_frame` starts that
        step from the last frame of the previous step's archived video instead (a
        hand-off), for when Kling has deleted the video.
        """
        options = RunOptions(
            retry_failed, max_units, resend_unknown, keep, budget, from_step, from_last_frame
        )
        done = await self.run_batch([plan], options, on_event=on_event)
        return done.raise_for_one()

    async def run_many(
        self,
        plans: list[Plan],
        *,
        on_event: Callable[[Event], None] | None = None,
        retry_failed: bool = False,
        max_units: float | None = None,
        resend_unknown: bool = False,
        keep: Literal["all", "final"] | None = None,
        budget: float | None = None,
    ) -> list[ChainResult]:
        """Run (or resume) many chains at once (see run_batch); an error that stopped the
        whole run (credentials, the account) is raised after every chain has stopped."""
        options = RunOptions(retry_failed, max_units, resend_unknown, keep, budget)
        done = await self.run_batch(plans, options, on_event=on_event)
        if done.fatal is not None:
            raise done.fatal
        return done.results

    def preflight(self, plans: list[Plan], *, budget: float | None = None) -> None:
        """Before anything is spent: can every folder these plans write be written, with room
        for as much of them as their budgets (each chain's, the run's) can pay for?"""
        needs = []
        if self.journal.folder is not None:  # a journal on a server needs no room here
            needs.append(preflight.Need(self.journal.folder, 1_000_000, "the journal"))
        for p in plans:
            done = {r.idx for r in self.journal.steps(p.chain) if r.state == "downloaded"}
            # A provider whose tasks run at another pace than Kling's (CHAINER_TIME_SCALE set)
            # is a rehearsal against a simulator: its videos are the simulator's small ones.
            rehearsal = self.provider.offline or self.provider.time_scale != 1
            rate = (
                preflight.SIMULATED_BYTES_PER_SECOND
                if rehearsal
                else preflight.BYTES_PER_SECOND.get(p.mode, max(preflight.BYTES_PER_SECOND.values()))
            )
            caps = [u for u in (p.max_units, budget) if u is not None]
            results, output = preflight.expected_bytes(
                p, rate=rate, done=done, max_units=min(caps) if caps else None
            )
            needs.append(preflight.Need(self.archive_dir / p.chain, results, f"{p.chain}'s results"))
            needs.append(preflight.Need(p.output_abs.parent, output, f"{p.chain}'s output"))
        preflight.check(needs)

    def with_journal_handoffs(self, plan: Plan, from_step: int | None, from_last_frame: bool) -> Plan:
        """The plan with the hand-offs this chain's journal already has (a re-roll made them
        where the storyboard alone would not), plus a new one at `from_step` if asked."""
        if from_last_frame and from_step is None:
            raise ConfigError("from_last_frame needs from_step: the step to start from the last frame")
        kinds = {s.index: s.kind for s in plan.steps}
        if from_last_frame and from_step is not None and kinds.get(from_step) == "omni-video":
            raise ConfigError(
                f"--from-last-frame: step {from_step} is an Omni-Video shot, which references the "
                "previous shot's video by url, not a frame; re-roll it with --from-step alone"
            )
        forced = self.journal.view(plan.chain).handoffs()  # none for a chain never run
        if from_step is not None:
            forced = {i for i in forced if i < from_step} | ({from_step} if from_last_frame else set())
        if forced <= set(plan.handoffs):
            return plan
        return rebuild(plan, handoffs=forced)

    def context(self, on_event: Callable[[Event], None] | None = None) -> RunContext:
        """What a runner (or the archiver) needs from this session."""
        return RunContext(
            client=self.client,
            journal=self.journal,
            http=self.http,
            archive_dir=self.archive_dir,
            poll=self.poll,
            scheduler=self.scheduler,
            on_event=on_event or (lambda event: None),
            mirror=self.mirror,
            downloads=self.downloads,
            lookup=self.lookup,
            gate=self.gate,
            callbacks=self.callbacks,
        )
