"""A resumed run's first look at its tasks: one list page shared by every chain.

A run that resumes many chains with tasks in flight would otherwise send one status GET
per chain the moment it starts (200 chains: 200 requests before any of them has
anything to do). The provider's list endpoint answers for up to 500 tasks of a kind in
one request, newest first, so the first chain that resumes a task of a kind fetches that
page once and every other resumed chain of the kind reads its task from it.

Only a task the page shows still `submitted` or `processing` is taken from it: the chain
then waits as after any poll. A task that has ended, one not on the page (older than
its 500 newest), a page older than `FRESH_S`, and a provider without the list (a proxy
that answers 404, or anything else unexpected) all go to the usual GET by id, so the
survey can only save requests, never decide an outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from .. import errors
from ..ports import Provider
from ..provider.wire import Task
from ..rules import TaskKind

#: The list endpoint's largest page (kling-api.md: pageSize in [1, 500]).
PAGE_SIZE = 500
#: A page older than this is not used: its tasks are asked about one by one.
FRESH_S = 10.0


@dataclass
class _Page:
    ready: anyio.Event = field(default_factory=anyio.Event)
    tasks: dict[str, Task] = field(default_factory=dict)
    at: float = 0.0


@dataclass
class Survey:
    """One list page per task kind, fetched by the first chain that resumes a task."""

    client: Provider
    _pages: dict[str, _Page] = field(default_factory=dict)
    #: Requests saved: resumed tasks whose first look came from a page.
    answered: int = 0

    async def first_look(self, kind: TaskKind, task_id: str) -> Task | None:
        """`task_id` as the page shows it while it still runs, else None (ask by id)."""
        page = self._pages.get(kind)
        if page is None:
            page = self._pages[kind] = _Page()
            await self._fetch(kind, page)
        else:
            await page.ready.wait()
        task = page.tasks.get(task_id)
        if task is None or task.task_status not in ("submitted", "processing"):
            return None
        if time.monotonic() - page.at > FRESH_S:
            return None
        self.answered += 1
        return task

    async def _fetch(self, kind: TaskKind, page: _Page) -> None:
        try:
            tasks = await self.client.list_tasks(kind, page=1, page_size=PAGE_SIZE)
        except errors.ProviderError:
            tasks = []  # no list here, or not now: every task is asked about by id
        finally:
            page.at = time.monotonic()
            page.ready.set()
        page.tasks = {task.task_id: task for task in tasks}
