"""Every error chainer raises, in one tree.

The tree separates the questions a caller must answer after a failure:

    ChainerError
    ├── StoryboardError          the storyboard is wrong; positioned problems, nothing was sent
    ├── ConfigError              a flag, an environment variable or a profile is wrong
    ├── ProviderError            talking to the provider failed (carries request_id when known)
    │   ├── RequestNotSent       provably never left this machine: safe to send again
    │   │   └── CertificateRejected  ... but the TLS certificate failed verification: fix, then send
    │   ├── OutcomeUnknown       sent, but no trustworthy answer came back: a create may have
    │   │                        happened, so it must be reconciled, never blindly re-sent
    │   │   └── SubmitUnknown    ... and the provider cannot be asked: the user must check
    │   ├── StillRunning         a task outlived the poll deadline: nothing failed, ask later
    │   ├── ProtocolError        the provider answered with something that is not its protocol
    │   │   └── LookupUndecided  a lookup by external_task_id got an answer that cannot tell
    │   └── ApiError             the provider answered with a non-zero business code
    │       ├── AuthError            1000-1004
    │       ├── AccountError         1100-1103 (arrears, no resource pack, no permission)
    │       ├── InvalidRequestError  1200-1203
    │       │   ├── NotFound             1203: no such task or video (any more)
    │       │   └── DuplicateExternalId  a create's external_task_id is taken: an earlier POST arrived
    │       ├── PolicyError          1300, 1301, 1304
    │       ├── RateLimitError       1302, 1303, which need opposite handling:
    │       │   ├── TooFast              1302: requests too fast; back off and send again
    │       │   └── AccountFull          1303: the account's tasks are at its limit; wait for a slot
    │       └── ServerError          5000-5002
    ├── TaskFailed               the API call worked, but the remote task ended `failed`
    ├── BudgetExceeded           the next task would pass the chain's credit budget
    ├── CreatesStopped           an account error earlier in the run stopped every create
    ├── ChainLocked              another process owns this chain
    ├── JournalError             the local journal is unusable or disagrees with itself
    ├── OrchestrationError       what the user asked of a chain cannot be done as things stand
    │   ├── StoryboardChanged    a chain's storyboard was edited after some of it was sent
    │   └── RerollRefused        a re-roll (--from-step) cannot start from where the chain is
    ├── ResultDeleted            the provider deleted a result (30 days on) before it was archived
    ├── DownloadError            a result could not be fetched (transient: retry)
    │   ├── UrlExpired           the signed url is dead: query the task for a fresh one
    │   └── VerificationFailed   the bytes arrived but are not the video reported (kept aside)
    ├── MediaError               an ffmpeg/ffprobe call failed (carries the command and stderr)
    └── WriteError               a file chainer must write could not be (full disk, no permission)

"The remote task failed" (TaskFailed) is kept apart from "the API call failed"
(ProviderError): the first cost money and needs a new prompt, the second usually needs
a retry or a fix of credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ChainerError(Exception):
    """Base of every error chainer raises on purpose."""

    exit_code: int = 1


@dataclass(frozen=True)
class Problem:
    """One positioned problem in an input file (storyboard, config)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class StoryboardError(ChainerError):
    """A storyboard could not be accepted. Holds every problem found in one pass."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(ChainerError):
    """A command-line flag, environment variable or profile setting is unusable."""

    exit_code = 2


class ProviderError(ChainerError):
    """Talking to the provider failed. `request_id` is what its support will ask for."""

    def __init__(self, message: str, *, request_id: str | None = None):
        self.request_id = request_id
        suffix = f" (request_id {request_id})" if request_id else ""
        super().__init__(f"{message}{suffix}")

    @property
    def retryable(self) -> bool:
        return False


class RequestNotSent(ProviderError):
    """The request never reached the provider (connect error or connect/pool timeout)."""

    @property
    def retryable(self) -> bool:
        return True


class CertificateRejected(RequestNotSent):
    """The provider's TLS certificate failed verification: never sent, and sending again
    cannot help until the certificate (or the CA chainer trusts, SSL_CERT_FILE) changes."""

    @property
    def retryable(self) -> bool:
        return False


class OutcomeUnknown(ProviderError):
    """The request may have been acted on, but no trustworthy answer came back.

    For a query this is just a failed read. For a create it means a task may exist and
    be billed: the caller must reconcile (look the task up) before any new submission.
    """

    @property
    def retryable(self) -> bool:
        return True


class SubmitUnknown(OutcomeUnknown):
    """A create's outcome is unknown and the provider cannot be asked: the user must check."""

    @property
    def retryable(self) -> bool:
        return False


