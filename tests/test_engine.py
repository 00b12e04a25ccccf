"""Unit tests of the engine's step handlers against a fake provider and an in-memory journal.

No simulator, no socket, no sleeping: `FakeProvider` answers the engine's port
(chainer.ports.Provider) from a script keyed by markers in the prompts, downloads come
from an httpx.MockTransport, and the journal lives in memory. One test walks every step
state and every transition the state machine allows.
"""

from __future__ import annotations

import contextlib
import itertools
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from chainer import errors, load_plan
from chainer.chain import STEP_STATES, TRANSITIONS, StepRow, StepState
from chainer.engine import ChainOptions, ChainRunner, RunContext
from chainer.journal import IN_MEMORY, Journal
from chainer.polling import PollPolicy
from chainer.provider.config import ProviderConfig
from chainer.provider.wire import CreateRequest, ParentVideo, Task, TaskInfo, TaskResult, Video
from chainer.scheduler import Scheduler
from chainer.simulator.video import Canvas, Scene, render

FPS = 8
#: The fake's videos: a start of 5 s, extensions of 15 s (so target_duration is reached early).
CLIPS = {"text2video": 5, "image2video": 5, "video-extend": 15}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for kind, seconds in CLIPS.items():
        path = folder / f"{kind}.mp4"
        render(
            path, scene=Scene(seed=1), canvas=Canvas(64, 48, FPS), frames=seconds * FPS, segment=0, prompt="p"
        )
        made[kind] = path.read_bytes()
    return made


def api_error(cls: type[errors.ApiError], code: int) -> errors.ApiError:
    return cls(code=code, message=f"scripted {code}", http_status=400, request_id="fake-rid")


class FakeProvider:
    """Kling's task API as a script: a prompt's markers say what happens to its task.

    [lose] the create makes the task but its answer is lost; [lose-before] the create is
    lost before it makes anything; [fail] the task ends failed; [refuse] the create is
    refused (policy); [account] the first create is refused by the account (1102);
    [gone] the result is deleted before it is downloaded.
    """

    def __init__(self) -> None:
        self.config = ProviderConfig(
            name="fake",
            dialect="official",
            base_url="http://fake.invalid",
            access_key=SecretStr("a"),
            secret_key=SecretStr("b"),
            time_scale=0.0,
        )
        self.tasks: dict[str, Task] = {}
        self.kinds: dict[str, str] = {}
        self.creates: list[tuple[str, dict[str, Any]]] = []
        self.seen: set[str] = set()
        self.deleted: set[str] = set()
        #: Tasks asked about at least once (a deleted one is gone from the second ask on).
        self.polled: set[str] = set()
        self._ids = itertools.count(1)

    def _first(self, marker: str, prompt: str) -> bool:
        """True the first time `marker` is met in `prompt` (each fault happens once)."""
        key = f"{marker}:{prompt}"
        if marker not in prompt or key in self.seen:
            return False
        self.seen.add(key)
        return True

    async def create(self, kind: str, request: CreateRequest) -> Task:
        body = request.body()
        prompt = str(body.get("prompt", ""))
        if "[refuse]" in prompt:
            raise api_error(errors.PolicyError, 1301)
        if self._first("[account]", prompt):
            raise api_error(errors.AccountError, 1102)
        if self._first("[lose-before]", prompt):
            raise errors.OutcomeUnknown("scripted: the request timed out (nothing was made)")
        task_id = f"t{next(self._ids)}"
        self.creates.append((kind, body))
        status = "failed" if "[fail]" in prompt and self._first("[fail]", prompt) else "succeed"
        seconds = CLIPS[kind]
        parent = ParentVideo(id=body["video_id"], url="") if kind == "video-extend" else None
        self.tasks[task_id] = Task(
            task_id=task_id,
            task_status=status,
            task_status_msg="scripted failure" if status == "failed" else "",
            task_info=TaskInfo(external_task_id=body.get("external_task_id"), parent_video=parent),
            task_result=TaskResult(
                videos=[
                    Video(
                        id=f"v-{task_id}",
                        url=f"http://files.invalid/{kind}/{task_id}.mp4",
                        duration=str(seconds),
                    )
                ]
            )
            if status == "succeed"
            else None,
            created_at=int(time.time() * 1000),
            final_unit_deduction="1",
        )
        self.kinds[task_id] = kind
        if "[gone]" in prompt:
            self.deleted.add(task_id)
        if self._first("[lose]", prompt):
            raise errors.OutcomeUnknown("scripted: the answer was lost on the way back")
        return Task(task_id=task_id, task_status="submitted")

    async def get_task(self, kind: str, task_id: str) -> Task:
        if task_id not in self.tasks or (task_id in self.deleted and task_id in self.polled):
            raise api_error(errors.NotFound, 1203)
        self.polled.add(task_id)
        return self.tasks[task_id]

    async def find_by_external_id(self, kind: str, external_task_id: str) -> Task | None:
        return next(
            (t for t in self.tasks.values() if t.task_info.external_task_id == external_task_id), None
        )

    async def list_tasks(self, kind: str, *, page: int = 1, page_size: int = 30) -> list[Task]:
        return [t for t in self.tasks.values() if self.kinds[t.task_id] == kind][::-1][:page_size]


