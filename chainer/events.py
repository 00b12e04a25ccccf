"""What a run tells the world: an event per thing worth telling, a result per chain.

Events flow out of the engine to whoever listens (the progress view, `--json`, a test);
results are what a run returns and what last-run.json and the report are written from.
Both are plain data, so every layer may import them and none imports the engine for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import errors
from .chain import Outcome


@dataclass(frozen=True)
class Event:
    """One thing worth telling the user about a chain."""

    chain: str
    step: int
    steps: int
    state: str
    message: str = ""
    total_seconds: float | None = None
    #: Units this chain has spent so far (as the provider reported them).
    units: float = 0.0


@dataclass
class ChainResult:
    """How one chain's run ended."""

    chain: str
    state: Outcome
    output: Path | None
    duration: float | None
    units: float
    #: The error that stopped the chain, if one did (its exit code is the command's for a
    #: run of one chain).
    error: errors.ChainerError | None = None

    @property
    def message(self) -> str:
        """What stopped the chain, with every note added to the error since ("" when done)."""
        if self.error is None:
            return ""
        return "; ".join([str(self.error), *getattr(self.error, "__notes__", [])])
