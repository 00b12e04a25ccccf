"""What chainer does to its process before importing anything else: imported first by
the package, on purpose (no other module of chainer may come before it).

httpx imports its command-line client together with the library (click, rich's syntax
highlighting, pygments: about 70 ms of every chainer start) unless that import fails,
which httpx handles by installing a stub; chainer never runs the client, so it marks it
absent. Where httpx was imported before chainer, nothing changes.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