class RecordingJournal(Journal):
    """A journal (in memory, or on PostgreSQL), noting every (from, to) transition the engine asks for."""

    def __init__(self, location: str = IN_MEMORY) -> None:
        super().__init__(location)
        self.moves: list[tuple[StepState, StepState]] = []
        self.by_step: dict[tuple[str, int], list[tuple[StepState, StepState]]] = {}

    def transition(self, step: StepRow, to: StepState, detail: str | None = None, **fields: Any) -> StepRow:
        self.moves.append((step.state, to))
        self.by_step.setdefault((step.chain, step.idx), []).append((step.state, to))
        return super().transition(step, to, detail, **fields)


class Engine:
    """One fake provider, one in-memory journal, downloads from a MockTransport."""

    def __init__(self, tmp_path: Path, clips: dict[str, bytes], journal: str = IN_MEMORY):
        self.provider = FakeProvider()
        self.journal = RecordingJournal(journal)
        self.tmp_path = tmp_path

        def serve(request: httpx.Request) -> httpx.Response:
            kind, name = request.url.path.strip("/").split("/")
            if name.removesuffix(".mp4") in self.provider.deleted:
                return httpx.Response(403)
            return httpx.Response(200, content=clips[kind])

        self.http = httpx.AsyncClient(transport=httpx.MockTransport(serve))

    def storyboard(self, text: str, name: str = "sb") -> Path:
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n").replace("OUT", str(self.tmp_path / f"{name}.mp4")))
        return path

    def run(self, sb: Path, **options: Any) -> Any:
        async def main() -> Any:
            ctx = RunContext(
                client=self.provider,
                journal=self.journal,
                http=self.http,
                archive_dir=self.tmp_path / "archive",
                poll=PollPolicy(min_interval=0.0, max_interval=0.0),
                scheduler=Scheduler(2),
            )
            return await ChainRunner(load_plan(sb), ctx, ChainOptions(**options)).run()

        return anyio.run(main)

    def states(self, chain: str = "c") -> list[str]:
        return [r.state for r in self.journal.steps(chain)]


