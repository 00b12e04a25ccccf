"""What to do next about a chain that did not finish: one answer per kind of error.

The report shows it under each chain that is not done, so a user who opens the report
the morning after a batch knows, chain by chain, what to change and which command goes on.
Every answer keeps what was paid: none of them asks to start a chain again from nothing.
"""

from __future__ import annotations

from . import errors
from .events import ChainResult


def what_next(result: ChainResult) -> str:
    """One or two sentences for a chain that stopped (empty for a finished one)."""
    if result.state == "done":
        return ""
    return _for_error(result.error, result.chain)


def _for_error(error: errors.ChainerError | None, chain: str) -> str:
    go_on = "`chainer resume` goes on from where it stopped (nothing done is paid again)"
    match error:
        case None:
            return f"It stopped before its end; {go_on}."
        case errors.TaskFailed() | errors.PolicyError():
            return (
                "The provider refused or failed a step (the reason is above). Reword that segment's "
                "prompt (or change its settings) in the storyboard, then run it with `chainer run "
                "STORYBOARD --retry-failed`: a new task, charged again."
            )
        case errors.AccountError():
            return (
                "The account cannot pay (resource pack used up, expired or not entitled): top it up "
                f"or check it in the provider's console, then {go_on}."
            )
        case errors.AuthError():
            return (
                "The credentials were refused: check KLING_ACCESS_KEY/KLING_SECRET_KEY or "
                f"KLING_API_KEY (`chainer providers check NAME`), then {go_on}."
            )
        case errors.OutcomeUnknown():
            return (
                "The answer to a create was lost. `chainer resume` looks the task up before sending "
                f"anything; where the provider cannot tell, `chainer status` says how to attach it "
                f"(`chainer adopt {chain} STEP TASK_ID`) or to send it again (--resend-unknown)."
            )
        case errors.BudgetExceeded():
            return f"The next step would pass the budget: raise max_units (or --max-units), then {go_on}."
        case errors.CreatesStopped():
            return f"Another chain's account error stopped every create; fix that, then {go_on}."
        case errors.ChainLocked():
            return "Another chainer process is running this chain; wait for it (`chainer status`)."
        case errors.ResultDeleted():
            return (
                "The provider deleted a result before it was archived: make that step again with "
                "`chainer run STORYBOARD --from-step N` (add --from-last-frame if the video before "
                "it is gone too)."
            )
        case errors.DownloadError():
            return f"A result could not be downloaded yet: `chainer archive {chain}` fetches it again."
        case errors.WriteError():
            return f"A file could not be written (disk full, or a read-only folder): free it, then {go_on}."
        case errors.StoryboardChanged() | errors.RerollRefused():
            return (
                "The storyboard no longer matches what was sent (the message says which step): undo "
                "the change, or re-roll from that step with `chainer run STORYBOARD --from-step N`."
            )
        case errors.RateLimitError() | errors.ServerError() | errors.RequestNotSent():
            return f"The provider could not be reached or was busy; {go_on} later."
        case _:
            return f"`chainer status` says what the chain needs; then {go_on}."
