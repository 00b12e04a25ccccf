"""The engine: runs chains against narrow ports (chainer.ports), one step state at a time.

runner      ChainRunner: the walk over a plan's steps, one handler per step state
submit      submit_intent / submit_unknown: lookups, slots, the shielded create
requests    building a step's create request once its slot is its own
poll        submitted: polling to the end, committing the video or the failure
fetch       succeeded: downloading and verifying results into the archive
assembly    the output from the archived parts, the partial video, the manifest
revise      storyboard edits and re-rolls against the journal
context     RunContext (shared by a run), ChainRun (one chain's state), ChainOptions
"""

from .context import ChainOptions, ChainRun, CreateGate, RunContext
from .runner import ChainRunner

__all__ = ["ChainOptions", "ChainRun", "ChainRunner", "CreateGate", "RunContext"]