@pytest.fixture(params=["memory", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, clips: dict[str, bytes]) -> Iterator[Engine]:
    """The engine against each journal backend: SQLite in memory, and PostgreSQL."""
    where = IN_MEMORY if request.param == "memory" else str(request.getfixturevalue("pg_url"))
    made = Engine(tmp_path, clips, where)
    yield made
    made.journal.close()


CHAIN = """
name: c
start:
  text2video: {{prompt: "start {start}", duration: 5}}
segments:
  - prompt: "one {one}"
  - prompt: "two {two}"
output: OUT
"""


#: A start and one segment with a target: the 15 s extension reaches it, its repeat is skipped.
TARGET = """
name: {name}
start: {{text2video: {{prompt: "start", duration: 5}}}}
segments: [{{prompt: "more"}}]
target_duration: 12
output: OUT
"""
#: A video already on the account, extended once.
EXISTING = """
name: {name}
start: {{video: {{video_id: "v-own", model: kling-v1, mode: std, duration: 5}}}}
segments: [{{prompt: "on"}}]
output: OUT
"""


def chain(engine: Engine, start: str = "", one: str = "", two: str = "") -> Path:
    return engine.storyboard(CHAIN.format(start=start, one=one, two=two))


# ---------------------------------------------------------------------- one handler at a time


def test_a_plain_chain_walks_planned_to_downloaded_once_per_step(engine: Engine) -> None:
    result = engine.run(chain(engine))
    assert result.state == "done" and result.output.is_file()
    assert engine.states() == ["downloaded"] * 3
    assert [kind for kind, _ in engine.provider.creates] == ["text2video", "video-extend", "video-extend"]
    walk = [
        ("planned", "submit_intent"),
        ("submit_intent", "submitted"),
        ("submitted", "succeeded"),
        ("succeeded", "downloaded"),
    ]
    assert engine.journal.by_step == {("c", 0): walk, ("c", 1): walk, ("c", 2): walk}


def test_a_lost_answer_is_looked_up_and_the_task_it_made_is_used(engine: Engine) -> None:
    engine.run(chain(engine, one="[lose]"))
    assert len(engine.provider.creates) == 3, "the lost create made a task: it was found, not re-sent"
    assert ("submit_intent", "submit_unknown") in engine.journal.moves
    assert ("submit_unknown", "submitted") in engine.journal.moves


def test_a_create_lost_before_it_made_anything_is_sent_again_once(engine: Engine) -> None:
    engine.run(chain(engine, one="[lose-before]"))
    assert len(engine.provider.creates) == 3
    assert ("submit_unknown", "submit_intent") in engine.journal.moves


def test_a_failed_task_stops_the_chain_and_retry_failed_makes_a_new_attempt(engine: Engine) -> None:
    with pytest.raises(errors.TaskFailed, match="scripted failure"):
        engine.run(chain(engine, two="[fail]"))
    assert engine.states() == ["downloaded", "downloaded", "failed"]
    assert ("submitted", "failed") in engine.journal.moves
    engine.run(chain(engine, two="[fail]"), retry_failed=True)
    rows = engine.journal.steps("c")
    assert rows[2].state == "downloaded" and rows[2].attempt == 2
    assert len(engine.provider.creates) == 4


def test_a_refused_create_fails_its_step_with_the_reason(engine: Engine) -> None:
    with pytest.raises(errors.TaskFailed, match="scripted 1301"):
        engine.run(chain(engine, one="[refuse]"))
    assert ("submit_intent", "failed") in engine.journal.moves
    assert len(engine.provider.creates) == 1


def test_an_account_error_puts_the_step_back_and_nothing_was_made(engine: Engine) -> None:
    with pytest.raises(errors.AccountError):
        engine.run(chain(engine, one="[account]"))
    assert engine.states() == ["downloaded", "planned", "planned"]
    assert ("submit_intent", "planned") in engine.journal.moves
    engine.run(chain(engine, one="[account]"))
    assert engine.states() == ["downloaded"] * 3 and len(engine.provider.creates) == 3


def test_a_result_deleted_before_it_was_archived_fails_its_step_as_lost(engine: Engine) -> None:
    with pytest.raises(errors.ResultDeleted, match="LOST"):
        engine.run(chain(engine, one="[gone]"))
    assert ("succeeded", "failed") in engine.journal.moves


def test_a_missing_archived_file_is_fetched_again_never_made_again(engine: Engine) -> None:
    sb = chain(engine)
    engine.run(sb)
    Path(engine.journal.steps("c")[1].file or "").unlink()
    engine.run(sb)
    assert ("downloaded", "succeeded") in engine.journal.moves
    assert len(engine.provider.creates) == 3 and engine.states() == ["downloaded"] * 3


def test_an_optional_step_the_video_no_longer_needs_is_skipped(engine: Engine) -> None:
    sb = engine.storyboard(TARGET.format(name="c"))
    engine.run(sb)
    assert engine.states()[-1] == "skipped" and ("planned", "skipped") in engine.journal.moves
    assert len(engine.provider.creates) == 2, "the 15 s extension reached 12 s: the repeat was not made"


def test_an_existing_video_is_adopted_without_a_create(engine: Engine) -> None:
    engine.provider.tasks["t0"] = Task(task_id="t0", task_status="succeed")
    sb = engine.storyboard(EXISTING.format(name="c"))
    engine.run(sb)
    assert ("planned", "succeeded") in engine.journal.moves
    assert [body["video_id"] for _, body in engine.provider.creates] == ["v-own"]


# ---------------------------------------------------------------------- the whole machine


def test_every_state_and_every_allowed_transition_is_walked(tmp_path: Path, clips: dict[str, bytes]) -> None:
    """Each scenario above on a fresh engine; together they take every transition the
    state machine allows, and nothing it does not allow."""
    moves: set[tuple[str, str]] = set()
    scenarios = [
        {},
        {"one": "[lose]"},
        {"one": "[lose-before]"},
        {"two": "[fail]"},
        {"one": "[refuse]"},
        {"one": "[account]"},
        {"one": "[gone]"},
    ]
    for n, markers in enumerate(scenarios):
        engine = Engine(tmp_path / f"s{n}", clips)
        (tmp_path / f"s{n}").mkdir()
        sb = chain(engine, **markers)
        for _ in range(2):  # a second run resumes whatever the first left
            with contextlib.suppress(errors.ChainerError):
                engine.run(sb, retry_failed=True)
        moves |= set(engine.journal.moves)
        engine.journal.close()
    extra = Engine(tmp_path / "extra", clips)
    (tmp_path / "extra").mkdir()
    extra.run(chain(extra))
    Path(extra.journal.steps("c")[2].file or "").unlink()
    extra.run(chain(extra))
    extra.run(extra.storyboard(TARGET.format(name="t"), name="t"))
    extra.provider.tasks["t0"] = Task(task_id="t0", task_status="succeed")
    extra.run(extra.storyboard(EXISTING.format(name="e"), name="e"))
    moves |= set(extra.journal.moves)
    extra.journal.close()
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert moves <= allowed, f"transitions the state machine forbids: {moves - allowed}"
    assert moves == allowed, f"allowed transitions no scenario takes: {allowed - moves}"
    assert {s for pair in moves for s in pair} == set(STEP_STATES)
