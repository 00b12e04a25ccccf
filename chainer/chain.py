"""The chain model: every fact about a chain worked out from its journal rows, with no I/O.

A chain is a row per step (the current attempt) plus the earlier takes of re-rolled steps.
From those rows alone this module answers what the planner, the runner, the report, the
manifest, status and the progress view all need: where the video's parts begin and end,
which joins drop a repeated frame, the first frame each step adds, how long the video is,
the units spent, and the chain's state. Nothing here reads a file or the database, so
every answer is the same wherever it is asked.

The step state machine lives here too (the journal enforces it, the engine walks it):

    planned        -> submit_intent; succeeded (step 0 adopting an existing video); skipped
    submit_intent  -> submitted; submit_unknown (the answer was lost); planned (refused for
                      now, nothing was made); failed (the provider refused the request)
    submit_unknown -> submitted (the task was found); submit_intent (provably none was made)
    submitted      -> succeeded; failed
    succeeded      -> downloaded; failed (the provider deleted it before it was archived)
    downloaded     -> succeeded (the archived file went missing: fetched again, never re-made)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

StepState = Literal[
    "planned",
    "submit_intent",
    "submit_unknown",
    "submitted",
    "succeeded",
    "downloaded",
    "failed",
    "skipped",
]
STEP_STATES: tuple[StepState, ...] = get_args(StepState)

#: Which states a step may move to from each state.
TRANSITIONS: dict[StepState, tuple[StepState, ...]] = {
    # skipped: an optional step (for target_duration) that the video no longer needs
    # succeeded directly: step 0 adopting an existing video
    "planned": ("submit_intent", "succeeded", "skipped"),
    "submit_intent": ("submitted", "submit_unknown", "planned", "failed"),
    "submit_unknown": ("submitted", "submit_intent"),
    "submitted": ("succeeded", "failed"),
    "succeeded": ("downloaded", "failed"),
    # back to succeeded only when an archived file went missing: it is fetched again
    "downloaded": ("succeeded",),
    "failed": (),
    "skipped": (),
}

#: A step in these states has (or may have) a task at the provider whose result is not
#: archived yet: it is paid for, so nothing may replace it before it lands.
IN_FLIGHT: tuple[StepState, ...] = ("submit_intent", "submit_unknown", "submitted", "succeeded")

#: Where a chain stands, as status and the journal's summary say it.
ChainState = Literal["done", "in progress", "failed", "needs attention"]
#: How a run of a chain ended, as results and last-run.json say it.
Outcome = Literal["done", "failed", "needs_attention"]
#: What `chainer status` shows: an in-progress chain is running (a process holds it),
#: stalled (held, but no event for STALL_AFTER_S) or interrupted (no process holds it).
Liveness = Literal["done", "failed", "needs attention", "running", "stalled", "interrupted", "queued"]

#: No journal event for this long while a process holds the chain reads as stalled: most
#: Kling tasks end well within it, so a task is queued unusually long at the provider (the
#: poller waits up to PollPolicy.deadline) or the process hangs.
STALL_AFTER_S = 3600.0


@dataclass(frozen=True)
class StepRow:
    """One attempt of one step, as the journal keeps it."""

    chain: str
    idx: int
    attempt: int
    kind: str
    prompt: str | None
    fingerprint: str
    state: StepState
    external_task_id: str | None
    task_id: str | None
    video_id: str | None
    video_url: str | None
    duration: float | None
    units: float | None
    remote_created_ms: int | None
    file: str | None
    probed_duration: float | None
    sha256: str | None
    size: int | None
    error: str | None
    submitted_at: float | None
    finished_at: float | None
    pruned_at: float | None

    @property
    def is_handoff(self) -> bool:
        """An image2video after step 0: it starts a new part from a copy of the previous
        part's last frame (the join drops that frame once)."""
        return self.kind == "image2video" and self.idx > 0

    @property
    def starts_part(self) -> bool:
        """The step's video is a new part rather than the previous one made longer: a
        hand-off, or an Omni-Video shot (a new shot that continues the previous one)."""
        return self.is_handoff or self.kind == "omni-video"


@dataclass(frozen=True)
class Boundary:
    """Where one step's contribution begins in the final video."""

    step: int
    take: int
    kind: str
    prompt: str | None
    frame: int
    seconds: float
    #: The step starts a new part from the previous video's last frame.
    handoff: bool = False


def label(state: str) -> str:
    """A state as a person reads it: `submit_unknown` -> "submit unknown"."""
    return state.replace("_", " ")


