"""A faithful offline Kling: a real HTTP server on loopback making real MP4 files.

Independent of chainer's client (it shares only `chainer.rules` and `chainer.media`).
"""

from .server import IN_PROCESS_URL, Simulator, client_env, serve_forever
from .state import SimConfig, SimError, SimState

__all__ = ["IN_PROCESS_URL", "SimConfig", "SimError", "SimState", "Simulator", "client_env", "serve_forever"]
