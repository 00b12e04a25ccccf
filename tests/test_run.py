"""End to end: storyboard -> real simulator over loopback -> archived, verified video."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from helpers import simulator_session

from chainer import errors, load_plan, media
from chainer.journal import Journal
from chainer.session import Session, simulator_provider
from chainer.simulator import Simulator

STORYBOARD = """
name: {name}
start:
  text2video:
    prompt: "A lighthouse at dusk"
    model: kling-v1-6
    duration: 5
segments:
  - prompt: "The camera pulls back"
  - prompt: "{second}"
  - prompt: "A boat appears"
output: {output}
"""


def storyboard(tmp_path: Path, *, name: str = "e2e", second: str = "Night falls") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(STORYBOARD).format(name=name, second=second, output=tmp_path / "out.mp4"))
    return path


def run_once(sim: Simulator, sb: Path, tmp_path: Path) -> object:
    async def main() -> object:
        async with simulator_session(sim, tmp_path) as session:
            return await session.run(load_plan(sb))

    return anyio.run(main)


def test_three_segment_chain_end_to_end(sim: Simulator, tmp_path: Path) -> None:
    result = run_once(sim, storyboard(tmp_path), tmp_path)
    out = tmp_path / "out.mp4"
    assert result.output == out and out.is_file()  # type: ignore[attr-defined]

    creates = sim.state.creates
    assert [c.kind for c in creates] == ["text2video", "video-extend", "video-extend", "video-extend"]
    # each extension extends the previous result's video
    results = [sim.state.tasks[c.task_id].video_id for c in creates]
    assert [c.body["video_id"] for c in creates[1:]] == results[:-1]

    manifest = json.loads((tmp_path / "archive" / "e2e" / "manifest.json").read_text())
    steps = manifest["steps"]
    assert [s["state"] for s in steps] == ["downloaded"] * 4
    for step in steps:  # every intermediate result is archived and verified
        data = (tmp_path / "archive" / "e2e" / step["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == step["sha256"] and len(data) == step["size"]
        assert "?" not in step["url"], "signed url query strings must not reach the manifest"
    last = steps[-1]
    info = media.probe(out)
    assert info.is_h264_mp4
    assert abs(info.duration - last["reported_duration"]) <= 0.2
    assert 17.0 <= last["reported_duration"] <= 20.0
    assert out.read_bytes() == (tmp_path / "archive" / "e2e" / last["file"]).read_bytes()

    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        assert journal.integrity_check() == "ok"
        assert [s.state for s in journal.steps("e2e")] == ["downloaded"] * 4


def test_running_again_creates_nothing(sim: Simulator, tmp_path: Path) -> None:
    sb = storyboard(tmp_path)
    run_once(sim, sb, tmp_path)
    before = len(sim.state.creates)
    (tmp_path / "out.mp4").unlink()
    run_once(sim, sb, tmp_path)
    assert len(sim.state.creates) == before == 4
    assert (tmp_path / "out.mp4").is_file()


def test_changed_storyboard_is_not_silently_mixed(sim: Simulator, tmp_path: Path) -> None:
    run_once(sim, storyboard(tmp_path), tmp_path)
    with pytest.raises(errors.StoryboardChanged, match="first changed step: 2"):
        run_once(sim, storyboard(tmp_path, second="Something else"), tmp_path)
    assert len(sim.state.creates) == 4


class LoseFirstExtendResponse(httpx.AsyncBaseTransport):
    """Delivers the first video-extend create to the server, then 'loses' its answer."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/video-extend") and not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response


def test_lost_create_answer_is_reconciled_not_resent(sim: Simulator, tmp_path: Path) -> None:
    transport = LoseFirstExtendResponse(sim.asgi_transport())

    async def main() -> None:
        async with simulator_session(sim, tmp_path, wrap=lambda inner: transport) as session:
            await session.run(load_plan(storyboard(tmp_path)))

    anyio.run(main)
    assert transport.lost == 1
    kinds = [c.kind for c in sim.state.creates]
    assert kinds == ["text2video", "video-extend", "video-extend", "video-extend"], "a step was paid twice"
    # Not even an attempt: the runner looked the task up instead of re-POSTing.
    posts = sum(n for key, n in sim.state.requests.items() if key.startswith("POST video-extend"))
    assert posts == 3, sim.state.requests
    assert (tmp_path / "out.mp4").is_file()


def test_failed_task_stops_the_chain_with_the_reason(sim: Simulator, tmp_path: Path) -> None:
    sb = storyboard(tmp_path, second="forbidden [sim:fail]")
    with pytest.raises(errors.TaskFailed, match=r"segment 2.*content-safety"):
        run_once(sim, sb, tmp_path)
    assert [c.kind for c in sim.state.creates] == ["text2video", "video-extend", "video-extend"]
    assert not (tmp_path / "out.mp4").exists()
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        assert [s.state for s in journal.steps("e2e")] == ["downloaded", "downloaded", "failed", "planned"]


class Crash(Exception):
    """Stands in for the process dying at a chosen point."""


