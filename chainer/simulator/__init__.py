"""A faithful offline Kling: a real HTTP server on loopback making real MP4 files.

Independent of chainer's client (it shares only `chainer.rules` and `chainer.media`).
`SimConfig` is imported eagerly; the server, its state and its renderer (uvicorn,
starlette, Pillow) only when first named, since a run against a real provider never
starts a simulator and every start would pay for their imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import SimConfig

if TYPE_CHECKING:
    from .server import IN_PROCESS_URL, Simulator, client_env, serve_forever
    from .state import SimError, SimState

_LAZY = {
    "IN_PROCESS_URL": ".server",
    "Simulator": ".server",
    "client_env": ".server",
    "serve_forever": ".server",
    "SimError": ".state",
    "SimState": ".state",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = ["IN_PROCESS_URL", "SimConfig", "SimError", "SimState", "Simulator", "client_env", "serve_forever"]
