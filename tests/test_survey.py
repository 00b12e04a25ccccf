"""A resumed run's first look at its tasks: one shared list page (chainer.engine.survey)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from chainer import errors
from chainer.engine import survey as survey_module
from chainer.engine.survey import PAGE_SIZE, Survey
from chainer.provider.wire import Task


class Lister:
    """A provider that only lists: `tasks` as its page, or `refusal` raised; calls counted."""

    def __init__(self, tasks: list[Task], refusal: Exception | None = None) -> None:
        self.tasks, self.refusal = tasks, refusal
        self.calls: list[tuple[str, int, int]] = []

    async def list_tasks(self, kind: str, *, page: int = 1, page_size: int = 30) -> list[Task]:
        self.calls.append((kind, page, page_size))
        await anyio.sleep(0)  # let every other first look arrive while this one is out
        if self.refusal is not None:
            raise self.refusal
        return self.tasks


def task(task_id: str, status: Any) -> Task:
    return Task(task_id=task_id, task_status=status)


async def looks(survey: Survey, *task_ids: str) -> dict[str, Task | None]:
    found: dict[str, Task | None] = {}

    async def one(task_id: str) -> None:
        found[task_id] = await survey.first_look("text2video", task_id)

    async with anyio.create_task_group() as tg:
        for task_id in task_ids:
            tg.start_soon(one, task_id)
    return found


def test_one_page_answers_every_running_task_and_only_those() -> None:
    provider = Lister([task("run", "processing"), task("queued", "submitted"), task("done", "succeed")])
    survey = Survey(provider)  # type: ignore[arg-type]
    found = anyio.run(looks, survey, "run", "queued", "done", "older")
    assert provider.calls == [("text2video", 1, PAGE_SIZE)], "one list request for all of them"
    assert found["run"] is not None and found["run"].task_status == "processing"
    assert found["queued"] is not None and found["queued"].task_status == "submitted"
    # an ended task is confirmed by its own GET (its result is committed from that), and a
    # task not on the page is asked about by id
    assert found["done"] is None and found["older"] is None
    assert survey.answered == 2


@pytest.mark.parametrize(
    "refusal",
    [
        errors.NotFound(code=1203, message="no list here", http_status=404, request_id="r"),
        errors.ProtocolError("list text2video returned dict, not a list"),
        errors.OutcomeUnknown("timed out"),
    ],
)
def test_a_provider_without_the_list_is_asked_by_id(refusal: Exception) -> None:
    provider = Lister([task("run", "processing")], refusal=refusal)
    survey = Survey(provider)  # type: ignore[arg-type]
    found = anyio.run(looks, survey, "run", "other")
    assert found == {"run": None, "other": None}
    assert len(provider.calls) == 1, "the list is not asked for again by each chain"


def test_a_stale_page_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = Lister([task("run", "processing")])
    survey = Survey(provider)  # type: ignore[arg-type]
    assert anyio.run(looks, survey, "run")["run"] is not None
    monkeypatch.setattr(survey_module, "FRESH_S", -1.0)  # as if the page were old by now
    assert anyio.run(looks, survey, "run")["run"] is None
    assert len(provider.calls) == 1
