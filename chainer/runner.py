"""The runner: drives one chain's plan to a finished video, one journaled step at a time.

The runner owns the order of things. For each step it asks the journal where the step
stands and moves it one transition further, so a run that stopped anywhere (Ctrl-C, a
crash, a reboot) continues exactly there:

- planned:        derive the external_task_id and commit `submit_intent` before any POST
- submit_intent / submit_unknown: look the task up by external_task_id when the outcome
                  of an earlier POST is unknown; POST only when no task exists. The same
                  external_task_id is reused, and Kling refuses a duplicate, so a create
                  can never be paid twice
- submitted:      poll until the task succeeds (commit its video) or fails (stop the chain)
- succeeded:      download and verify the result into the archive, then commit
- downloaded:     nothing left to do

When every step is downloaded, the last result (the whole video) is published to the
chain's output path.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import itertools
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, assert_never, cast

import anyio
import httpx
from anyio.abc import TaskGroup
from PIL import Image

from . import archive, errors, failpoints, media, report, rules
from .budget import RunBudget
from .journal import Journal, StepRow, drops_at_joins, part_ends, video_length
from .lookup import LookupCheck
from .plan import Plan, Step
from .polling import PollPolicy, next_delay
from .provider.client import KlingClient
from .provider.wire import (
    CreateRequest,
    Image2VideoRequest,
    OmniImage,
    OmniVideo,
    OmniVideoRequest,
    Task,
    Text2VideoRequest,
    VideoExtendRequest,
)
from .retry import (
    MAX_RETRY_AFTER_S,
    UNREACHABLE_DEADLINE_S,
    OnRetry,
    create_backoff,
    download_backoff,
    read_backoff,
    retrying,
)
from .scheduler import Scheduler

#: How long reads (polls, lookups, downloads) keep retrying transient errors.
READ_DEADLINE_S = 600.0
#: How long a create keeps retrying 1302/1303 and unsent requests before giving up.
CREATE_DEADLINE_S = 3600.0
#: Downloads running at once in one run (each streams; the limit spares bandwidth and disk).
DOWNLOADS_AT_ONCE = 4
#: Lookup rounds after an ambiguous create before asking the user to check by hand.
RECONCILE_ROUNDS = 3
#: A list scan looks at tasks created from this long before the create was first tried.
LIST_WINDOW_MS = 60_000
#: ... over at most this many pages of LIST_PAGE_SIZE tasks.
LIST_PAGES = 20
LIST_PAGE_SIZE = 100


@dataclass(frozen=True)
class Event:
    """One thing worth telling the user about a chain."""

    chain: str
    step: int
    steps: int
    state: str
    message: str = ""
    total_seconds: float | None = None
    #: Units this chain has spent so far (as the provider reported them).
    units: float = 0.0


@dataclass
class ChainResult:
    chain: str
    state: Literal["done", "failed", "needs_attention"]
    output: Path | None
    duration: float | None
    units: float
    message: str = ""


@dataclass
class CreateGate:
    """Closed for the whole run by the first account error (1100-1103): no chain sends
    another create, while tasks already paid for are still polled and archived."""

    reason: errors.ApiError | None = None


@dataclass
class RunContext:
    """What every chain of a run shares: the provider, the journal, the archive."""

    client: KlingClient
    journal: Journal
    http: httpx.AsyncClient
    archive_dir: Path
    poll: PollPolicy = field(default_factory=PollPolicy)
    scheduler: Scheduler = field(default_factory=lambda: Scheduler(5))
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

    def __post_init__(self) -> None:
        if self.lookup is None:
            self.lookup = LookupCheck(self.client, self.journal)


class ChainRunner:
    """Runs one plan. Construct, then `await run()`."""

    def __init__(
        self,
        plan: Plan,
        ctx: RunContext,
        *,
        retry_failed: bool = False,
        max_units: float | None = None,
        resend_unknown: bool = False,
        keep: Literal["all", "final"] | None = None,
        from_step: int | None = None,
        settle_before: int | None = None,
    ):
        self.plan = plan
        #: The command line's retention wins over the storyboard's.
        self.keep = keep
        self.ctx = ctx
        self.folder = ctx.archive_dir / plan.chain
        self.retry_failed = retry_failed
        #: The user checked that a create whose answer was lost made no task: send it again.
        self.resend_unknown = resend_unknown
        #: The command line's budget wins over the storyboard's.
        self.max_units = max_units if max_units is not None else plan.max_units
        #: Re-roll: regenerate the steps from this one on as new takes (see `_reroll`).
        self.from_step = from_step
        #: Before a re-roll from this step: finish what is in flight from here on (it is paid
        #: for), create nothing new from here on, publish nothing.
        self.settle_before = settle_before
        self._fresh_intents: set[int] = set()
        #: Contact sheet pictures taken as each result lands, by (step, take).
        self._thumbs: dict[tuple[int, int], Image.Image] = {}
        #: Steps holding one of the account's slots -> whether their task surely exists.
        self._holding: dict[int, bool] = {}
        #: Tasks a list scan could not tell apart from ours, by step (offered for adoption).
        self._candidates: dict[int, list[Task]] = {}

    # ------------------------------------------------------------------ top level

    async def run(self) -> ChainResult:
        try:
            return await self._run()
        finally:
            # However the chain stopped, nothing of it polls any more: its slots go back to
            # the batch (a task that does exist on the account is then met as a 1303).
            for idx in list(self._holding):
                self.ctx.scheduler.release(created=self._holding.pop(idx))

    async def _run(self) -> ChainResult:
        journal = self.ctx.journal
        journal.lock_chain(self.plan.chain)
        chain = journal.ensure_chain(
            name=self.plan.chain,
            storyboard=str(self.plan.storyboard.resolve()),
            storyboard_sha=self.plan.storyboard_sha256,
            provider=self.ctx.client.config.name,
            model=self.plan.model,
            mode=self.plan.mode,
            output=str(self.plan.output.resolve()),
            steps=[(s.index, s.kind, s.prompt, s.fingerprint) for s in self.plan.steps],
            storyboard_text=self.plan.storyboard_text or None,
        )
        if self.from_step is not None:
            self._reroll(self.from_step)
        self._match_storyboard()
        journal.set_max_units(chain.name, self.max_units)
        parent: StepRow | None = None
        stop: errors.ChainerError | None = None
        try:
            async with anyio.create_task_group() as background:
                try:
                    parent = await self._walk(background)
                except (
                    errors.BudgetExceeded,
                    errors.TaskFailed,
                    errors.AccountError,
                    errors.CreatesStopped,
                ) as exc:
                    stop = exc  # leaving the group still waits for the downloads of what was paid for
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        if stop is not None:
            await self._write_manifest()
            await self._write_partial(stop)
            raise stop
        if self.settle_before is not None:
            await self._write_manifest()
            return ChainResult(chain.name, "needs_attention", None, self._length(), self.units_spent())
        assert parent is not None
        rows = journal.steps(chain.name)
        try:
            duration = await self._publish(rows, parent)
        except OSError as exc:
            raise errors.WriteError(
                f"chain {chain.name!r}: every result is paid for and archived in {self.folder} "
                f"(manifest.json lists them), but the output {self.plan.output} could not be written: "
                f"{exc.strerror or exc}. Make room or fix the folder, then run the same command again: it "
                "writes the output from the archive and pays for nothing again"
            ) from exc
        try:
            await anyio.to_thread.run_sync(
                functools.partial(
                    report.contact_sheet,
                    self.plan.output,
                    rows,
                    self.folder / archive.CONTACT_SHEET,
                    known=self._thumbs,
                )
            )
        except errors.MediaError as exc:  # the video is done and archived; the sheet is a courtesy
            self._emit(parent.idx, "warning", f"no contact sheet: {exc}")
        if (self.keep or self.plan.keep) == "final":
            await self._prune(keep={r.idx for r in part_ends(rows)})
        await self._write_manifest()
        journal.set_chain_state(chain.name, "done")
        self._emit(parent.idx, "done", f"wrote {self.plan.output}", duration)
        return ChainResult(
            chain=chain.name,
            state="done",
            output=self.plan.output,
            duration=duration,
            units=self.units_spent(),
        )

    def _match_storyboard(self) -> None:
        """The journal's steps must be the plan's. An edit of steps never sent is taken (the
        user's change, nothing paid is touched); an edit of a step already sent is refused
        with the ways on: finish the chain as it began, or branch with the new text."""
        journal, name = self.ctx.journal, self.plan.chain
        rows = [r for r in journal.steps(name) if r.idx < len(self.plan.steps) or r.state != "skipped"]
        steps = self.plan.steps
        changed = [s.index for s, r in zip(steps, rows, strict=False) if s.fingerprint != r.fingerprint]
        if not changed and len(rows) == len(steps):
            return
        first = changed[0] if changed else min(len(rows), len(steps))
        sent = [r for r in rows if r.idx >= first and r.state != "planned"]
        if not sent:
            journal.replan(
                name,
                first,
                [(s.index, s.kind, s.prompt, s.fingerprint) for s in steps],
                self.plan.storyboard_sha256,
                self.plan.storyboard_text or None,
            )
            self._emit(
                first, "replanned", f"steps {first}.. taken from the edited storyboard (none was sent)"
            )
            return
        branch = max(first, 1)
        raise errors.StoryboardChanged(
            f"the storyboard of chain {name!r} changed since it was started (first changed step: {first}), "
            f"and step {sent[0].idx} was already sent ({sent[0].state.replace('_', ' ')}). chainer will not "
            f"mix old and new steps. Either finish the chain as it began: `chainer resume {name}` (it uses "
            "the storyboard text kept in the journal); or branch with the new text from step "
            f"{branch} (--from-step {branch}): `chainer run {self.plan.storyboard} --from-step {branch}` "
            "(steps before it are kept; a task still in flight is finished and archived first, it is "
            "paid for)"
        )

    async def _walk(self, background: TaskGroup) -> StepRow:
        """Advance every step in order; returns the last one. Downloads overlap in `background`."""
        journal, chain = self.ctx.journal, self.plan.chain
        parent: StepRow | None = None
        for n, step in enumerate(self.plan.steps):
            row = journal.step(chain, step.index)
            if self._settling(step) and row.state in ("planned", "failed"):
                break
            if row.state == "planned" and step.optional and parent is not None:
                reason = self._no_longer_needed(step, parent)
                if reason:
                    row = journal.transition(row, "skipped", reason)
                    self._emit(step.index, "skipped", reason)
            if row.state == "skipped":
                continue
            if row.state == "failed" and self.retry_failed:
                row = journal.new_attempt(row, "--retry-failed")
                self._emit(step.index, "retrying", f"attempt {row.attempt} after: {row.error or 'failure'}")
            # A result is archived while the next step is already generating (it only
            # needs the video id), unless the next step starts from this file.
            after = self.plan.steps[n + 1] if n + 1 < len(self.plan.steps) else None
            overlap = background if after is not None and not after.handoff else None
            row = await self._advance(step, row, parent, background=overlap)
            parent = row
            await self._write_manifest()
        assert parent is not None
        return parent

    async def _write_partial(self, stop: errors.ChainerError) -> None:
        """After a stop (budget, a failed task): the video of every step archived so far, at
        OUTPUT.partial.mp4, so what was paid for can be watched; said in a note on `stop`."""
        rows = list(
            itertools.takewhile(
                lambda r: r.state in ("downloaded", "skipped"), self.ctx.journal.steps(self.plan.chain)
            )
        )
        rows = [r for r in rows if r.state == "downloaded"]
        if not rows:
            return
        dest = partial_path(self.plan.output)
        try:
            length = await self._publish(rows, rows[-1], dest)
        except (errors.ChainerError, OSError) as exc:
            stop.add_note(f"the video so far could not be written to {dest}: {exc}")
            return
        self._emit(rows[-1].idx, "partial", f"wrote {dest}", length)
        where = f"steps 0-{rows[-1].idx}" if rows[-1].idx else "step 0"
        stop.add_note(
            f"the video so far ({where}, {length or 0:.2f} s) is at {dest}; every result is archived"
        )

    async def _publish(self, rows: list[StepRow], last: StepRow, dest: Path | None = None) -> float | None:
        """Write the chain's output (or `dest`) from its archived parts; returns its length."""
        dest = dest or self.plan.output
        files = [self._part_file(r) for r in part_ends(rows)]
        if len(files) == 1:
            archive.publish(files[0], dest)
            return last.probed_duration or last.duration
        self._emit(last.idx, "joining", f"{len(files)} parts")
        joined = await anyio.to_thread.run_sync(
            functools.partial(archive.publish_joined, files, dest, drops=drops_at_joins(rows))
        )
        duration = joined.frames / media.probe(dest).fps
        how = "stream copy" if joined.method == "copy" else f"re-encoded: {joined.reason}"
        self._emit(last.idx, "joined", f"{len(files)} parts, {how}", duration)
        return duration

    def _part_file(self, row: StepRow) -> Path:
        """The archived video of a part's last step (the existing video of step 0 has none)."""
        if row.file is None or row.pruned_at is not None:
            raise errors.ChainerError(
                f"chain {self.plan.chain!r}: step {row.idx}'s video is not in the archive "
                f"({'pruned (keep: final)' if row.pruned_at else 'never downloaded: an existing video'}), "
                "so it cannot be joined or handed off from"
            )
        return Path(row.file)

    def _reroll(self, n: int) -> None:
        """Make steps n.. new takes, branching at step n-1's video; the old takes stay archived.

        Refused when steps before n changed, when a step from n on is still in flight (its
        result must land first: it is paid for), and when step n extends a video that Kling
        has deleted (30 days), in which case a hand-off from the archived file is offered.
        """
        journal, name = self.ctx.journal, self.plan.chain
        rows = journal.steps(name)
        if not 1 <= n < len(self.plan.steps):
            raise errors.ConfigError(
                f"--from-step {n}: chain {name!r} has steps 1 to {len(self.plan.steps) - 1} to re-roll "
                "(step 0 is the start: to redo it, run the storyboard under a new `name`)"
            )
        for step, row in zip(self.plan.steps[:n], rows, strict=False):
            if step.fingerprint != row.fingerprint:
                raise errors.JournalError(
                    f"--from-step {n}: step {step.index} of {name!r} changed too; re-roll from step "
                    f"{max(step.index, 1)} to regenerate it"
                )
        branch = rows[n - 1] if len(rows) >= n else None
        if branch is None or branch.video_id is None:
            raise errors.JournalError(
                f"--from-step {n}: step {n - 1} of {name!r} has no video yet; run the chain first"
            )
        in_flight = ("submit_intent", "submit_unknown", "submitted", "succeeded")
        busy = [r.idx for r in rows if r.idx >= n and r.state in in_flight and not is_lost(r)]
        if busy:
            raise errors.JournalError(
                f"--from-step {n}: step {busy[0]} of {name!r} has a task in flight or a result not yet "
                "archived; resume the chain first (it is paid for), then re-roll"
            )
        left = archive.time_left(branch.remote_created_ms)
        kind = self.plan.steps[n].kind
        if left is not None and left.total_seconds() <= 0 and kind in ("omni-video", "video-extend"):
            deleted = (
                f"--from-step {n}: step {n - 1}'s video {branch.video_id} was made "
                f"{archive.from_ms(branch.remote_created_ms):%Y-%m-%d} and Kling deleted it after "
                f"{rules.RETENTION_DAYS} days"
            )
            if kind == "omni-video":
                raise errors.JournalError(
                    f"{deleted}; an Omni-Video shot references the previous shot by its url, so step {n} "
                    "cannot be made again from it"
                )
            raise errors.JournalError(
                f"{deleted}, so it cannot be extended. Re-roll from its last frame instead (an "
                "image2video from the archived file, starting a new part): add --from-last-frame"
            )
        journal.reroll(
            name,
            n,
            [(s.index, s.kind, s.prompt, s.fingerprint) for s in self.plan.steps],
            self.plan.storyboard_sha256,
            self.plan.storyboard_text or None,
        )
        self._emit(n, "re-roll", f"new takes of steps {n} to {len(self.plan.steps) - 1}")

    def _no_longer_needed(self, step: Step, parent: StepRow) -> str | None:
        """Why an optional step (added for target_duration) should not run, or None."""
        total = self._length()
        if total is None or parent.duration is None:
            return None
        if self.plan.target_duration is not None and total >= self.plan.target_duration:
            return f"the video is {total:g} s, target_duration {self.plan.target_duration:g} s reached"
        if step.kind == "video-extend":
            return rules.extension_refusal(self.plan.model, parent.duration)
        return None

    def _length(self) -> float | None:
        """The chain's video length so far, over all its parts."""
        return video_length(self.ctx.journal.steps(self.plan.chain))

    async def _prune(self, *, keep: set[int]) -> None:
        """Delete the intermediate results (each is a prefix of a part's final video) once
        the output is written from the parts; the journal and manifest remember them."""
        for row in self.ctx.journal.steps(self.plan.chain):
            if row.idx in keep or row.state != "downloaded" or row.pruned_at or not row.file:
                continue
            Path(row.file).unlink(missing_ok=True)
            self.ctx.journal.mark_pruned(row)
        archive.fsync_dir(self.folder)
        await self._write_manifest()

    def units_spent(self) -> float:
        """Units the provider reported for this chain's tasks (every attempt counts)."""
        return self.ctx.journal.units(self.plan.chain)

    def _check_budget(self, step: Step) -> None:
        """Refuse to submit `step` if its estimated cost would take the chain past its budget,
        or the run past the run's budget (chainer.budget)."""
        if self.ctx.budget is not None:
            self.ctx.budget.check(self.plan.chain, self._describe(step), step.units)
        if self.max_units is None:
            return
        spent = self.units_spent()
        if spent + step.units > self.max_units + 1e-9:
            raise errors.BudgetExceeded(
                f"chain {self.plan.chain!r}: {spent:g} units spent; {self._describe(step)} would cost about "
                f"{step.units:g} more, past the budget of {self.max_units:g}. Nothing was submitted; raise "
                "--max-units (or max_units in the storyboard) and run again to continue"
            )

    def _emit(self, idx: int, state: str, message: str = "", total: float | None = None) -> None:
        units = self.units_spent()
        self.ctx.on_event(Event(self.plan.chain, idx, len(self.plan.steps) - 1, state, message, total, units))

    def _on_retry(self, idx: int, what: str) -> OnRetry:
        """Tell the user of every retry of a request (state `retry`), before its wait."""

        def report(exc: Exception, attempt: int, wait: float | None) -> None:
            asked = f"; waiting {wait:g} s as the provider asked" if wait is not None else ""
            if isinstance(exc, errors.RequestNotSent):
                asked += f"; giving up {UNREACHABLE_DEADLINE_S:g} s after the first try"
            self._emit(idx, "retry", f"{what}, attempt {attempt}: {exc}{asked}; trying again")

        return report

    # ------------------------------------------------------------------ one step

    async def _advance(
        self, step: Step, row: StepRow, parent: StepRow | None, *, background: TaskGroup | None = None
    ) -> StepRow:
        """Move `step` along until it is archived (or failed, or skipped); with `background`,
        until it succeeded, its download then running in that task group."""
        journal = self.ctx.journal
        while True:
            match row.state:
                case "planned" if self._settling(step):
                    return row
                case "planned":
                    if step.kind == "existing":
                        row = journal.transition(
                            row,
                            "succeeded",
                            "adopted an existing video",
                            video_id=step.fields["video_id"],
                            task_id=step.fields.get("task_id"),
                            duration=self.plan.existing.duration if self.plan.existing else None,
                        )
                        continue
                    self._check_budget(step)
                    failpoints.hit("before-intent", step.index)
                    row = journal.transition(row, "submit_intent", external_task_id=self._external_id(row))
                    failpoints.hit("after-intent", step.index)
                    self._fresh_intents.add(step.index)
                case "submit_intent" | "submit_unknown":
                    row = await self._submit(step, row, parent)
                case "submitted":
                    row = await self._await_task(step, row)
                case "succeeded":
                    if step.kind == "existing":
                        return row
                    if background is not None:
                        background.start_soon(self._download_and_record, step, row)
                        return row
                    row = await self._download(step, row)
                case "downloaded":
                    if row.pruned_at is not None:  # deleted on purpose (keep: final)
                        return row
                    problem = archive.check_file(row.file, row.size, row.sha256)
                    if problem is None:
                        return row
                    # The archive lost the file (or it changed): fetch it again, never re-create it.
                    row = journal.transition(row, "succeeded", problem)
                    self._emit(step.index, "re-downloading", problem)
                case "skipped":
                    return row
                case "failed":
                    raise errors.TaskFailed(
                        task_id=row.task_id or "(none)",
                        reason=f"step {step.index} ({self._describe(step)}) failed: {row.error}",
                    )
                case _:
                    assert_never(row.state)

    def _settling(self, step: Step) -> bool:
        """Whether `step` is one that a coming re-roll makes anew: finish it, never create it."""
        return self.settle_before is not None and step.index >= self.settle_before

    def _describe(self, step: Step) -> str:
        return "the start" if step.index == 0 else f"segment {step.index}"

    def _external_id(self, row: StepRow) -> str:
        chain = self.ctx.journal.chain(self.plan.chain)
        assert chain is not None
        # Deterministic from the journal: chain instance, step, attempt, request fingerprint.
        return f"chainer-{chain.uid}-{row.idx:03d}-a{row.attempt}-{row.fingerprint[:10]}"

    async def _request(self, step: Step, row: StepRow, parent: StepRow | None) -> CreateRequest:
        fields = dict(step.fields)
        ext = row.external_task_id
        match step.kind:
            case "text2video":
                return Text2VideoRequest(external_task_id=ext, **fields)
            case "image2video" if step.handoff:
                assert parent is not None
                image = await self._handoff_image(step, row, parent)
                return Image2VideoRequest(
                    external_task_id=ext, image=base64.b64encode(image).decode(), **fields
                )
            case "image2video":
                for key in ("image", "image_tail"):
                    if fields.get(key):
                        fields[key] = self._image(fields[key])
                return Image2VideoRequest(external_task_id=ext, **fields)
            case "omni-video":
                assert parent is not None
                images = [OmniImage(image_url=self._image(v)) for v in fields.pop("images", [])]
                return OmniVideoRequest(
                    external_task_id=ext,
                    video_list=[OmniVideo(video_url=await self._reference_url(step, parent))],
                    image_list=images or None,
                    **fields,
                )
            case "video-extend":
                assert parent is not None and parent.video_id is not None
                send_parent = self.ctx.client.config.send_parent_task_id
                return VideoExtendRequest(
                    video_id=parent.video_id,
                    task_id=parent.task_id if send_parent else None,
                    external_task_id=ext,
                    **fields,
                )
            case "existing":
                raise AssertionError("an existing video is never submitted")
            case _:
                assert_never(step.kind)

    def _image(self, value: str) -> str:
        """An image as Kling takes it: a URL as it is, a local file (relative to the
        storyboard) as raw base64."""
        if value.startswith(("http://", "https://")):
            return value
        return base64.b64encode((self.plan.storyboard.parent / value).read_bytes()).decode()

    async def _reference_url(self, step: Step, parent: StepRow) -> str:
        """A url Kling can fetch `parent`'s video from, for an Omni-Video shot.

        Asked of the provider again before every create rather than taken from the
        journal: signed urls expire (a resume may come days later), and Kling fetches the
        video after the create, from its queue, so the freshest url is the safest. One
        query per shot; the journal keeps the new url (downloads use it too).
        """
        client = self.ctx.client
        assert parent.task_id is not None and parent.kind != "existing"
        kind = cast(rules.TaskKind, parent.kind)
        try:
            task = await retrying(
                functools.partial(client.get_task, kind, parent.task_id),
                on=read_backoff,
                deadline_s=READ_DEADLINE_S,
                on_retry=self._on_retry(step.index, f"query of task {parent.task_id}"),
            )
        except errors.InvalidRequestError as exc:
            if exc.code != 1203:
                raise
            raise errors.ProviderError(
                f"step {step.index} of {self.plan.chain!r} references step {parent.idx}'s video by its url, "
                f"but {client.config.name} no longer has task {parent.task_id} (Kling deletes videos "
                f"{rules.RETENTION_DAYS} days after creation). An Omni-Video shot cannot be made from "
                f"the archived copy ({parent.file or 'missing'}): Kling takes the reference as a url",
                request_id=exc.request_id,
            ) from exc
        video = task.video
        if video is None or video.id != parent.video_id:
            raise errors.ProtocolError(
                f"task {parent.task_id} no longer offers video {parent.video_id} "
                f"({'no video' if video is None else 'it offers ' + video.id}); cannot reference it"
            )
        if video.url != parent.video_url:
            self.ctx.journal.refresh_url(parent, video.url)
        return video.url

    async def _handoff_image(self, step: Step, row: StepRow, parent: StepRow) -> bytes:
        """The start image of a hand-off: the last frame of `parent`'s video, archived once
        per take, so that every resend of the create carries the same image."""
        path = self.folder / archive.handoff_name(step.index, row.attempt)
        if not path.is_file():
            video = self._part_file(parent)
            data = await anyio.to_thread.run_sync(
                functools.partial(media.handoff_image, video, min_side=rules.IMAGE_MIN_SIDE)
            )
            archive.write_atomically(path, data)
        return path.read_bytes()

    async def _submit(self, step: Step, row: StepRow, parent: StepRow | None) -> StepRow:
        """Get a task id for `row` without ever creating a second task for it."""
        journal, client, scheduler = self.ctx.journal, self.ctx.client, self.ctx.scheduler
        kind = _task_kind(step)
        assert row.external_task_id is not None
        lost_answers = 0
        refused_since = time.monotonic()
        backoff = 1.0
        while lost_answers < RECONCILE_ROUNDS:
            if step.index not in self._fresh_intents or row.state == "submit_unknown":
                # An earlier POST may have reached the provider: look before sending again.
                found = await self._lookup(step, row, parent)
                if found is not None:
                    if found.task_status in ("submitted", "processing"):
                        self._hold(step)  # the account holds it: it counts against the limit
                    else:
                        self._let_go(step)  # it has ended: it holds nothing (any more)
                    self._emit(step.index, "submitted", f"found task {found.task_id} created earlier")
                    return journal.transition(
                        row,
                        "submitted",
                        "reconciled",
                        task_id=found.task_id,
                        submitted_at=found.created_at / 1000 if found.created_at else time.time(),
                    )
                if row.state == "submit_unknown":
                    row = journal.transition(row, "submit_intent", "lookup found no task")
            if self._settling(step):
                return journal.transition(row, "planned", "not created: the re-roll makes it anew")
            if self.ctx.gate.reason is not None:
                journal.transition(row, "planned", "creates stopped by an account error; nothing was sent")
                raise errors.CreatesStopped(
                    f"step {step.index} of {self.plan.chain!r} was not sent: the account refused a create "
                    f"earlier in this run ({self.ctx.gate.reason})"
                )
            if step.index not in self._holding:
                self._emit(step.index, "waiting", "for a free slot on the account")
                await scheduler.acquire(len(self.plan.steps) - step.index)
                self._holding[step.index] = False
            try:
                # Made once the slot is ours: an Omni shot's reference url is signed anew
                # here, so a long wait for a slot cannot leave it expired.
                request: CreateRequest = await self._request(step, row, parent)
            except BaseException:
                self._let_go(step)
                raise
            self._emit(step.index, "submitting", self._describe(step))
            try:
                with anyio.CancelScope(shield=True):
                    # Shielded: once sent, the answer is worth waiting for, and the task id
                    # is committed before a Ctrl-C can land. One create at a time per account.
                    async with scheduler.create_lock:
                        if not scheduler.may_create():
                            # A 1303 taught a lower limit since this slot was granted: queue again.
                            self._let_go(step)
                            continue
                        task = await retrying(
                            functools.partial(client.create, kind, request),
                            on=create_backoff,
                            deadline_s=CREATE_DEADLINE_S,
                            on_retry=self._on_retry(step.index, f"create {kind}"),
                        )
                        scheduler.confirm()
                        self._holding[step.index] = True
                    failpoints.hit("after-post", step.index)
                    row = journal.transition(row, "submitted", task_id=task.task_id, submitted_at=time.time())
                self._emit(step.index, "submitted", f"task {task.task_id}")
                assert row.external_task_id is not None
                await self._check_lookup(step, kind, task.task_id, row.external_task_id)
                return row
            except errors.OutcomeUnknown as exc:
                lost_answers += 1
                self._fresh_intents.discard(step.index)
                row = journal.transition(row, "submit_unknown", str(exc))
                self._emit(step.index, "submit_unknown", f"{exc}; looking the task up")
            except errors.RateLimitError as exc:  # 1303: the account's limit is lower than believed
                scheduler.rejected()  # while the refused create still counts as one of ours
                self._let_go(step)
                self._emit(step.index, "waiting", f"the account is full (1303); limit now {scheduler.limit}")
                if time.monotonic() - refused_since > CREATE_DEADLINE_S:
                    journal.transition(row, "planned", "the account stayed full; nothing was created")
                    raise
                if scheduler.in_flight == 0:  # full with tasks that are not ours: wait, then ask again
                    await anyio.sleep(_wait(exc.retry_after or backoff * self.ctx.client.config.time_scale))
                    backoff = min(backoff * 2, 60.0)
            except errors.InvalidRequestError as exc:
                if exc.code == 1201 and "external_task_id" in exc.api_message:
                    # The provider already has a task with our id: an earlier POST arrived.
                    self._fresh_intents.discard(step.index)
                    continue
                self._let_go(step)
                return self._refused(row, step, exc)
            except errors.PolicyError as exc:
                self._let_go(step)
                return self._refused(row, step, exc)
            except (errors.AuthError, errors.AccountError, errors.RequestNotSent) as exc:
                # Nothing was created and nothing is wrong with the step itself.
                if isinstance(exc, errors.AccountError):
                    self.ctx.gate.reason = exc
                self._let_go(step)
                journal.transition(row, "planned", "create refused for now; nothing was created")
                raise
        raise errors.ProviderError(
            f"step {step.index} of {self.plan.chain!r}: the provider's answers to its create were lost "
            f"{RECONCILE_ROUNDS} times. Check your provider's task list for external_task_id "
            f"{row.external_task_id!r} before running again; chainer will look for it first."
        )

    async def _check_lookup(self, step: Step, kind: rules.TaskKind, task_id: str, ext: str) -> None:
        """On the run's first task: does the provider find it by external_task_id? (lookup.py)"""
        assert self.ctx.lookup is not None
        works = await self.ctx.lookup.check(
            kind, task_id, ext, on_retry=self._on_retry(step.index, "lookup check")
        )
        if works is False:
            self._emit(
                step.index,
                "warning",
                f"{self.ctx.client.config.name} does not find tasks by external_task_id "
                f"({self.ctx.lookup.evidence()}); a create whose answer is lost will be looked up in "
                "the task list instead, or left for you to check: never sent again on a 'not found'",
            )

    def _hold(self, step: Step) -> None:
        """Count `step`'s task against the account: it exists (found, or resumed)."""
        match self._holding.get(step.index):
            case None:
                self.ctx.scheduler.force()
            case False:  # the slot of a create whose answer was lost: the task turned up
                self.ctx.scheduler.confirm()
            case True:
                pass
        self._holding[step.index] = True

    def _let_go(self, step: Step) -> None:
        """Give the step's slot back: its task ended, or its create made none."""
        if step.index in self._holding:
            self.ctx.scheduler.release(created=self._holding.pop(step.index))

    async def _lookup(self, step: Step, row: StepRow, parent: StepRow | None) -> Task | None:
        """The task an earlier POST of `row` created, or None when provably none was.

        Raises SubmitUnknown (leaving the step `submit_unknown`) when the provider offers
        no way to tell, unless the user said they checked (`resend_unknown`).
        """
        client, journal = self.ctx.client, self.ctx.journal
        kind = _task_kind(step)
        assert row.external_task_id is not None
        ext = row.external_task_id
        lookup = client.config.task_lookup
        why = f"task lookup: {lookup}"
        match lookup:
            case "external_id":
                try:
                    found = await retrying(
                        functools.partial(client.find_by_external_id, kind, ext),
                        on=read_backoff,
                        deadline_s=READ_DEADLINE_S,
                        on_retry=self._on_retry(step.index, f"lookup of external_task_id {ext}"),
                    )
                except errors.LookupUndecided:
                    found = None  # cannot tell: the list scan below decides, or the user
                assert self.ctx.lookup is not None
                trusted = await self.ctx.lookup.verdict(on_retry=self._on_retry(step.index, "lookup check"))
                if trusted or (found is not None and found.task_info.external_task_id == ext):
                    return found  # a 'not found' counts only from a lookup seen to work
                why = (
                    f"its lookup by external_task_id is not to be trusted ({self.ctx.lookup.evidence()})"
                    if trusted is False
                    else "its lookup by external_task_id has not been seen to work yet"
                )
                decided, found = await self._scan(step, row, parent)
                if decided:
                    return found
            case "list":
                decided, found = await self._scan(step, row, parent)
                if decided:
                    return found
            case "none":
                pass
            case _:
                assert_never(lookup)
        if self.resend_unknown:
            return None
        if row.state != "submit_unknown":
            row = journal.transition(row, "submit_unknown", "no way to look the task up")
        candidates = self._candidates.get(step.index, [])
        listed = "".join(
            f"\n  chainer adopt {self.plan.chain} {step.index} {t.task_id}   # {kind}, created "
            f"{_local_time(t.created_at / 1000 if t.created_at else None)}, {t.task_status}"
            for t in candidates[:10]
        )
        seen = (
            f" The provider's task list shows {len(candidates)} {kind} task(s) of that time that no step "
            f"holds; if one of them is this step's, attach it (nothing is paid again):{listed}"
            if candidates
            else ""
        )
        raise errors.SubmitUnknown(
            f"step {step.index} of {self.plan.chain!r} ({self._describe(step)}): its create may have reached "
            f"{client.config.name} but the answer was lost, and {client.config.name} cannot be asked which "
            f"tasks exist ({why}). Check the provider's console for a {kind} task created "
            f"around {_local_time(journal.intent_time(row))} with prompt {step.prompt!r}. If there is one, "
            f"attach it with `chainer adopt {self.plan.chain} {step.index} TASK_ID`; if there is none, run "
            f"again with --resend-unknown.{seen}"
        )

    async def _scan(self, step: Step, row: StepRow, parent: StepRow | None) -> tuple[bool, Task | None]:
        """Look for `row`'s task in the provider's task list: (decided, task); see _scan_list.
        What it could not decide between is kept for the message that asks the user."""
        client, kind = self.ctx.client, _task_kind(step)
        assert row.external_task_id is not None
        since_ms = int((self.ctx.journal.intent_time(row) or time.time()) * 1000) - LIST_WINDOW_MS
        parent_video = parent.video_id if step.kind == "video-extend" and parent else None
        held = self.ctx.journal.held_task_ids()
        scan = await retrying(
            functools.partial(_scan_list, client, kind, row.external_task_id, parent_video, since_ms, held),
            on=read_backoff,
            deadline_s=READ_DEADLINE_S,
            on_retry=self._on_retry(step.index, f"scan of the {kind} task list"),
        )
        self._candidates[step.index] = scan.candidates
        return scan.decided, scan.found

    def _refused(self, row: StepRow, step: Step, exc: errors.ApiError) -> StepRow:
        """The provider refused the create (nothing was made): the step fails with the reason,
        and the way on where there is one."""
        reason = str(exc)
        if step.kind == "video-extend" and exc.code == 1203:
            reason += (
                f". The video it extends is gone from the provider (it deletes videos "
                f"{rules.RETENTION_DAYS} days after they are made); nothing was charged. Make this step from "
                f"the archived file's last frame instead: `chainer run {self.plan.storyboard} --from-step "
                f"{step.index} --from-last-frame`"
            )
        row = self.ctx.journal.transition(row, "failed", reason, error=reason)
        self._emit(step.index, "failed", reason)
        return row

    async def _await_task(self, step: Step, row: StepRow) -> StepRow:
        """Poll the task until it ends; commit its result or its failure."""
        journal, client = self.ctx.journal, self.ctx.client
        kind = _task_kind(step)
        assert row.task_id is not None
        task_id = row.task_id
        # The task's age counts from its submission, also when this process is a resume.
        submitted = row.submitted_at or time.time()
        expected = self._expected_seconds(kind)
        self._emit(step.index, "processing", f"task {task_id}")
        while True:
            failpoints.hit("polling", step.index)
            try:
                task = await retrying(
                    functools.partial(client.get_task, kind, task_id),
                    on=read_backoff,
                    deadline_s=READ_DEADLINE_S,
                    on_retry=self._on_retry(step.index, f"poll of task {task_id}"),
                )
            except errors.InvalidRequestError as exc:
                if exc.code != 1203:
                    raise
                return self._forgotten(step, row, exc)
            match task.task_status:
                case "submitted" | "processing":
                    # Counted once the provider says it runs: a resumed task that has already
                    # ended holds none of the account's slots (nor the run's peak).
                    self._hold(step)
                    elapsed = time.time() - submitted
                    if elapsed > self.ctx.poll.deadline:
                        raise errors.ProviderError(
                            f"task {task_id} is still {task.task_status} after {elapsed:.0f} s; "
                            "run again later to keep waiting (nothing will be re-created)"
                        )
                    await anyio.sleep(
                        next_delay(self.ctx.poll, elapsed=elapsed, expected=expected, rng=self.ctx.rng)
                    )
                case "succeed":
                    self._let_go(step)
                    return self._succeeded(step, row, task)
                case "failed":
                    self._let_go(step)
                    reason = task.task_status_msg or "the provider gave no reason"
                    row = journal.transition(
                        row, "failed", reason, error=reason, units=task.units, finished_at=time.time()
                    )
                    self._emit(step.index, "failed", reason)
                    return row
                case _:
                    assert_never(task.task_status)

    def _forgotten(self, step: Step, row: StepRow, exc: errors.ApiError) -> StepRow:
        """The provider answers "not found" for a task it accepted: the step stops, failed,
        with the ways on (its charge, if any, is the provider's to explain)."""
        self._let_go(step)
        reason = (
            f"the provider no longer knows task {row.task_id} (created {_local_time(row.submitted_at)}; "
            f"it answered {exc}). If the task shows in the provider's console, attach it: `chainer adopt "
            f"{self.plan.chain} {step.index} TASK_ID`; otherwise make the step again as a new task, "
            "charged again: run with --retry-failed"
        )
        row = self.ctx.journal.transition(row, "failed", reason, error=reason, finished_at=time.time())
        self._emit(step.index, "failed", reason)
        return row

    def _succeeded(self, step: Step, row: StepRow, task: Task) -> StepRow:
        video = task.video
        if video is None:
            raise errors.ProtocolError(f"task {task.task_id} succeeded without a video in task_result")
        row = self.ctx.journal.transition(
            row,
            "succeeded",
            video_id=video.id,
            video_url=video.url,
            duration=video.seconds,
            units=task.units,
            remote_created_ms=task.created_at,
            finished_at=time.time(),
        )
        self._emit(step.index, "succeeded", f"video {video.id}", self._length())
        return row

    def _expected_seconds(self, kind: rules.TaskKind) -> float:
        """How long a task of `kind` should take: this chain's last few, else Kling's usual."""
        rows = self.ctx.journal.db.execute(
            "SELECT finished_at - submitted_at FROM steps WHERE chain = ? AND kind = ? AND "
            "finished_at IS NOT NULL AND submitted_at IS NOT NULL ORDER BY idx DESC, attempt DESC LIMIT 3",
            (self.plan.chain, kind),
        ).fetchall()
        took = [float(r[0]) for r in rows if r[0] and r[0] > 0]
        if took:
            return sum(took) / len(took)
        return rules.EXPECTED_SECONDS[kind] * self.ctx.client.config.time_scale

    async def _download(self, step: Step, row: StepRow) -> StepRow:
        """Archive the step's result and commit it."""
        self._emit(step.index, "downloading", archive.result_name(step.index, row.video_id or ""))
        row = await download_result(
            self.ctx, self.folder, row, on_retry=self._on_retry(step.index, "download")
        )
        self._emit(step.index, "downloaded", Path(row.file or "").name, self._length())
        # The contact sheet's picture of this step, taken now (cheap: one seek) rather than by
        # decoding the whole output at the end.
        rows = self.ctx.journal.steps(self.plan.chain)
        try:
            self._thumbs[(row.idx, row.attempt)] = await anyio.to_thread.run_sync(report.thumbnail, rows, row)
        except errors.MediaError as exc:  # only a picture: the sheet reads it from the output instead
            self._emit(step.index, "warning", f"no contact-sheet picture yet: {exc}")
        return row

    async def _download_and_record(self, step: Step, row: StepRow) -> None:
        await self._download(step, row)
        await self._write_manifest()

    async def _write_manifest(self) -> None:
        """Rewrite the chain's manifest, then bring the mirror (if any) up to date."""
        archive.write_chain_manifest(self.ctx.journal, self.plan.chain, self.folder)
        await sync_mirror(self.ctx, self.folder)


async def sync_mirror(ctx: RunContext, folder: Path) -> None:
    """Copy `folder` to the archive mirror, if one is configured (retried like a download)."""
    mirror = ctx.mirror
    if mirror is None or not folder.is_dir():
        return
    await retrying(
        lambda: anyio.to_thread.run_sync(mirror.sync, folder), on=download_backoff, deadline_s=READ_DEADLINE_S
    )


async def download_result(
    ctx: RunContext, folder: Path, row: StepRow, *, on_retry: OnRetry | None = None
) -> StepRow:
    """Download, verify and commit the result of a `succeeded` step into `folder`.

    A dead signed url is replaced by querying the task again; a task the provider no
    longer knows (deleted after 30 days) raises the provider's 1203 as it is.
    """
    assert row.video_id is not None and row.task_id is not None and row.kind != "existing"
    dest = folder / archive.result_name(row.idx, row.video_id)
    kind = cast(rules.TaskKind, row.kind)
    task_id = row.task_id
    url = row.video_url

    def lost(answer: Exception | None = None) -> errors.ResultDeleted:
        """The journal records the loss (the step fails with the way on), then it is raised."""
        message = lost_message(ctx.journal, row, str(answer) if answer else None)
        ctx.journal.transition(row, "failed", message, error=message)
        return errors.ResultDeleted(message)

    async def attempt() -> archive.Downloaded:
        nonlocal url
        fresh = url is None
        if fresh:
            try:
                task = await ctx.client.get_task(kind, task_id)
            except errors.InvalidRequestError as exc:
                if exc.code == 1203:  # the provider's "not found" for a task it made: gone
                    raise lost(exc) from exc
                raise
            url = task.video.url if task.video else None
            if url is None:
                raise errors.VerificationFailed(f"task {task_id} no longer offers its video")
        assert url is not None
        try:
            return await archive.download(
                ctx.http,
                url,
                dest,
                reported_duration=row.duration,
                progress=lambda done: failpoints.hit("mid-download", row.idx),
            )
        except errors.UrlExpired as exc:
            if fresh and archive.is_deleted(row.remote_created_ms):
                # Older than the provider keeps videos, and a url signed just now is refused
                # too: the provider's answer and the age agree, so no retry can help.
                raise lost(exc) from None
            url = None  # the next attempt asks the provider for a fresh signed url
            raise

    async with ctx.downloads:
        got = await retrying(
            attempt, on=download_backoff, deadline_s=READ_DEADLINE_S, wait_initial=0.5, on_retry=on_retry
        )
    failpoints.hit("after-download", row.idx)
    return ctx.journal.transition(
        row,
        "downloaded",
        file=str(got.path),
        sha256=got.sha256,
        size=got.size,
        probed_duration=got.probed_duration,
    )


def lost_message(journal: Journal, row: StepRow, answer: str | None = None) -> str:
    """What a user reads when a result was deleted by the provider before it was archived."""
    chain = journal.chain(row.chain)
    deleted = archive.expires_at(row.remote_created_ms)
    said = f"; the provider answered: {answer}" if answer else ""
    how = (
        f"deleted by the provider on {deleted:%Y-%m-%d} ({rules.RETENTION_DAYS} days after it was made{said})"
        if deleted is not None and archive.is_deleted(row.remote_created_ms)
        else f"gone from the provider (it deletes results {rules.RETENTION_DAYS} days after they are "
        f"made{said})"
    )
    storyboard = chain.storyboard if chain else "STORYBOARD"
    return (
        f"LOST: {how}: step {row.idx} of {row.chain!r}, video {row.video_id} (task {row.task_id}), was not "
        f"archived in time. To make the step again: `chainer run {storyboard} --from-step {row.idx}` (with "
        "--from-last-frame when the video before it is gone too: it then starts from the archived "
        "file's last frame)"
    )


def partial_path(output: Path) -> Path:
    """Where a stopped chain's video so far goes: `out/x.mp4` -> `out/x.partial.mp4`."""
    return output.with_name(f"{output.stem}.partial{output.suffix}")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a caller should see from a chain's task group: the first chainer
    error (a failed download, say) rather than the group, else the first of any kind."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            flat.append(exc)
    return next((e for e in flat if isinstance(e, errors.ChainerError)), flat[0])


def is_lost(row: StepRow) -> bool:
    """A result the provider has deleted before it was archived."""
    return row.state == "succeeded" and archive.is_deleted(row.remote_created_ms)


def _task_kind(step: Step) -> rules.TaskKind:
    if step.kind == "existing":
        raise AssertionError("an existing video has no task kind")
    return step.kind


def _local_time(epoch: float | None) -> str:
    if epoch is None:
        return "the time of the last run"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclass(frozen=True)
class ListScan:
    """What the provider's task list says about a lost create."""

    #: True when the list can tell whether our task exists (then `found` is it, or None).
    decided: bool
    found: Task | None
    #: Recent tasks of the step's kind that no step of the journal holds (for an extension,
    #: only those extending the step's parent video): what the user may adopt.
    candidates: list[Task]


async def _scan_list(
    client: KlingClient,
    kind: rules.TaskKind,
    ext: str,
    parent_video: str | None,
    since_ms: int,
    held: Collection[str] = (),
) -> ListScan:
    """Look for our task in the provider's task list.

    Decided when the provider echoes external_task_id (ours is there or not), or, for an
    extension, when the tasks extending our parent video can be counted (none: not
    created; one: ours). Tasks the journal already holds (earlier attempts, other steps and
    chains) are never counted as ours. Undecided otherwise.
    """
    echoes = False
    candidates: list[Task] = []
    for page in range(1, LIST_PAGES + 1):
        tasks = await client.list_tasks(kind, page=page, page_size=LIST_PAGE_SIZE)
        recent = [t for t in tasks if (t.created_at or 0) >= since_ms]
        for task in recent:
            if task.task_info.external_task_id is not None:
                echoes = True
                if task.task_info.external_task_id == ext:
                    return ListScan(True, task, [task])
            if task.task_id in held:
                continue
            parent = task.task_info.parent_video
            if parent_video is None or (parent is not None and parent.id == parent_video):
                candidates.append(task)
        if len(tasks) < LIST_PAGE_SIZE or len(recent) < len(tasks):
            break  # the end of the list, or past the window (lists are newest first)
    if echoes:
        return ListScan(True, None, candidates)
    if parent_video is not None and len(candidates) <= 1:
        return ListScan(True, candidates[0] if candidates else None, candidates)
    return ListScan(False, None, candidates)


def _wait(seconds: float) -> float:
    """A wait between asks to a full account: at least 10 ms, at most Retry-After's cap."""
    return min(MAX_RETRY_AFTER_S, max(0.01, seconds))
