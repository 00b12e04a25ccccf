"""Helpers shared by tests that run the real `chainer` command against a test simulator."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from chainer import load_plan, plan, storyboard
from chainer.errors import StoryboardError
from chainer.events import ChainResult
from chainer.session import Session, simulator_provider
from chainer.simulator import Simulator

CHAINER = str(Path(sys.executable).parent / "chainer")


def provider_env(sim: Simulator, **extra: str) -> dict[str, str]:
    """An environment pointing `chainer` at `sim` as if it were the official API."""
    return sim.client_env(**extra)


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


def run_chain(sim: Simulator, sb: Path, tmp_path: Path) -> ChainResult:
    """Run storyboard `sb` to the end through the library (journal and archive in tmp_path)."""

    async def main() -> ChainResult:
        provider = simulator_provider(sim, time_scale=sim.config.time_scale)
        async with Session.open(
            state_dir=tmp_path / "state", archive_dir=tmp_path / "archive", provider=provider
        ) as session:
            return await session.run(load_plan(sb))

    return anyio.run(main)
