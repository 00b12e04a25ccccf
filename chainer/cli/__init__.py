"""The `chainer` command: a thin layer over the library (chainer.session and friends).

One module per group of commands; each registers its commands on the one `app` of
`common`, so importing this package builds the whole command line.
"""

from __future__ import annotations

import sys

import stamina.instrumentation

from .. import errors
from . import chains, providers, run, sim, status, storyboards, team
from .common import app, err

__all__ = ["app", "chains", "main", "providers", "run", "sim", "status", "storyboards", "team"]


def main() -> None:
    """Console-script entry point."""
    # chainer reports waits itself; stamina's default hook would print raw log records.
    stamina.instrumentation.set_on_retry_hooks([])
    try:
        app()
    except errors.ChainerError as exc:  # pragma: no cover - commands catch their own
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
