"""Helpers shared by tests that run the real `chainer` command against a test simulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from chainer.simulator import Simulator

CHAINER = str(Path(sys.executable).parent / "chainer")


def provider_env(sim: Simulator, **extra: str) -> dict[str, str]:
    """An environment pointing `chainer` at `sim` as if it were the official API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
    env.update(
        KLING_ACCESS_KEY=sim.config.access_key,
        KLING_SECRET_KEY=sim.config.secret_key,
        KLING_BASE_URL=sim.base_url,
        CHAINER_TIME_SCALE=str(sim.config.time_scale),
        **extra,
    )
    return env