class StillRunning(ProviderError):
    """A task is still queued or running at the provider past the poll deadline. Nothing
    failed and nothing will be created again: a later run (or a team's next worker) goes on
    waiting for it."""


class ProtocolError(ProviderError):
    """The provider's answer does not follow the Kling protocol (bad JSON, wrong shape)."""


class LookupUndecided(ProtocolError):
    """A lookup by external_task_id was answered with something that cannot tell whether the
    task exists (e.g. the task list, without our id in it): "cannot tell", never "none"."""


class ApiError(ProviderError):
    """The provider answered with a non-zero business `code`."""

    def __init__(
        self,
        *,
        code: int,
        message: str,
        http_status: int,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        meaning: str = "",
    ):
        self.code = code
        self.api_message = message
        self.http_status = http_status
        self.meaning = meaning
        self.retry_after = retry_after
        self._retryable = retryable
        what = f"{meaning}: {message}" if meaning and message else (meaning or message)
        super().__init__(f"HTTP {http_status}, code {code}: {what}", request_id=request_id)

    @property
    def retryable(self) -> bool:
        return self._retryable


class AuthError(ApiError):
    """1000-1004: credentials missing, malformed, not yet valid or expired."""


class AccountError(ApiError):
    """1100-1103: the account cannot pay or is not entitled. Stops everything at once."""


class InvalidRequestError(ApiError):
    """1200-1203: the request itself is wrong (bad field, unknown task or video id)."""


class PolicyError(ApiError):
    """1300, 1301, 1304: a platform, content-safety or IP policy refused the request."""


class NotFound(InvalidRequestError):
    """1203: the task or video asked about does not exist, or no longer does (30 days on)."""


class DuplicateExternalId(InvalidRequestError):
    """A create refused because a task with its external_task_id exists already: an
    earlier POST of the same create arrived. Never a new task: look that one up."""


class RateLimitError(ApiError):
    """1302 (too fast) and 1303 (account concurrency full): wait and try again."""


class TooFast(RateLimitError):
    """1302: requests come too fast. Nothing was created: back off and send it again."""


class AccountFull(RateLimitError):
    """1303: the account runs as many tasks as it may. Nothing was created: wait until one
    of its tasks ends (a slot frees), then send it; sending sooner only meets 1303 again."""


class ServerError(ApiError):
    """5000-5002: the provider's own trouble. Retry later."""


class TaskFailed(ChainerError):
    """The remote task ended with `task_status: failed`; the provider's reason is kept."""

    def __init__(self, *, task_id: str, reason: str, request_id: str | None = None):
        self.task_id = task_id
        self.reason = reason
        self.request_id = request_id
        super().__init__(f"task {task_id} failed: {reason or 'no reason given'}")


class BudgetExceeded(ChainerError):
    """The next task would take the chain past its credit budget; nothing was submitted."""

    exit_code = 4


class CreatesStopped(ChainerError):
    """Nothing was sent: an account error (1100-1103) earlier in this run stopped every
    create, while the tasks already paid for were still polled and archived."""


class ChainLocked(ChainerError):
    """Another live process owns the chain."""

    exit_code = 3


class JournalError(ChainerError):
    """The journal cannot be used as it is (corrupt, newer schema, changed request)."""


class OrchestrationError(ChainerError):
    """What was asked of a chain cannot be done as it stands; the message says the way on."""


class StoryboardChanged(OrchestrationError):
    """A chain's storyboard changed after some of its steps were sent."""


class RerollRefused(OrchestrationError):
    """A re-roll (--from-step) cannot start: a step before it changed, its branch point has
    no video, a step from it on is still in flight, or the video it extends is deleted."""


class ResultDeleted(ChainerError):
    """The provider has deleted a result (30 days after its creation) before chainer archived
    it: no retry can bring it back; the message says how to make the step again."""


class DownloadError(ChainerError):
    """A result could not be downloaded (yet); retrying may help."""


class UrlExpired(DownloadError):
    """The signed url no longer works (401/403/404/410): query the task for a fresh one."""


class VerificationFailed(DownloadError):
    """The file arrived but is not what the provider reported; it is kept aside, not archived."""


class MediaError(ChainerError):
    """An ffmpeg or ffprobe call failed; the message carries the command and stderr tail."""

    def __init__(self, message: str, *, command: Sequence[str] = (), stderr: str = ""):
        self.command = list(command)
        self.stderr = stderr
        parts = [message]
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if stderr:
            tail = "\n".join(stderr.strip().splitlines()[-8:])
            parts.append("ffmpeg said:\n" + tail)
        super().__init__("\n".join(parts))


class WriteError(ChainerError):
    """A file chainer must write (a result, the output, a folder's probe) could not be
    written: a full disk or a folder without write permission. Not retried: it needs you."""
