"""The engine's top: drives one chain's plan to a finished video, one journaled step at a time.

For each step the runner asks the journal where the step stands and hands it to the
handler of that state, which moves it one transition further, so a run that stopped
anywhere (Ctrl-C, a crash, a reboot) continues exactly there:

- planned:        derive the external_task_id and commit `submit_intent` before any POST
                  (`_planned` here)
- submit_intent / submit_unknown: look the task up when an earlier POST's outcome is
                  unknown; POST only when no task exists (engine.submit). The same
                  external_task_id is reused, and Kling refuses a duplicate, so a create
                  can never be paid twice
- submitted:      poll until the task succeeds or fails (engine.poll)
- succeeded:      download and verify the result into the archive (engine.fetch)
- downloaded:     check the archived file is still there (`_downloaded` here)
- failed/skipped: stop the chain / nothing to do

When every step is downloaded, the parts are assembled into the output (engine.assembly).
"""

from __future__ import annotations

from typing import assert_never

import anyio
from anyio.abc import TaskGroup

from .. import archive, errors, failpoints
from ..chain import StepRow
from ..events import ChainResult
from ..plan import Plan, Step
from ..ports import ChainRow, JournalPort
from . import assembly, fetch, poll, revise, submit
from .context import ChainOptions, ChainRun, RunContext

#: What stops a chain but lets the downloads of what was already paid for finish first.
_STOPS = (errors.BudgetExceeded, errors.TaskFailed, errors.AccountError, errors.CreatesStopped)


