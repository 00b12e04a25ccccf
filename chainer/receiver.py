"""The callback receiver's HTTP side: an ASGI app that hands each POST to the run's
CallbackHub (chainer.callbacks says what is trusted and why), served by uvicorn on the
run's own event loop. Imported only by a run that listens (uvicorn and starlette are a
tenth of a second of every start)."""

from __future__ import annotations

import contextlib
import hmac
import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from .callbacks import DEFAULT_LISTEN, MAX_BODY, CallbackHub, parse_task
from .errors import ConfigError


class Receiver:
    """The ASGI app that takes callbacks for `hub`: any path whose last segment is the token."""

    def __init__(self, hub: CallbackHub):
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> JSONResponse:
        hub = self.hub
        token = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method != "POST" or not hmac.compare_digest(token.encode(), hub.token.encode()):
            hub.count("wrong token")
            return JSONResponse({"ok": False}, status_code=404)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                hub.count("too large")
                return JSONResponse({"ok": False}, status_code=413)
        task = parse_task(bytes(body))
        if task is None:
            hub.count("not a task")
            return JSONResponse({"ok": False}, status_code=400)
        hub.count(hub.heard(task))
        return JSONResponse({"ok": True})


class _Server(uvicorn.Server):
    """uvicorn inside chainer's event loop: Ctrl-C stays chainer's (no signal handlers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: str) -> socket.socket:
    """A listening socket on `listen` (HOST:PORT), or ConfigError saying why not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for callbacks on {listen}: {exc.strerror}; choose another --listen "
            "address (nothing was sent)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def server(hub: CallbackHub) -> _Server:
    """The receiver's HTTP server (no access log: the path holds the token)."""
    config = uvicorn.Config(Receiver(hub), log_level="warning", access_log=False, lifespan="off")
    return _Server(config)


@contextlib.asynccontextmanager
async def receiving(public_url: str, listen: str = DEFAULT_LISTEN) -> AsyncIterator[CallbackHub]:
    """Serve the receiver on `listen` for as long as the block runs; `public_url` is where
    the provider reaches it (a reverse proxy or tunnel in front of `listen`)."""
    if not public_url.startswith(("https://", "http://")):
        raise ConfigError(f"--callback-url {public_url!r}: expected an http(s) URL the provider can reach")
    hub = CallbackHub(public_url)
    sock = bind(listen)
    served = server(hub)
    async with anyio.create_task_group() as group:
        group.start_soon(served.serve, [sock])
        try:
            yield hub
        finally:
            served.should_exit = True
    sock.close()
