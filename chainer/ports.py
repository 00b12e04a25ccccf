"""The narrow ports the engine talks through: the provider, the journal and the account's slots.

The engine never sees httpx, SQL or the file system directly: it asks these. The real
implementations are `KlingClient` (chainer.provider.client), `Journal` (chainer.journal)
and `Scheduler` (chainer.scheduler); tests drive the engine against fakes of the same
shape. The archive is the `chainer.archive` module's functions (fetch, publish, manifest).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .chain import ChainView, StepRow, StepState
from .journal import ChainRow as ChainRow  # re-exported: what a port answers with
from .journal import ProviderFact
from .provider.config import ProviderConfig
from .provider.wire import CreateRequest, Task
from .rules import TaskKind


class Provider(Protocol):
    """Kling's task API, as the engine uses it."""

    config: ProviderConfig

    async def create(self, kind: TaskKind, request: CreateRequest) -> Task: ...

    async def get_task(self, kind: TaskKind, task_id: str) -> Task: ...

    async def find_by_external_id(self, kind: TaskKind, external_task_id: str) -> Task | None: ...

    async def list_tasks(self, kind: TaskKind, *, page: int = 1, page_size: int = 30) -> list[Task]: ...


StepSpec = tuple[int, str, str | None, str]


class JournalPort(Protocol):
    """Transitions and reads of chains and steps (SQL lives only behind this)."""

    def lock_chain(self, name: str) -> None: ...

    def chain(self, name: str) -> ChainRow | None: ...

    def ensure_chain(
        self,
        *,
        name: str,
        storyboard: str,
        storyboard_sha: str,
        provider: str,
        model: str,
        mode: str,
        output: str,
        steps: Sequence[StepSpec],
        storyboard_text: str | None = None,
        profile: str = "kling",
    ) -> ChainRow: ...

    def set_max_units(self, name: str, max_units: float | None) -> None: ...

    def set_chain_state(self, name: str, state: str) -> None: ...

    def steps(self, chain: str) -> list[StepRow]: ...

    def step(self, chain: str, idx: int) -> StepRow: ...

    def view(self, name: str) -> ChainView: ...

    def units(self, chain: str) -> float: ...

    def held_task_ids(self) -> set[str]: ...

    def latest_created_task(self) -> tuple[TaskKind, str, str] | None: ...

    def intent_time(self, step: StepRow) -> float | None: ...

    def task_times(self, chain: str, kind: str, *, last: int) -> list[float]: ...

    def transition(
        self, step: StepRow, to: StepState, detail: str | None = None, **fields: Any
    ) -> StepRow: ...

    def new_attempt(self, step: StepRow, detail: str) -> StepRow: ...

    def refresh_url(self, step: StepRow, url: str) -> StepRow: ...

    def mark_pruned(self, step: StepRow) -> StepRow: ...

    def relocate(self, step: StepRow, file: str) -> StepRow: ...

    def replan(
        self,
        chain: str,
        from_idx: int,
        steps: Sequence[StepSpec],
        storyboard_sha: str,
        storyboard_text: str | None,
    ) -> None: ...

    def reroll(
        self,
        chain: str,
        from_idx: int,
        steps: Sequence[StepSpec],
        storyboard_sha: str,
        storyboard_text: str | None = None,
    ) -> None: ...

    def fact(self, provider: str, base_url: str, name: str) -> ProviderFact | None: ...

    def set_fact(self, provider: str, base_url: str, name: str, value: str, evidence: str) -> None: ...


class Slots(Protocol):
    """The account's concurrency limit, shared by every chain of a run (chainer.scheduler)
    or by every worker of a team (chainer.team.slots). Each call names the chain that
    takes or gives back a slot, so a count kept outside the process knows its holders."""

    @property
    def limit(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def create_lock(self) -> AbstractAsyncContextManager[Any]: ...

    def would_wait(self) -> bool: ...

    async def acquire(self, remaining_steps: int, chain: str = "") -> None: ...

    def release(self, chain: str = "", *, created: bool) -> None: ...

    def confirm(self, chain: str = "") -> None: ...

    def force(self, chain: str = "") -> None: ...

    def rejected(self) -> None: ...

    def may_create(self) -> bool: ...
