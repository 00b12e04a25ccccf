"""Helpers shared by tests that run the real `chainer` command against a test simulator."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from chainer import load_plan, plan, storyboard
from chainer.errors import StoryboardError
from chainer.events import ChainResult
from chainer.session import Session, simulator_provider
from chainer.simulator import IN_PROCESS_URL, Simulator

CHAINER = str(Path(sys.executable).parent / "chainer")
#: The project's root folder (a clone).
ROOT = Path(__file__).resolve().parents[1]


def provider_env(sim: Simulator, **extra: str) -> dict[str, str]:
    """An environment pointing `chainer` at `sim` as if it were the official API."""
    return sim.client_env(**extra)


def cli_in_process(sim: Simulator, *args: str) -> tuple[int, str]:
    """`chainer ARGS...` run in this process against `sim` (typer's CliRunner): exit code, output."""
    from typer.testing import CliRunner

    from chainer.cli import app

    result = CliRunner().invoke(app, list(args), env=provider_env(sim))
    return result.exit_code, result.output


def write_storyboard(tmp_path: Path, text: str, name: str = "sb.yaml") -> Path:
    """`text` (dedented) as a storyboard file in tmp_path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def plan_problems(path: Path) -> list[str]:
    """Every problem chainer finds in `path`, form and rules alike (it must find one)."""
    with pytest.raises(StoryboardError) as caught:
        plan.build(storyboard.load(path))
    return [str(p) for p in caught.value.problems]


def simulator_session(
    sim: Simulator,
    tmp_path: Path,
    *,
    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
    provider_update: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    archive_dir: Path | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[Session]:
    """A Session on `sim` served in-process (httpx.ASGITransport over its app: no socket),
    journal and archive in tmp_path. `wrap` puts a transport around it (fault injection);
    `provider_update` changes provider settings; other keywords go to Session.open."""
    transport: httpx.AsyncBaseTransport = sim.asgi_transport()
    if wrap is not None:
        transport = wrap(transport)
    provider = simulator_provider(sim, time_scale=sim.config.time_scale, base_url=IN_PROCESS_URL)
    if provider_update:
        provider = provider.model_copy(update=provider_update)
    return Session.open(
        state_dir=state_dir or tmp_path / "state",
        archive_dir=archive_dir or tmp_path / "archive",
        provider=provider,
        transport=transport,
        **options,
    )


def run_chain(sim: Simulator, sb: Path, tmp_path: Path) -> ChainResult:
    """Run storyboard `sb` to the end through the library (journal and archive in tmp_path)."""

    async def main() -> ChainResult:
        async with simulator_session(sim, tmp_path) as session:
            return await session.run(load_plan(sb))

    return anyio.run(main)


def project_copy(dest: Path, *, venv: bool = True) -> Path:
    """The project's files (tracked and new, not ignored) in `dest`, with this venv as .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if venv:
        (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest
