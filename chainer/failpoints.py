"""Named points where a test can make chainer die for real, to prove it resumes correctly.

Set CHAINER_FAILPOINT=<point>@<step> (for example `after-post@2`) and the process sends
itself SIGKILL when step <step> reaches <point>: no cleanup, no finally blocks, exactly
like a power cut or an OOM kill. Unset (always, outside tests), `hit` is a dictionary
lookup and nothing else.

Points, in the order a step passes them:
    before-intent   about to commit submit_intent
    after-intent    submit_intent committed, create not yet sent
    after-post      the create was answered, its task_id not yet committed
    polling         the task is submitted and being polled
    mid-download    part of the result is in the .part file
    after-download  the file is at its final path, `downloaded` not yet committed
"""

from __future__ import annotations

import os
import signal

POINTS = ("before-intent", "after-intent", "after-post", "polling", "mid-download", "after-download")


def hit(point: str, step: int) -> None:
    """Die here if the environment asks for it."""
    wanted = os.environ.get("CHAINER_FAILPOINT")
    if wanted and wanted == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
