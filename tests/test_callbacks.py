"""Callbacks: the receiver answers and ignores what it must, a chain with callbacks on is
seen through with at most 2 status queries a task, dropped callbacks cost only time, and
nothing forged reaches the journal."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from helpers import CHAINER, provider_env, write_storyboard

from chainer import callbacks, load_plan, media, receiver
from chainer.callbacks import CallbackHub
from chainer.errors import ConfigError
from chainer.journal import Journal
from chainer.receiver import Receiver
from chainer.simulator import Simulator

SB = """
name: {name}
start:
  text2video: {{prompt: "start"}}
segments:
  - prompt: "one"
  - prompt: "two"
  - prompt: "three"
output: {name}.mp4
"""
TASK = {
    "task_id": "t-1",
    "task_status": "succeed",
    "task_result": {"videos": [{"id": "v", "url": "http://x/v.mp4"}]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(hub: CallbackHub, path: str, body: bytes) -> int:
    async def main() -> int:
        transport = httpx.ASGITransport(app=Receiver(hub))
        async with httpx.AsyncClient(transport=transport, base_url="http://hooks") as client:
            return (await client.post(path, content=body)).status_code

    return anyio.run(main)


def test_the_receiver_answers_and_ignores_what_is_not_a_callback_for_us() -> None:
    hub = CallbackHub("https://public.example/hooks")
    assert hub.url.startswith("https://public.example/hooks/") and len(hub.token) >= 40
    with hub.expecting("t-1"):
        assert post(hub, "/hooks/not-the-token", json.dumps(TASK).encode()) == 404
        assert post(hub, f"/hooks/{hub.token}", b"x" * (callbacks.MAX_BODY + 1)) == 413
        assert post(hub, f"/hooks/{hub.token}", b"{not json") == 400
        assert post(hub, f"/hooks/{hub.token}", json.dumps({"task_id": "t-1"}).encode()) == 400
        assert post(hub, f"/hooks/{hub.token}", json.dumps({**TASK, "task_id": "made-up"}).encode()) == 200
        assert not hub.live, "nothing so far was a callback about a task we wait for"
        # the envelope form and the flat form are both taken; a proxy may strip the prefix
        assert (
            post(
                hub,
                f"/{hub.token}",
                json.dumps({"code": 0, "data": {**TASK, "task_status": "processing"}}).encode(),
            )
            == 200
        )
        assert post(hub, f"/hooks/{hub.token}", json.dumps(TASK).encode()) == 200
        assert post(hub, f"/hooks/{hub.token}", json.dumps(TASK).encode()) == 200  # repeated
    assert hub.counts == {
        "wrong token": 1,
        "too large": 1,
        "not a task": 2,
        "not waited for": 1,
        "noted": 1,
        "woke": 2,
    }
    assert hub.live


def test_a_busy_listen_address_is_refused_before_anything_is_sent() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match="cannot listen for callbacks on"):
            receiver.bind(busy)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        receiver.bind("8787")


def queries(sim: Simulator) -> list[int]:
    """Status queries of each task by its id, as the simulator counted them."""
    return [sim.state.tasks[c.task_id].queries for c in sim.state.creates]


Meddler = Callable[[CallbackHub, str], Awaitable[None]]


def run_with_callbacks(
    sim: Simulator,
    tmp_path: Path,
    open_session: Callable[..., Any],
    name: str,
    *,
    meddle: Meddler | None = None,
) -> tuple[str, CallbackHub]:
    """Run a 4-step chain with callbacks on (a receiver on a loopback port); `meddle(hub,
    listen)` runs beside it until the chain ends."""
    sb = write_storyboard(tmp_path, SB.format(name=name), f"{name}.yaml")
    listen = f"127.0.0.1:{free_port()}"

    async def main() -> tuple[str, CallbackHub]:
        async with (
            receiver.receiving(f"http://{listen}/hooks", listen) as hub,
            open_session(sim, callbacks=hub) as session,
            anyio.create_task_group() as group,
        ):
            if meddle is not None:
                group.start_soon(meddle, hub, listen)
            result = await session.run(load_plan(sb, output=tmp_path / f"{name}.mp4"))
            group.cancel_scope.cancel()
            return result.state, hub

    return anyio.run(main)


def test_a_chain_with_callbacks_needs_at_most_two_queries_a_task(
    sim_factory, tmp_path: Path, open_session
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(time_scale=0.005)  # tasks take a second or two: polls would be many
    state, hub = run_with_callbacks(sim, tmp_path, open_session, "called")
    assert state == "done"
    tasks = len(sim.state.creates)
    assert tasks == 4
    asked = queries(sim)
    assert all(1 <= n <= 2 for n in asked), asked
    assert hub.counts.get("woke", 0) >= tasks - 1
    # the token never reaches what chainer writes
    written = [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.sqlite*"), *tmp_path.rglob("*.html")]
    assert written and all(hub.token.encode() not in p.read_bytes() for p in written)


def test_half_the_callbacks_dropped_the_chain_still_ends_the_same(
    sim_factory, tmp_path: Path, open_session
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(
        time_scale=0.005, callback_drop_rate=0.5, callback_duplicate_rate=0.3, callback_delay_s=0.2, seed=3
    )
    state, _ = run_with_callbacks(sim, tmp_path, open_session, "lossy")
    assert state == "done"
    dropped = sum(
        n for key, n in sim.state.requests.items() if key.startswith("CALLBACK") and key.endswith("dropped")
    )
    assert dropped > 0, "the fault must have happened"
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        rows = journal.steps("lossy")
    assert [r.state for r in rows] == ["downloaded"] * 4
    # the same output as without faults: each step's task and video are the simulator's own
    assert [r.task_id for r in rows] == [c.task_id for c in sim.state.creates]
    assert [r.video_id for r in rows] == [sim.state.tasks[c.task_id].video_id for c in sim.state.creates]
    assert media.probe(tmp_path / "lossy.mp4").duration == pytest.approx(rows[-1].duration, abs=0.2)


def test_forged_callbacks_change_nothing_in_the_journal(sim_factory, tmp_path: Path, open_session) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(time_scale=0.005)
    forged: list[int] = []

    async def forge(hub: CallbackHub, listen: str) -> None:
        """For every task the simulator accepts, at once (while it still runs): a wrong
        token, a made-up task id, and the real task "succeeded" with a made-up video."""
        seen = 0
        async with httpx.AsyncClient(base_url=f"http://{listen}") as client:
            while True:
                for create in sim.state.creates[seen:]:
                    lie = {
                        "task_id": create.task_id,
                        "task_status": "succeed",
                        "task_result": {
                            "videos": [{"id": "forged-video", "url": "http://evil/x.mp4", "duration": "5"}]
                        },
                    }
                    for path, body in (
                        ("/hooks/" + "x" * len(hub.token), lie),
                        (f"/hooks/{hub.token}", {**lie, "task_id": "made-up-task"}),
                        (f"/hooks/{hub.token}", lie),
                    ):
                        forged.append((await client.post(path, json=body)).status_code)
                seen = len(sim.state.creates)
                await anyio.sleep(0.01)

    state, hub = run_with_callbacks(sim, tmp_path, open_session, "forged", meddle=forge)
    assert state == "done"
    assert forged.count(404) >= 4 and forged.count(200) >= 8, forged
    assert hub.counts["wrong token"] >= 4 and hub.counts["not waited for"] >= 4
    with Journal(tmp_path / "state" / "journal-simulator.sqlite") as journal:
        rows = journal.steps("forged")
    assert [r.video_id for r in rows] == [sim.state.tasks[c.task_id].video_id for c in sim.state.creates]
    assert all("evil" not in (r.video_url or "") and r.state == "downloaded" for r in rows)
    assert len(sim.state.creates) == 4, "a forged 'succeed' never makes chainer send anything"


def test_killed_with_callbacks_on_resumes_with_no_second_create(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "crash.yaml").write_text(SB.format(name="crash"))

    def run(*env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        listen = f"127.0.0.1:{free_port()}"
        flags = ["--callback-url", f"http://{listen}/hooks", "--listen", listen]
        return subprocess.run(
            [CHAINER, "run", "crash.yaml", *flags],
            cwd=tmp_path,
            env=provider_env(sim, **dict(env)),
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = run(("CHAINER_FAILPOINT", "polling@2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(sim.state.creates) == 3
    resumed = run()  # another port, another token: the steps' fingerprints do not hold either
    assert resumed.returncode == 0, resumed.stderr
    assert "Callbacks: the provider posts task updates to http://127.0.0.1:" in resumed.stdout
    assert [c.kind for c in sim.state.creates] == [
        "text2video",
        "video-extend",
        "video-extend",
        "video-extend",
    ]
    urls = {c.body.get("callback_url") for c in sim.state.creates}
    assert len(urls) == 2 and None not in urls, "each run sent its own callback_url"
    token_free = [
        resumed.stdout,
        resumed.stderr,
        *(p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*.json")),
    ]
    for url in urls:
        token = str(url).rsplit("/", 1)[-1]
        assert all(token not in text for text in token_free), "the token is never printed or written"


def test_a_callback_that_beats_the_creates_answer_is_kept_for_its_poller() -> None:
    """The provider announces a task at once; its poller starts waiting only when the
    create's answer is back. A claim about a task not waited for yet changes nothing until
    then, and the cache of such claims is bounded."""
    hub = CallbackHub("http://127.0.0.1:9/hooks")

    async def main() -> str:
        assert hub.heard(callbacks.Claim(task_id="fast", task_status="succeed")) == "not waited for"
        assert not hub.live
        with hub.expecting("fast"):
            assert hub.live
            return await hub.wait("fast", timeout=60)  # returns at once: its end is known

    assert anyio.run(main) == "ended"
    for n in range(callbacks.EARLY_KEPT + 10):
        hub.heard(callbacks.Claim(task_id=f"other-{n}", task_status="processing"))
    assert len(hub._early) == callbacks.EARLY_KEPT and "other-0" not in hub._early
