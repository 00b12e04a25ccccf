"""The Kling HTTP client: one request per call, every outcome mapped to chainer's errors.

The client knows the wire and nothing else: it never retries, never sleeps and never
decides what to do next (that is the runner's job). Its single transport seam is the
`httpx.AsyncClient` it is given, which unit tests build on `httpx.MockTransport`.

Outcome mapping, applied once, here:
- connect error / connect or pool timeout        -> RequestNotSent (safe to send again)
- any other transport failure (read timeout, ...) -> OutcomeUnknown
- an envelope with code != 0                      -> the ApiError subclass for its family
- a body that is not the Kling envelope           -> ProtocolError
For creates, everything that leaves the server's action in doubt (5xx, a server-family
code, a reply that cannot be read) is raised as OutcomeUnknown, chained to the cause,
because a task may exist and be billed.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from .. import errors
from ..rules import TaskKind, error_code
from .auth import BearerAuth, JwtAuth
from .config import ProviderConfig
from .wire import AccountCosts, CreateRequest, Envelope, Task

_FAMILY_ERRORS: dict[str, type[errors.ApiError]] = {
    "auth": errors.AuthError,
    "account": errors.AccountError,
    "invalid": errors.InvalidRequestError,
    "policy": errors.PolicyError,
    "rate": errors.RateLimitError,
    "server": errors.ServerError,
}

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: API requests in flight at once from one client. More wait in an anyio limiter, where
#: waiting costs nothing, rather than in httpcore's pool, which looks at every connection
#: (and asks each socket whether it is still open) each time a request starts or ends: a
#: resumed batch of hundreds asks about every task at once. Eight keep a provider tens of
#: milliseconds away busy for a batch of thousands; a profile put a third of a resume's
#: polling time in that pool work with 32 (bench/PROFILE.md).
REQUESTS_AT_ONCE = 8
#: Connections kept open between polls: the API's plus a run's downloads (as many as the
#: account runs tasks at once). httpx's defaults (20 idle connections, closed after 5 s)
#: would reconnect for most polls; more than needed cost pool work on every request.
DEFAULT_LIMITS = httpx.Limits(max_connections=24, max_keepalive_connections=24, keepalive_expiry=60.0)

M = TypeVar("M", bound=BaseModel)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for APIs, and backoff covers it


def _causes(exc: BaseException) -> list[BaseException]:
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    return causes


def _certificate_rejected(exc: httpx.TransportError) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(exc))


def _why_unreachable(exc: httpx.TransportError) -> str:
    """What a connection failure most likely means, in the user's terms (httpx's own text,
    "All connection attempts failed", hides the cause: it is further down the chain)."""
    causes = _causes(exc)
    text = " ".join(str(c) for c in causes).lower()
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "its host name does not resolve (check the spelling, and DNS)"
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return "the TLS handshake failed: its certificate is not trusted (a private CA goes in SSL_CERT_FILE)"
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return "the TLS handshake failed (is it https, and the right host?)"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "nothing accepts connections there (a wrong host or port?)"
    if isinstance(exc, httpx.PoolTimeout):
        return "no connection to it came free in time"
    if isinstance(exc, httpx.ConnectTimeout):
        return "it did not answer the connection in time (a wrong host, a firewall or a proxy)"
    if any(s in text for s in ("name or service", "nodename", "getaddrinfo", "name resolution")):
        return "its host name does not resolve (check the spelling, and DNS)"
    if any(s in text for s in ("ssl", "tls", "certificate")):
        return "the TLS handshake failed (is it https, and the right host?)"
    if "refused" in text:
        return "nothing accepts connections there (a wrong host or port?)"
    return "the connection could not be made"


#: Codes whose handling differs from the rest of their family get classes of their own.
_CODE_ERRORS: dict[int, type[errors.ApiError]] = {
    1203: errors.NotFound,
    1302: errors.TooFast,
    1303: errors.AccountFull,
}


def api_error(envelope: Envelope, response: httpx.Response) -> errors.ApiError:
    """The typed exception for a non-zero business code."""
    entry = error_code(envelope.code, response.status_code)
    cls = _CODE_ERRORS.get(envelope.code) or _FAMILY_ERRORS[entry.family]
    return cls(
        code=envelope.code,
        message=envelope.message,
        http_status=response.status_code,
        request_id=envelope.request_id or response.headers.get("X-Request-Id"),
        retryable=entry.retryable,
        retry_after=_retry_after(response),
        meaning=entry.meaning,
    )


def _names_external_id(exc: errors.InvalidRequestError) -> bool:
    """Whether a create's 1201 says its external_task_id is taken (Kling answers a duplicate
    external_task_id this way; the field is the only one a resend has in common)."""
    return exc.code == 1201 and "external_task_id" in exc.api_message


class KlingClient:
    """Create, query and list Kling video tasks over one httpx.AsyncClient."""

    def __init__(self, config: ProviderConfig, *, http: httpx.AsyncClient | None = None):
        self.config = config
        self._auth: httpx.Auth
        if config.dialect == "official":
            if not (config.access_key and config.secret_key):
                raise errors.ConfigError("the official dialect needs an access key and a secret key")
            self._auth = JwtAuth(config.access_key.get_secret_value(), config.secret_key.get_secret_value())
        else:
            if not config.api_key:
                raise errors.ConfigError(f"provider {config.name!r} needs an API key")
            self._auth = BearerAuth(config.api_key.get_secret_value())
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=DEFAULT_LIMITS)
        self._owns_http = http is None
        self._at_once = anyio.CapacityLimiter(REQUESTS_AT_ONCE)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> KlingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public calls

    async def create(self, kind: TaskKind, request: CreateRequest) -> Task:
        """Create a task. Only RequestNotSent and 4xx ApiErrors prove nothing was created."""
        try:
            data, rid = await self._call("POST", f"/v1/videos/{kind}", json_body=request.body())
            return self._parse(Task, data, kind, rid)
        except errors.ApiError as exc:
            if exc.http_status >= 500 or isinstance(exc, errors.ServerError):
                raise errors.OutcomeUnknown(
                    f"create {kind} answered {exc}; a task may have been created",
                    request_id=exc.request_id,
                ) from exc
            if isinstance(exc, errors.InvalidRequestError) and _names_external_id(exc):
                raise errors.DuplicateExternalId(
                    code=exc.code,
                    message=exc.api_message,
                    http_status=exc.http_status,
                    request_id=exc.request_id,
                    meaning=exc.meaning,
                ) from exc
            raise
        except errors.ProtocolError as exc:
            raise errors.OutcomeUnknown(
                f"create {kind} got an unreadable answer; a task may have been created",
                request_id=exc.request_id,
            ) from exc

    async def get_task(self, kind: TaskKind, task_id: str) -> Task:
        """One task by its task_id."""
        data, rid = await self._call("GET", f"/v1/videos/{kind}/{task_id}")
        return self._parse(Task, data, kind, rid)

    async def find_by_external_id(self, kind: TaskKind, external_task_id: str) -> Task | None:
        """The task created with `external_task_id`, or None if the provider has none.

        Uses the query-parameter form (kling-api.md §8 lists both forms); a 1203 "not
        found" and an empty answer both mean no such task (whether that can be trusted is
        chainer.lookup's question); a task list in answer raises LookupUndecided.
        """
        try:
            data, rid = await self._call(
                "GET", f"/v1/videos/{kind}", params={"external_task_id": external_task_id}
            )
        except errors.NotFound:
            return None
        if isinstance(data, list):
            # A provider that ignores the parameter answers with its task list: only an
            # exact echo of our id identifies our task there, and its absence proves nothing.
            for item in data:
                task = self._parse(Task, item, kind, rid)
                if task.task_info.external_task_id == external_task_id:
                    return task
            raise errors.LookupUndecided(
                f"asked for the {kind} task with external_task_id {external_task_id!r}, the provider "
                f"answered with a list of {len(data)} task(s) without it: it ignores the lookup",
                request_id=rid,
            )
        if not data:
            return None
        task = self._parse(Task, data, kind, rid)
        if task.task_info.external_task_id not in (None, external_task_id):
            raise errors.ProtocolError(
                f"asked for external_task_id {external_task_id!r}, got a task with "
                f"{task.task_info.external_task_id!r}",
                request_id=rid,
            )
        return task

    async def account_costs(self, *, start_ms: int, end_ms: int) -> AccountCosts:
        """The account's resource packs bought between `start_ms` and `end_ms` (a free read).

        Packs are selected by purchase time, so the window must reach back far enough to
        include older packs that are still valid (kling-api.md §10).
        """
        data, rid = await self._call(
            "GET", "/account/costs", params={"start_time": start_ms, "end_time": end_ms}
        )
        return self._parse(AccountCosts, data or {}, "account/costs", rid)

    async def list_tasks(self, kind: TaskKind, *, page: int = 1, page_size: int = 30) -> list[Task]:
        """One page of the account's tasks of `kind`."""
        data, rid = await self._call(
            "GET", f"/v1/videos/{kind}", params={"pageNum": page, "pageSize": page_size}
        )
        if not isinstance(data, list):
            raise errors.ProtocolError(
                f"list {kind} returned {type(data).__name__}, not a list", request_id=rid
            )
        return [self._parse(Task, item, kind, rid) for item in data]

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[Any, str | None]:
        """Send one request; return the envelope's `data` and the provider's request id."""
        url = self.config.endpoint(path)
        try:
            async with self._at_once:
                response = await self._http.request(
                    method, url, json=json_body, params=params, auth=self._auth
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            cls = errors.CertificateRejected if _certificate_rejected(exc) else errors.RequestNotSent
            raise cls(
                f"{method} {url} was never sent: {_why_unreachable(exc)} ({exc or type(exc).__name__}). "
                f"Nothing was created or charged. Check the base URL ({self.config.base_url}: "
                "KLING_BASE_URL or --base-url) and the network"
            ) from exc
        except httpx.TransportError as exc:
            raise errors.OutcomeUnknown(f"{method} {path} got no answer: {exc!r}") from exc
        request_id = response.headers.get("X-Request-Id")
        try:
            envelope = Envelope.model_validate(response.json())
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            snippet = response.text[:200].replace("\n", " ")
            if response.status_code >= 500:
                raise errors.ServerError(
                    code=0,
                    message=f"non-JSON answer: {snippet!r}",
                    http_status=response.status_code,
                    request_id=request_id,
                    retryable=True,
                    retry_after=_retry_after(response),
                    meaning="server error",
                ) from exc
            raise errors.ProtocolError(
                f"{method} {path} answered HTTP {response.status_code} with a body that is not the "
                f"Kling envelope: {snippet!r}",
                request_id=request_id,
            ) from exc
        if envelope.code != 0:
            if envelope.code in (1003, 1004) and isinstance(self._auth, JwtAuth):
                self._auth.invalidate()
            raise api_error(envelope, response)
        if response.status_code >= 400:
            raise errors.ProtocolError(
                f"{method} {path} answered HTTP {response.status_code} with code 0",
                request_id=envelope.request_id,
            )
        return envelope.data, envelope.request_id or request_id

    def _parse(self, model: type[M], data: Any, kind: str, request_id: str | None) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise errors.ProtocolError(
                f"{kind}: the provider's task object does not match the Kling schema: "
                f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
                request_id=request_id,
            ) from exc
