"""chainer: storyboard in, multi-minute Kling video out, never paying twice for a step.

The public API, for use from Python (the `chainer` command is a thin layer over it):

- `load_plan(path)`: read, validate and plan a storyboard
- `Session.open(...)`: a provider (or the offline simulator), a journal and an archive
- `Session.run(plan)`: run or resume one chain to its finished video (its error raised)
- `Session.run_batch(plans, RunOptions(...))`: many chains under the account's limit, a
  result per chain (the path `chainer run` takes, for one storyboard too)
- `Simulator`, `SimConfig`: the offline Kling, on loopback
- the error tree in `chainer.errors`
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _startup  # noqa: F401  (first: it keeps a slow import out of every start)
from .batch import Batch, RunOptions
from .errors import (
    ChainerError,
    ConfigError,
    MediaError,
    ProviderError,
    StoryboardError,
    TaskFailed,
)
from .events import ChainResult, Event
from .plan import Plan, Step, load_plan
from .session import Session
from .simulator import SimConfig

if TYPE_CHECKING:
    from .simulator import Simulator


def __getattr__(name: str) -> Any:
    """`Simulator` on first use: its server and renderer are not needed by most imports."""
    if name == "Simulator":
        from .simulator import Simulator

        return Simulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Batch",
    "ChainResult",
    "ChainerError",
    "ConfigError",
    "Event",
    "MediaError",
    "Plan",
    "ProviderError",
    "RunOptions",
    "Session",
    "SimConfig",
    "Simulator",
    "Step",
    "StoryboardError",
    "TaskFailed",
    "load_plan",
]