def test_resume_across_a_simulator_restart(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    sb = storyboard(tmp_path)

    def crash_at_second_extension(event: object) -> None:
        if getattr(event, "step", None) == 2 and getattr(event, "state", None) == "submitted":
            raise Crash

    async def run(s: Simulator, on_event: object = None) -> None:
        provider = simulator_provider(s, time_scale=s.config.time_scale)
        async with Session.open(
            state_dir=tmp_path / "state", archive_dir=tmp_path / "archive", provider=provider
        ) as session:
            await session.run(load_plan(sb), on_event=on_event)  # type: ignore[arg-type]

    with pytest.raises(Crash):
        anyio.run(run, sim, crash_at_second_extension)
    data_dir = sim.data_dir
    sim.stop()
    # a new simulator process over the same data: it must remember the tasks
    restarted = Simulator(sim.config, data_dir=data_dir, admin=True).start()
    try:
        anyio.run(run, restarted)
        kinds = [c.kind for c in restarted.state.creates]
        assert kinds == ["text2video", "video-extend", "video-extend", "video-extend"], (
            "a step was paid twice"
        )
        info = media.probe(tmp_path / "out.mp4")
        assert 17.0 <= info.duration <= 20.2
    finally:
        restarted.stop()


def test_image2video_start_sends_the_image_and_chains(sim: Simulator, tmp_path: Path) -> None:
    import base64
    import shutil

    root = Path(__file__).resolve().parent.parent / "storyboards"
    shutil.copy(root / "from-image.yaml", tmp_path / "from-image.yaml")
    shutil.copy(root / "mountain-dawn.png", tmp_path / "mountain-dawn.png")
    sb = tmp_path / "from-image.yaml"
    sb.write_text(sb.read_text().replace("out/mountain-dawn.mp4", str(tmp_path / "out.mp4")))
    run_once(sim, sb, tmp_path)
    first = sim.state.creates[0]
    assert first.kind == "image2video"
    assert base64.b64decode(first.body["image"]) == (root / "mountain-dawn.png").read_bytes()
    assert [c.kind for c in sim.state.creates[1:]] == ["video-extend", "video-extend"]
    assert 13.0 <= media.probe(tmp_path / "out.mp4").duration <= 15.2


class SwallowFirstExtend(httpx.AsyncBaseTransport):
    """The first video-extend create times out on the way there: nothing reaches the server,
    but the client cannot know that (a read timeout looks the same)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.swallowed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/video-extend") and not self.swallowed:
            self.swallowed += 1
            raise httpx.ReadTimeout("no answer", request=request)
        return await self.inner.handle_async_request(request)


def run_with(
    sim: Simulator,
    tmp_path: Path,
    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None,
    **options: object,
) -> None:
    """Run the test storyboard on `sim` in-process, its transport wrapped by `wrap`."""
    update = {"task_lookup": options.pop("task_lookup")} if "task_lookup" in options else None

    async def main() -> None:
        async with simulator_session(sim, tmp_path, wrap=wrap, provider_update=update) as session:
            await session.run(load_plan(storyboard(tmp_path)), **options)  # type: ignore[arg-type]

    anyio.run(main)


def test_provider_without_lookup_is_reconciled_from_its_task_list(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(task_lookup="list")
    transport = LoseFirstExtendResponse(sim.asgi_transport())
    run_with(sim, tmp_path, lambda inner: transport)  # the simulator provider maps this to task_lookup="list"
    assert transport.lost == 1
    assert [c.kind for c in sim.state.creates] == ["text2video"] + ["video-extend"] * 3
    posts = sum(n for key, n in sim.state.requests.items() if key.startswith("POST video-extend"))
    assert posts == 3, "the task list showed the lost create: it was adopted, not re-sent"


def test_provider_that_cannot_be_asked_stops_for_the_user(sim: Simulator, tmp_path: Path) -> None:
    with pytest.raises(errors.SubmitUnknown, match="--resend-unknown"):
        run_with(sim, tmp_path, SwallowFirstExtend, task_lookup="none")
    assert [c.kind for c in sim.state.creates] == ["text2video"]
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        assert journal.steps("e2e")[1].state == "submit_unknown"
        assert journal.summary("e2e").state == "needs attention"
    with pytest.raises(errors.SubmitUnknown):  # a plain re-run does not guess either
        run_with(sim, tmp_path, None, task_lookup="none")
    run_with(sim, tmp_path, None, task_lookup="none", resend_unknown=True)
    assert [c.kind for c in sim.state.creates] == ["text2video"] + ["video-extend"] * 3


def test_target_duration_stops_once_reached(sim: Simulator, tmp_path: Path) -> None:
    sb = tmp_path / "target.yaml"
    sb.write_text(
        "name: target\nstart: {text2video: {prompt: p, duration: 5}}\n"
        f"segments: [{{prompt: a}}]\ntarget_duration: 40\noutput: {tmp_path / 'out.mp4'}\n"
    )
    planned = load_plan(sb).steps
    assert len(planned) == 10  # start, 1 listed, 8 optional: enough at 4 s each
    run_once(sim, sb, tmp_path)
    durations = [sim.state.tasks[c.task_id].frames / sim.config.fps for c in sim.state.creates]
    assert durations[-1] >= 40 and durations[-2] < 40, "one extension too many or too few"
    assert abs(media.probe(tmp_path / "out.mp4").duration - durations[-1]) <= 0.2
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        states = [s.state for s in journal.steps("target")]
        # the simulator's extensions average 4.5 s, so fewer than the worst case were needed
        assert states.count("skipped") == len(planned) - len(sim.state.creates) >= 1
        assert set(states) == {"downloaded", "skipped"}
        assert journal.summary("target").state == "done"


def test_image2video_from_a_url_is_sent_as_the_url(sim: Simulator, tmp_path: Path, image_server: str) -> None:
    from PIL import Image

    Image.new("RGB", (480, 320), (30, 60, 200)).save(tmp_path / "served" / "blue.png")
    sb = tmp_path / "url.yaml"
    sb.write_text(
        f"name: url\nstart:\n  image2video: {{image: '{image_server}/blue.png', prompt: blue}}\n"
        f"segments: [{{prompt: more}}]\noutput: {tmp_path / 'out.mp4'}\n"
    )
    run_once(sim, sb, tmp_path)
    assert sim.state.creates[0].body["image"] == f"{image_server}/blue.png"
    assert media.probe(tmp_path / "out.mp4").duration > 8.9