class ChainRunner:
    """Runs one plan. Construct, then `await run()`."""

    def __init__(self, plan: Plan, ctx: RunContext, options: ChainOptions | None = None):
        self.chain = ChainRun(plan, ctx, options or ChainOptions())

    async def run(self) -> ChainResult:
        try:
            return await self._run()
        finally:
            self.chain.release_all()

    async def _run(self) -> ChainResult:
        run = self.chain
        self._start()
        last: StepRow | None = None
        stop: errors.ChainerError | None = None
        try:
            async with anyio.create_task_group() as background:
                try:
                    last = await self._walk(background)
                except _STOPS as exc:
                    stop = exc  # leaving the group still waits for the downloads of what was paid for
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if stop is not None:
            await assembly.write_manifest(run)
            await assembly.write_partial(run, stop)
            raise stop
        if run.options.settle_before is not None:
            await assembly.write_manifest(run)
            return ChainResult(run.name, "needs_attention", None, run.length(), run.units_spent())
        assert last is not None
        duration = await assembly.write_output(run, last)
        await assembly.write_manifest(run)
        run.journal.set_chain_state(run.name, "done")
        run.emit(last.idx, "done", f"wrote {run.plan.output}", duration)
        return ChainResult(run.name, "done", run.plan.output, duration, run.units_spent())

    def _start(self) -> None:
        """Own the chain, record it (or find it) in the journal, reconcile it with the plan."""
        run = self.chain
        plan, journal = run.plan, run.journal
        journal.lock_chain(plan.chain)
        recorded = record(journal, plan, run.ctx.client.config.name)
        if run.options.from_step is not None:
            revise.reroll(run, run.options.from_step)
        revise.match_storyboard(run)
        if recorded.max_units != run.max_units:  # a resume of many chains writes nothing here
            journal.set_max_units(plan.chain, run.max_units)

    async def _walk(self, background: TaskGroup) -> StepRow:
        """Advance every step in order; returns the last one. Downloads overlap in `background`."""
        run = self.chain
        journal, steps = run.journal, run.plan.steps
        parent: StepRow | None = None
        for n, step in enumerate(steps):
            row = journal.step(run.name, step.index)
            if run.settling(step) and row.state in ("planned", "failed"):
                break
            if row.state == "planned" and step.optional and parent is not None:
                reason = revise.no_longer_needed(run, step, parent)
                if reason:
                    row = journal.transition(row, "skipped", reason)
                    run.emit(step.index, "skipped", reason)
            if row.state == "skipped":
                continue
            if row.state == "failed" and run.options.retry_failed:
                row = journal.new_attempt(row, "--retry-failed")
                run.emit(step.index, "retrying", f"attempt {row.attempt} after: {row.error or 'failure'}")
            # A result is archived while the next step is already generating (it only
            # needs the video id), unless the next step starts from this file.
            after = steps[n + 1] if n + 1 < len(steps) else None
            overlap = background if after is not None and not after.handoff else None
            row = await self.advance(step, row, parent, background=overlap)
            parent = row
            if overlap is None or row.state != "succeeded":
                # a result archived in the background rewrites the manifest once its file is
                # in (_download_and_record): here it would delay the next create
                await assembly.write_manifest(run)
        assert parent is not None
        return parent

    async def advance(
        self, step: Step, row: StepRow, parent: StepRow | None, *, background: TaskGroup | None = None
    ) -> StepRow:
        """Move `step` along until it is archived (or failed, or skipped); with `background`,
        until it succeeded, its download then running in that task group. Each state has
        one handler; a handler returns the row in its next state, or None to stop here."""
        run = self.chain
        while True:
            match row.state:
                case "planned":
                    moved = self._planned(step, row)
                case "submit_intent" | "submit_unknown":
                    moved = await submit.submit(run, step, row, parent)
                case "submitted":
                    moved = await poll.await_task(run, step, row)
                case "succeeded":
                    moved = await self._succeeded(step, row, background)
                case "downloaded":
                    moved = await self._downloaded(step, row)
                case "skipped":
                    moved = None
                case "failed":
                    raise errors.TaskFailed(
                        task_id=row.task_id or "(none)",
                        reason=f"step {step.index} ({run.describe(step)}) failed: {row.error}",
                    )
                case _:
                    assert_never(row.state)
            if moved is None:
                return row
            row = moved

    def _planned(self, step: Step, row: StepRow) -> StepRow | None:
        """Commit the intent to create (its external_task_id) before anything is sent."""
        run = self.chain
        if run.settling(step):
            return None
        if step.kind == "existing":
            return run.journal.transition(
                row,
                "succeeded",
                "adopted an existing video",
                video_id=step.request.video_id,
                task_id=step.request.task_id,
                duration=run.plan.existing.duration if run.plan.existing else None,
            )
        self._check_budget(step)
        failpoints.hit("before-intent", step.index)
        row = run.journal.transition(row, "submit_intent", external_task_id=run.external_id(row))
        failpoints.hit("after-intent", step.index)
        run.fresh_intents.add(step.index)
        return row

    async def _succeeded(self, step: Step, row: StepRow, background: TaskGroup | None) -> StepRow | None:
        """Archive the result: now, or in `background` while the next step generates."""
        if step.kind == "existing":
            return None
        if background is not None:
            background.start_soon(self._download_and_record, step, row)
            return None
        return await fetch.download(self.chain, step, row)

    async def _downloaded(self, step: Step, row: StepRow) -> StepRow | None:
        """Done, unless the archive lost the file (or it changed): then it is taken back from
        this worker's archive or the mirror (a chain taken over from another machine), else
        fetched again from the provider, never re-created."""
        if row.pruned_at is not None:  # deleted on purpose (keep: final)
            return None
        problem = archive.check_file(row.file, row.size, row.sha256)
        if problem is None or await fetch.restore(self.chain, row) is not None:
            return None
        row = self.chain.journal.transition(row, "succeeded", problem)
        self.chain.emit(step.index, "re-downloading", problem)
        return row

    async def _download_and_record(self, step: Step, row: StepRow) -> None:
        await fetch.download(self.chain, step, row)
        await assembly.write_manifest(self.chain)

    def _check_budget(self, step: Step) -> None:
        """Refuse to submit `step` if its estimated cost would take the chain past its budget,
        or the run past the run's budget (chainer.budget)."""
        run = self.chain
        if run.ctx.budget is not None:
            run.ctx.budget.check(run.name, run.describe(step), step.units)
        if run.max_units is None:
            return
        spent = run.units_spent()
        if spent + step.units > run.max_units + 1e-9:
            raise errors.BudgetExceeded(
                f"chain {run.name!r}: {spent:g} units spent; {run.describe(step)} would cost about "
                f"{step.units:g} more, past the budget of {run.max_units:g}. Nothing was submitted; raise "
                "--max-units (or max_units in the storyboard) and run again to continue"
            )


def record(journal: JournalPort, plan: Plan, provider: str) -> ChainRow:
    """Record `plan`'s chain and its planned steps in the journal, once (a run starting it,
    or `chainer submit` queueing it for a worker); the chain's row as the journal has it."""
    return journal.ensure_chain(
        name=plan.chain,
        storyboard=str(plan.storyboard_abs),
        storyboard_sha=plan.storyboard_sha256,
        provider=provider,
        model=plan.model,
        mode=plan.mode,
        output=str(plan.output_abs),
        steps=[(s.index, s.kind, s.prompt, s.fingerprint) for s in plan.steps],
        storyboard_text=plan.storyboard_text or None,
        profile=plan.provider.name,
    )


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
