"""Shared fixtures: a real simulator on loopback, and retries that never sleep."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import stamina
from helpers import simulator_session

from chainer.session import Session
from chainer.simulator import SimConfig, Simulator

#: Small frames and fast tasks: real HTTP, real MP4s, seconds per test.
FAST = {"time_scale": 0.0005, "width": 160, "height": 96}


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    """Retries still happen (up to 30 attempts) but without waiting."""
    with stamina.set_testing(True, attempts=30):
        yield


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[object]:
    """Start simulators with given settings; all are stopped at the end of the test."""
    started: list[Simulator] = []

    def make(**settings: object) -> Simulator:
        config = SimConfig(**{**FAST, **settings})  # type: ignore[arg-type]
        sim = Simulator(config, data_dir=tmp_path / f"sim{len(started)}", admin=True).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(sim_factory) -> Simulator:  # type: ignore[no-untyped-def]
    return sim_factory()  # type: ignore[no-any-return]


@pytest.fixture
def open_session(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Session]]:
    """Open a Session on a test simulator, served in-process: `open_session(sim, **options)`
    (see helpers.simulator_session: `wrap` for fault injection, journal and archive in
    tmp_path unless given)."""

    def opener(sim: Simulator, **options: Any) -> AbstractAsyncContextManager[Session]:
        return simulator_session(sim, tmp_path, **options)

    return opener


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path as the working directory for the test (chainer's defaults are relative)."""
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over tmp_path/'served' (base URL yielded)."""
    import http.server
    import threading
    from functools import partial

    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster per test process (tests/pgcluster.py), made the
    first time a test asks for it; each test then makes its own database in it."""
    from pgcluster import Cluster

    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A new empty PostgreSQL database for this test."""
    return str(pg_cluster.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a journal lives, once per backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "journal.sqlite")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(autouse=True)
def no_user_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own provider profiles."""
    monkeypatch.setenv("CHAINER_PROVIDERS", str(tmp_path / "no-such-providers.toml"))


#: The longest tests (each over half a minute): started first, so that on several workers
#: none of them is left running alone at the end.
SLOW_FIRST = ("test_readme.py", "test_soak.py", "test_bench.py", "test_wheel.py", "test_past_cap.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in SLOW_FIRST)  # stable: file order otherwise
