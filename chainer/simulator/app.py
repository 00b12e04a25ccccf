"""The simulator's HTTP API: Kling's routes, auth and envelope, as an ASGI app.

Official dialect: `Authorization: Bearer <jwt>` signed with the secret key, every 100x
code as Kling documents it. Proxy dialect: a plain bearer key under a path prefix.
The admin routes under `/_sim/` exist only when `admin=True` (tests and `chainer sim`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import rules
from .state import SimError, SimState

KINDS = rules.TASK_KINDS
#: A create's render waits for its answer to be sent, this long at most (renders.py).
RENDER_HOLD_MS = 50


def _envelope(
    data: Any,
    *,
    code: int = 0,
    message: str = "SUCCEED",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}
    return JSONResponse(body, status_code=status, headers=headers)


def _refusal(exc: SimError) -> JSONResponse:
    headers = {"Retry-After": f"{exc.retry_after:g}"} if exc.retry_after is not None else None
    return _envelope(None, code=exc.code, message=exc.message, status=exc.http_status, headers=headers)


async def _before(state: SimState, request: Request, endpoint: str) -> None:
    """What every API request meets before it is served: latency, auth, limits, faults."""
    delay = state.config.latency_s.get(endpoint, 0.0)
    if delay:
        await anyio.sleep(delay)
    _check_auth(state, request)
    wait = state.take_token()
    if wait is not None:
        raise SimError(1302, "too many requests", retry_after=max(1.0, math.ceil(wait)))
    if state.fault(state.config.error_rate):
        raise SimError(5000, "internal server error (injected)")


@functools.lru_cache(maxsize=1024)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _sha256_b64(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_mtime_ns, stat.st_size)


def _streamed(path: Path, *, truncate: bool, rate: float, extra: dict[str, str]) -> Response:
    """A whole-file answer that can be slow, or can stop half-way after promising it all."""
    size = path.stat().st_size
    stop_at = size // 2 if truncate else size
    chunk = 64 * 1024

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        with path.open("rb") as f:
            while sent < stop_at:
                data = f.read(min(chunk, stop_at - sent))
                if not data:
                    break
                sent += len(data)
                yield data
                if rate:
                    await anyio.sleep(len(data) / rate)
        if truncate:
            raise ConnectionAbortedError("download cut off (injected)")

    stat = path.stat()
    # The same validators FileResponse sends, so a client can resume with If-Range.
    etag = hashlib.md5(f"{stat.st_mtime}-{stat.st_size}".encode(), usedforsecurity=False).hexdigest()
    headers = {
        "Content-Length": str(size),
        "Accept-Ranges": "bytes",
        "ETag": f'"{etag}"',
        "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        **extra,
    }
    return StreamingResponse(body(), media_type="video/mp4", headers=headers)


def _check_auth(state: SimState, request: Request) -> None:
    header = request.headers.get("authorization")
    if not header:
        raise SimError(1001, "Authorization header is empty")
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token or token != token.strip():
        raise SimError(1002, "Authorization must be 'Bearer <token>'")
    cfg = state.config
    if cfg.dialect == "proxy":
        if token != cfg.api_key:
            raise SimError(1000, "invalid API key")
        return
    try:
        claims = jwt.decode(
            token,
            cfg.secret_key,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_nbf": False, "require": ["iss", "exp", "nbf"]},
        )
    except jwt.InvalidSignatureError as exc:
        raise SimError(1002, "token signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise SimError(1002, f"token is malformed: {exc}") from exc
    if claims.get("iss") != cfg.access_key:
        raise SimError(1000, "unknown access key")
    # Tokens are judged by the real clock the client shares; the simulated clock (which
    # tests move forward by days) governs retention and url expiry only.
    now = time.time()
    if float(claims["nbf"]) > now:
        raise SimError(1003, "token not yet valid")
    if float(claims["exp"]) <= now:
        raise SimError(1004, "token expired")


def build_app(state: SimState, *, admin: bool = False) -> Starlette:
    """The ASGI app serving `state`."""
    prefix = "/" + state.config.path_prefix.strip("/") if state.config.path_prefix.strip("/") else ""

    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    def count(request: Request, key: str, code: int) -> None:
        with state.lock:
            state.requests[f"{request.method} {key} {code}"] += 1

    async def create(request: Request) -> Response:
        kind = request.path_params["kind"]
        try:
            if kind not in KINDS:
                raise SimError(1203, f"unknown endpoint {kind}")
            await _before(state, request, "create")
            try:
                body = json.loads(await request.body() or b"null")
            except json.JSONDecodeError as exc:
                raise SimError(1200, f"request body is not JSON: {exc}") from exc
            task = state.create(kind, body, hold_render_ms=RENDER_HOLD_MS)
        except SimError as exc:
            count(request, kind, exc.code)
            return _refusal(exc)
        if state.fault(state.config.lose_create_rate):
            count(request, kind, 502)
            return Response("<html><body>502 Bad Gateway</body></html>", status_code=502)
        count(request, kind, 0)
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": "submitted",
            "task_info": (
                {"external_task_id": task.external_task_id}
                if task.external_task_id and state.config.task_lookup == "external_id"
                else {}
            ),
            "created_at": task.created_ms,
            "updated_at": task.created_ms,
        }
        # a render due now starts once this answer is written (the loop runs callbacks when
        # the request's task yields, after its last write; see renders.py)
        asyncio.get_running_loop().call_soon(state.renders.release, task.task_id)
        return _envelope(data)

    async def query(request: Request) -> Response:
        kind = request.path_params["kind"]
        key = request.path_params.get("task_id")
        try:
            if kind not in KINDS:
                raise SimError(1203, f"unknown endpoint {kind}")
            await _before(state, request, "query")
            if key is not None:
                task = state.find(kind, key)
                state.observed(task)
                data: Any = state.task_json(task, base(request))
            elif "external_task_id" in request.query_params and state.config.task_lookup == "external_id":
                data = state.task_json(
                    state.find(kind, request.query_params["external_task_id"]), base(request)
                )
            else:
                if kind in state.config.unlisted_kinds:
                    raise SimError(1203, f"no task list for {kind} here")
                page = _int_param(request, "pageNum", 1, 1, 1000)
                size = _int_param(request, "pageSize", 30, 1, 500)
                listed = state.page(kind, page, size)
                state.listed_on_page(listed)
                data = [state.task_json(t, base(request)) for t in listed]
        except SimError as exc:
            count(request, f"{kind}/query", exc.code)
            return _refusal(exc)
        count(request, f"{kind}/query", 0)
        return _envelope(data)

    async def account_costs(request: Request) -> Response:
        try:
            await _before(state, request, "query")
            now = state.now_ms()
            start = _int_param(request, "start_time", now - 30 * 86_400_000, 0, 2**62)
            end = _int_param(request, "end_time", now, 0, 2**62)
            data = {"resource_pack_subscribe_infos": state.packs(start, end)}
        except SimError as exc:
            count(request, "account/costs", exc.code)
            return _refusal(exc)
        count(request, "account/costs", 0)
        return _envelope(data)

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        delay = state.config.latency_s.get("download", 0.0)
        if delay:
            await anyio.sleep(delay)
        try:
            video = state.check_signature(
                name, request.query_params.get("expires", ""), request.query_params.get("sig", "")
            )
        except PermissionError as exc:
            count(request, "files", 403)
            return Response(f"403 Forbidden: {exc}\n", status_code=403)
        except FileNotFoundError:
            count(request, "files", 404)
            return Response("404 Not Found\n", status_code=404)
        path = video.path.with_name(name)
        if not path.exists():  # a watermarked copy that was never asked for
            count(request, "files", 404)
            return Response("404 Not Found\n", status_code=404)
        count(request, "files", 200)
        digest = {"Repr-Digest": f"sha-256=:{_sha256_b64(path)}:"}  # RFC 9530, as object stores send
        if "range" not in request.headers:
            truncate = state.fault(state.config.truncate_download_rate)
            if truncate or state.config.download_bytes_per_s:
                return _streamed(
                    path, truncate=truncate, rate=state.config.download_bytes_per_s, extra=digest
                )
        return FileResponse(path, media_type="video/mp4", headers=digest)

    async def admin_creates(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                [
                    {"task_id": c.task_id, "kind": c.kind, "body": c.body, "at_ms": c.at_ms}
                    for c in state.creates
                ]
            )

    async def admin_stats(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                {
                    "peak_concurrency": state.peak_concurrency,
                    "in_flight": state.in_flight(),
                    "creates": len(state.creates),
                    "requests": dict(state.requests),
                    "clock_offset_s": state.clock_offset_s,
                }
            )

    async def admin_tasks(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                [
                    {
                        "task_id": t.task_id,
                        "kind": t.kind,
                        "external_task_id": t.external_task_id,
                        "status": state.status(t),
                        "created_ms": t.created_ms,
                        "start_ms": t.start_ms,
                        "done_ms": t.done_ms,
                        "ready_ms": t.ready_ms,
                        "succeed_seen_ms": t.succeed_seen_ms,
                        "queries": t.queries,
                        "listed": t.listed,
                        "frames": t.frames,
                    }
                    for t in state.tasks.values()
                ]
            )

    async def admin_advance(request: Request) -> Response:
        try:
            seconds = float(request.query_params.get("seconds", "0"))
        except ValueError:
            return JSONResponse({"error": "seconds must be a number"}, status_code=400)
        state.advance(seconds)
        return JSONResponse({"clock_offset_s": state.clock_offset_s})

    routes = [
        Route(prefix + "/v1/videos/{kind}", create, methods=["POST"]),
        Route(prefix + "/v1/videos/{kind}", query, methods=["GET"]),
        Route(prefix + "/v1/videos/{kind}/{task_id}", query, methods=["GET"]),
        Route(prefix + "/account/costs", account_costs, methods=["GET"]),
        Route(prefix + "/v1/account/costs", account_costs, methods=["GET"]),
        Route("/files/{name}", download, methods=["GET", "HEAD"]),
    ]
    if admin:
        routes += [
            Route("/_sim/creates", admin_creates, methods=["GET"]),
            Route("/_sim/stats", admin_stats, methods=["GET"]),
            Route("/_sim/tasks", admin_tasks, methods=["GET"]),
            Route("/_sim/advance", admin_advance, methods=["POST"]),
        ]
    return Starlette(routes=routes, exception_handlers={404: _unrouted, 405: _unrouted})


async def _unrouted(request: Request, exc: Exception) -> Response:
    """Kling answers every request it has no route for in its envelope, never a bare text:
    an unknown path is 404 / 1203, a known path with the wrong method 404 / 1202."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return _refusal(SimError(1202, f"{request.method} is not allowed on {request.url.path}"))
    return _refusal(SimError(1203, f"no such resource: {request.url.path}"))


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SimError(1201, f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise SimError(1201, f"{name} must be in [{lo}, {hi}]")
    return value
