"""Run the simulator as a real HTTP server on loopback: in a thread, or in the foreground.

with Simulator(SimConfig(time_scale=0.001)) as sim:
    sim.base_url   # http://127.0.0.1:<free port>
    sim.state      # the simulated account, for inspection
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from .app import build_app
from .config import SimConfig
from .state import IN_PROCESS_HOST, SimState


def client_env(config: SimConfig, base_url: str, **extra: str) -> dict[str, str]:
    """This process's environment, minus any Kling or chainer settings, plus what makes a
    `chainer` subprocess call the simulator at `base_url` as if it were Kling's official API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
    env.update(
        KLING_ACCESS_KEY=config.access_key,
        KLING_SECRET_KEY=config.secret_key,
        KLING_BASE_URL=base_url,
        CHAINER_TIME_SCALE=str(config.time_scale),
    )
    env.update(extra)  # the caller's settings win (a test may pretend Kling's real pace)
    return env


#: The base URL to reach a simulator served in-process (Simulator.asgi_transport).
IN_PROCESS_URL = f"http://{IN_PROCESS_HOST}"


class Simulator:
    """A simulated Kling serving on 127.0.0.1 from a background thread."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        admin: bool = False,
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
    ):
        self.config = config or SimConfig()
        #: Serve https with this certificate and key (signed file urls then use https too).
        self.ssl = (str(ssl_certfile), str(ssl_keyfile)) if ssl_certfile and ssl_keyfile else None
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="chainer-sim-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.state = SimState(self.config, self.data_dir)
        self.host, self.port = host, port
        self.admin = admin
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._notifier: _Notifier | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    def asgi_transport(self) -> httpx.ASGITransport:
        """An httpx transport that serves this simulator's app in-process: no server, no
        socket (use IN_PROCESS_URL as the base URL; the app signs its urls for it)."""
        return httpx.ASGITransport(app=build_app(self.state, admin=self.admin))

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a `chainer` subprocess calling this simulator (see `client_env`)."""
        return client_env(self.config, self.base_url, **extra)

    def start(self) -> Simulator:
        sock = self._bind()
        self.port = sock.getsockname()[1]
        (self.data_dir / "port").write_text(str(self.port))
        app = build_app(self.state, admin=self.admin)
        cert, key = self.ssl or (None, None)
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, ssl_certfile=cert, ssl_keyfile=key
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="chainer-sim", daemon=True
        )
        self._thread.start()
        ready = threading.Event()
        for _ in range(500):
            if self._server.started or not self._thread.is_alive():
                break
            ready.wait(0.01)
        if not self._server.started:
            raise RuntimeError("the simulator did not start")
        self._notifier = _Notifier(self.state, self.base_url)
        return self

    def _bind(self) -> socket.socket:
        """Bind the requested port; for port 0, the last run's port if it is free (so urls
        handed out then still work), else any free one."""
        candidates = [self.port]
        remembered = self.data_dir / "port"
        if self.port == 0 and remembered.exists() and remembered.read_text().strip().isdigit():
            candidates.insert(0, int(remembered.read_text()))
        for port in candidates:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Answers go out as header and body writes; without this, Nagle holds the body back
            # until the client's delayed ACK (40 ms on Linux) on every kept-alive connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind((self.host, port))
                return sock
            except OSError:
                sock.close()
                if port == candidates[-1]:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.state.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Notifier:
    """Sends due callbacks from a background thread, every CALLBACK_INTERVAL_S."""

    def __init__(self, state: SimState, base_url: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(state, base_url), name="sim-callbacks", daemon=True
        )
        self._thread.start()

    def _run(self, state: SimState, base_url: str) -> None:
        # kept alive: a receiver is posted to again and again, several callbacks at once
        with (
            httpx.Client(limits=httpx.Limits(max_connections=CALLBACKS_AT_ONCE)) as http,
            ThreadPoolExecutor(CALLBACKS_AT_ONCE, thread_name_prefix="sim-callback") as pool,
        ):
            while not self._stop.wait(CALLBACK_INTERVAL_S):
                state.send_callbacks(base_url, http, pool)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


#: How often due callbacks are looked for (cheap: only tasks with a callback_url are).
CALLBACK_INTERVAL_S = 0.005
#: Callbacks in flight at once.
CALLBACKS_AT_ONCE = 16


def serve_forever(
    config: SimConfig,
    *,
    data_dir: Path | None,
    host: str,
    port: int,
    admin: bool,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    on_listening: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve in the foreground until Ctrl-C (for `chainer sim`); https with a certificate.

    The port is bound first, so a busy one raises OSError before anything is announced;
    `on_listening` then gets the URL served (with the real port when `port` was 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    scheme = "https" if ssl_certfile else "http"
    url = f"{scheme}://{host}:{sock.getsockname()[1]}"
    state = SimState(config, data_dir or Path(tempfile.mkdtemp(prefix="chainer-sim-")))
    notifier = _Notifier(state, url)
    on_listening(url)
    try:
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(state, admin=admin),
                log_level="info",
                lifespan="off",
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
        )
        server.run(sockets=[sock])
    finally:
        notifier.stop()
        state.close()
        sock.close()
