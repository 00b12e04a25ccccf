"""Reconciling a chain's journal with the plan it is run with: edits and re-rolls.

The journal's steps must be the plan's. An edit of steps never sent is taken; an edit of
a step already sent is refused with the ways on. A re-roll (--from-step N) makes steps
N.. new takes, branching at step N-1's video; the old takes stay archived.
"""

from __future__ import annotations

from .. import archive, errors, rules
from ..chain import StepRow, label
from ..plan import Step
from .context import ChainRun
from .fetch import is_lost


def _specs(run: ChainRun) -> list[tuple[int, str, str | None, str]]:
    return [(s.index, s.kind, s.prompt, s.fingerprint) for s in run.plan.steps]


def match_storyboard(run: ChainRun) -> None:
    """Take an edit of steps never sent (the user's change, nothing paid is touched);
    refuse an edit of a step already sent, with the ways on: finish the chain as it
    began, or branch with the new text."""
    journal, name, steps = run.journal, run.name, run.plan.steps
    rows = [r for r in journal.steps(name) if r.idx < len(steps) or r.state != "skipped"]
    changed = [s.index for s, r in zip(steps, rows, strict=False) if s.fingerprint != r.fingerprint]
    if not changed and len(rows) == len(steps):
        return
    first = changed[0] if changed else min(len(rows), len(steps))
    sent = [r for r in rows if r.idx >= first and r.state != "planned"]
    if not sent:
        journal.replan(name, first, _specs(run), run.plan.storyboard_sha256, run.plan.storyboard_text or None)
        run.emit(first, "replanned", f"steps {first}.. taken from the edited storyboard (none was sent)")
        return
    branch = max(first, 1)
    raise errors.StoryboardChanged(
        f"the storyboard of chain {name!r} changed since it was started (first changed step: {first}), "
        f"and step {sent[0].idx} was already sent ({label(sent[0].state)}). chainer will not "
        f"mix old and new steps. Either finish the chain as it began: `chainer resume {name}` (it uses "
        "the storyboard text kept in the journal); or branch with the new text from step "
        f"{branch} (--from-step {branch}): `chainer run {run.plan.storyboard} --from-step {branch}` "
        "(steps before it are kept; a task still in flight is finished and archived first, it is "
        "paid for)"
    )


def reroll(run: ChainRun, n: int) -> None:
    """Make steps n.. new takes, branching at step n-1's video; the old takes stay archived.

    Refused when steps before n changed, when a step from n on is still in flight (its
    result must land first: it is paid for), and when step n extends a video that Kling
    has deleted (30 days), in which case a hand-off from the archived file is offered.
    """
    journal, name = run.journal, run.name
    rows = journal.steps(name)
    if not 1 <= n < len(run.plan.steps):
        raise errors.ConfigError(
            f"--from-step {n}: chain {name!r} has steps 1 to {len(run.plan.steps) - 1} to re-roll "
            "(step 0 is the start: to redo it, run the storyboard under a new `name`)"
        )
    for step, row in zip(run.plan.steps[:n], rows, strict=False):
        if step.fingerprint != row.fingerprint:
            raise errors.RerollRefused(
                f"--from-step {n}: step {step.index} of {name!r} changed too; re-roll from step "
                f"{max(step.index, 1)} to regenerate it"
            )
    branch = rows[n - 1] if len(rows) >= n else None
    if branch is None or branch.video_id is None:
        raise errors.RerollRefused(
            f"--from-step {n}: step {n - 1} of {name!r} has no video yet; run the chain first"
        )
    lost = frozenset(r.idx for r in rows if is_lost(r))
    busy = journal.view(name).in_flight_from(n, lost=lost)
    if busy:
        raise errors.RerollRefused(
            f"--from-step {n}: step {busy[0]} of {name!r} has a task in flight or a result not yet "
            "archived; resume the chain first (it is paid for), then re-roll"
        )
    _refuse_deleted_branch(run, n, branch)
    journal.reroll(name, n, _specs(run), run.plan.storyboard_sha256, run.plan.storyboard_text or None)
    run.emit(n, "re-roll", f"new takes of steps {n} to {len(run.plan.steps) - 1}")


def _refuse_deleted_branch(run: ChainRun, n: int, branch: StepRow) -> None:
    """Step n continues `branch`'s video at Kling; refuse when Kling has deleted it."""
    left = archive.time_left(branch.remote_created_ms)
    kind = run.plan.steps[n].kind
    if left is None or left.total_seconds() > 0 or kind not in ("omni-video", "video-extend"):
        return
    deleted = (
        f"--from-step {n}: step {n - 1}'s video {branch.video_id} was made "
        f"{archive.from_ms(branch.remote_created_ms):%Y-%m-%d} and Kling deleted it after "
        f"{rules.RETENTION_DAYS} days"
    )
    if kind == "omni-video":
        raise errors.RerollRefused(
            f"{deleted}; an Omni-Video shot references the previous shot by its url, so step {n} "
            "cannot be made again from it"
        )
    raise errors.RerollRefused(
        f"{deleted}, so it cannot be extended. Re-roll from its last frame instead (an "
        "image2video from the archived file, starting a new part): add --from-last-frame"
    )


def no_longer_needed(run: ChainRun, step: Step, parent: StepRow) -> str | None:
    """Why an optional step (added for target_duration) should not run, or None."""
    total = run.length()
    if total is None or parent.duration is None:
        return None
    target = run.plan.target_duration
    if target is not None and total >= target:
        return f"the video is {total:g} s, target_duration {target:g} s reached"
    if step.kind == "video-extend":
        return rules.extension_refusal(run.plan.model, parent.duration)
    return None