@dataclass(frozen=True)
class ChainView:
    """One chain's rows and everything they imply. Build it from the journal's rows."""

    #: The current attempt of every step, in order.
    rows: tuple[StepRow, ...]
    #: Earlier attempts (re-rolled takes, failed attempts), which still count as spent.
    earlier: tuple[StepRow, ...] = ()
    #: The chain's output was written from these rows (the journal's chain state "done").
    written: bool = False

    @classmethod
    def of(
        cls, rows: Sequence[StepRow], earlier: Sequence[StepRow] = (), *, written: bool = False
    ) -> ChainView:
        return cls(tuple(rows), tuple(earlier), written)

    @property
    def live(self) -> list[StepRow]:
        """The steps that make the video (skipped optional steps make nothing)."""
        return [r for r in self.rows if r.state != "skipped"]

    # ------------------------------------------------------------------ parts and joins

    def part_ends(self) -> list[StepRow]:
        """The last step of every part of the video, in order: the videos joined into the
        output. A hand-off or an Omni-Video shot starts a new part."""
        live = self.live
        ends = [prev for prev, r in itertools.pairwise(live) if r.starts_part]
        return ends + live[-1:]

    def drops(self) -> list[bool]:
        """For each join between the parts: whether the part before it loses its last frame
        (a hand-off repeats it; an Omni-Video shot continues after it)."""
        return [r.is_handoff for r in self.live if r.starts_part]

    def handoffs(self) -> set[int]:
        """The steps that are hand-offs (a re-roll may have made some the storyboard has not)."""
        return {r.idx for r in self.live if r.is_handoff}

    def boundaries(self, fps: float) -> list[Boundary]:
        """The first frame each step added to the final video.

        Within a part, step i starts where step i-1's video ended; a hand-off or an
        Omni-Video shot starts a new part, placed after the previous parts (minus the
        repeated frame each hand-off's join drops).
        """
        found: list[Boundary] = []
        before_part = 0  # frames of the final video before the current part
        in_part = 0  # frames of the current part's video so far
        for r in self.live:
            if r.starts_part:
                before_part += in_part - (1 if r.is_handoff else 0)
                in_part = 0
            start = before_part + in_part
            found.append(Boundary(r.idx, r.attempt, r.kind, r.prompt, start, start / fps, r.is_handoff))
            length = r.probed_duration or r.duration
            if length is not None:
                in_part = round(length * fps)
        return found

    def part_start(self, idx: int) -> StepRow | None:
        """The step before `idx` in `idx`'s own part (its video is the start of `idx`'s), or None
        when `idx` begins a part."""
        part = [r for r in self.live if r.idx <= idx]
        starts = [i for i, r in enumerate(part) if r.idx == 0 or r.starts_part]
        first = starts[-1] if starts else 0
        return part[-2] if len(part) - 1 > first else None

    # ------------------------------------------------------------------ length, money, progress

    def length(self) -> float | None:
        """How long the video is so far: every part's latest known length, added up (the joins
        drop one frame each, which this ignores). None before any length is known."""
        total, current = 0.0, None
        for r in self.live:
            if r.starts_part:
                total, current = total + (current or 0.0), None
            if r.duration is not None:
                current = r.duration
        if current is None and total == 0.0:
            return None
        return total + (current or 0.0)

    def units(self) -> float:
        """Units the provider reported for every attempt of every step (all were charged)."""
        return float(sum(r.units or 0.0 for r in (*self.rows, *self.earlier)))

    def steps_done(self) -> int:
        return sum(1 for r in self.rows if r.state in ("downloaded", "succeeded") and r.kind != "existing")

    def steps_total(self) -> int:
        return sum(1 for r in self.rows if r.kind != "existing" and r.state != "skipped")

    def archived_prefix(self) -> list[StepRow]:
        """The downloaded steps before the first one that is not (the video so far)."""
        prefix = itertools.takewhile(lambda r: r.state in ("downloaded", "skipped"), self.rows)
        return [r for r in prefix if r.state == "downloaded"]

    def in_flight_from(self, n: int, *, lost: frozenset[int] = frozenset()) -> list[int]:
        """Steps from `n` on with a task in flight or a result not yet archived (`lost`: steps
        whose result the provider deleted, which nothing can land any more)."""
        return [r.idx for r in self.rows if r.idx >= n and r.state in IN_FLIGHT and r.idx not in lost]

    # ------------------------------------------------------------------ state

    def all_archived(self) -> bool:
        return all(
            r.state in ("downloaded", "skipped") or (r.kind == "existing" and r.state == "succeeded")
            for r in self.rows
        )

    def state(self) -> ChainState:
        """Where the chain stands: failed and unknown steps first, then whether it is written."""
        if any(r.state == "failed" for r in self.rows):
            return "failed"
        if any(r.state == "submit_unknown" for r in self.rows):
            return "needs attention"
        if self.all_archived() and self.written:
            return "done"
        return "in progress"

    def attention(self, name: str, output: str, *, output_exists: bool) -> str:
        """What the user should do for the chain, or "" when nothing."""
        failed = next((r for r in self.rows if r.state == "failed"), None)
        unknown = next((r for r in self.rows if r.state == "submit_unknown"), None)
        if failed is not None:
            return f"step {failed.idx} failed: {failed.error}; fix it or use --retry-failed"
        if unknown is not None:
            return (
                f"step {unknown.idx}: the answer to its create was lost; the next run looks for the task "
                f"again (external_task_id {unknown.external_task_id}, or the task list) before sending "
                f"anything. Where the provider cannot tell, find it in its console and attach it with "
                f"`chainer adopt {name} {unknown.idx} TASK_ID`, or, if there is none, run with "
                "--resend-unknown"
            )
        if self.all_archived() and not self.written:
            return (
                f"every result is archived, but the output {output} was not written; run the "
                "chain again to write it (nothing is paid again)"
            )
        if self.all_archived() and not output_exists:
            return f"the output {output} is gone; run the chain again to write it from the archive"
        return ""


def outcome_of(state: ChainState) -> Outcome:
    """The run outcome a chain's state reads as (in progress: it stopped before its end)."""
    match state:
        case "done":
            return "done"
        case "failed":
            return "failed"
        case "needs attention" | "in progress":
            return "needs_attention"


def liveness(state: ChainState, *, held: bool, idle_s: float | None, queued: bool = False) -> Liveness:
    """How an in-progress chain is doing: `held` says a process owns it (its lock), `idle_s`
    how long ago its last journal event was (None: none yet), `queued` that it waits in a
    team's queue for the next free worker (chainer.team.queue)."""
    match state:
        case "done" | "failed" | "needs attention":
            return state
        case "in progress":
            if not held:
                return "queued" if queued else "interrupted"
            return "stalled" if idle_s is not None and idle_s > STALL_AFTER_S else "running"
