"""Whether a provider really finds tasks by external_task_id: seen, not assumed.

A profile's `task_lookup: external_id` is a claim. A proxy may accept the field, never
store it, and answer every lookup "not found"; trusting that answer after a lost create
sends the create again and pays twice. So the claim is checked on the first task of
every run: the task just created is looked up by its external_task_id, and only a lookup
that finds that very task counts. The verdict is kept in the journal (per provider and
base URL), for a later run whose very first create is the one whose answer is lost.
Until a verdict exists, a "not found" proves nothing and the runner falls back to the
task list, or asks the user.
"""

from __future__ import annotations

import functools

from . import errors
from .ports import JournalPort, Provider
from .retry import OnRetry, read_backoff, retrying
from .rules import TaskKind

#: The journal's name for the fact.
FACT = "finds_external_task_id"
#: How long the check's lookup keeps retrying a transient error (it is only a check).
CHECK_DEADLINE_S = 60.0


class LookupCheck:
    """One provider's lookup by external_task_id, checked once per run."""

    def __init__(self, client: Provider, journal: JournalPort):
        self.client = client
        self.journal = journal
        self._checked = False

    @property
    def claimed(self) -> bool:
        """Whether the provider's settings say it finds tasks by external_task_id."""
        return self.client.config.task_lookup == "external_id"

    def trusted(self) -> bool | None:
        """True: seen to work; False: seen not to; None: never seen either way."""
        cfg = self.client.config
        fact = self.journal.fact(cfg.name, cfg.base_url, FACT)
        return None if fact is None else fact.value == "yes"

    async def verdict(self, *, on_retry: OnRetry | None = None) -> bool | None:
        """The journal's verdict; without one, checked now on a task this journal already
        knows (an earlier run may have died before its check), if there is one."""
        known = self.trusted()
        if known is not None or self._checked:
            return known
        task = self.journal.latest_created_task()
        if task is None:
            return None
        kind, task_id, ext = task
        return await self.check(kind, task_id, ext, on_retry=on_retry)

    def evidence(self) -> str:
        cfg = self.client.config
        fact = self.journal.fact(cfg.name, cfg.base_url, FACT)
        return fact.evidence or "" if fact else "never checked"

    async def check(
        self, kind: TaskKind, task_id: str, external_task_id: str, *, on_retry: OnRetry | None = None
    ) -> bool | None:
        """Look `task_id` up by the `external_task_id` it was created with, once per run.

        Returns the verdict when this call made one, None when it did not look (already
        checked this run, the provider does not claim the lookup, or the lookup failed).
        """
        if self._checked or not self.claimed:
            return None
        self._checked = True
        try:
            found = await retrying(
                functools.partial(self.client.find_by_external_id, kind, external_task_id),
                on=read_backoff,
                deadline_s=CHECK_DEADLINE_S,
                on_retry=on_retry,
            )
        except errors.LookupUndecided:
            found = None  # it answers with its list: it does not find by external_task_id
        except errors.ProviderError:
            return None  # no verdict: a later run checks again
        works = found is not None and found.task_id == task_id
        seen = (
            "found it"
            if works
            else "found nothing"
            if found is None
            else f"found another task, {found.task_id}"
        )
        evidence = f"{kind} task {task_id} looked up by external_task_id {external_task_id}: {seen}"
        cfg = self.client.config
        self.journal.set_fact(cfg.name, cfg.base_url, FACT, "yes" if works else "no", evidence)
        return works
