"""The simulator refuses what Kling refuses. Written with plain httpx + PyJWT from the spec,
not chainer's client, so a misreading in the client cannot hide a misreading here."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import httpx
import jwt
import pytest
from PIL import Image

from chainer import media
from chainer.simulator import Simulator
from chainer.simulator.renders import RENDER_LEAD_MS, RenderClock
from chainer.simulator.state import SimVideo
from chainer.simulator.video import Scene

AK, SK = "sim-access-key", "sim-secret-key-0123456789abcdef0123"


def token(*, sk: str = SK, iss: str = AK, nbf: float | None = None, exp: float | None = None) -> str:
    now = time.time()
    claims = {
        "iss": iss,
        "nbf": int(now - 5 if nbf is None else nbf),
        "exp": int(now + 1800 if exp is None else exp),
    }
    return jwt.encode(claims, sk, algorithm="HS256", headers={"typ": "JWT"})


def call(
    sim: Simulator, method: str, path: str, *, auth: str | None = "jwt", **kw: object
) -> tuple[int, dict]:
    headers = {}
    if auth == "jwt":
        headers["Authorization"] = f"Bearer {token()}"
    elif auth is not None:
        headers["Authorization"] = auth
    r = httpx.request(method, sim.base_url + path, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]
    return r.status_code, r.json()


def wait_done(sim: Simulator, kind: str, task_id: str) -> dict:
    """The task once it has ended (the simulator's clock is moved there: no sleeping)."""
    sim.state.finish_now(task_id)
    status, body = call(sim, "GET", f"/v1/videos/{kind}/{task_id}")
    assert status == 200, body
    assert body["data"]["task_status"] in ("succeed", "failed"), body
    return body["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "auth,code",
    [
        (None, 1001),
        ("Token abc", 1002),
        ("Bearer", 1002),
        (f"Bearer {token(sk='another-secret-key-0123456789abcdef')}", 1002),
        (f"Bearer {token(iss='someone-else')}", 1000),
        (f"Bearer {token(nbf=time.time() + 600)}", 1003),
        (f"Bearer {token(exp=time.time() - 10)}", 1004),
    ],
)
def test_official_auth_codes(sim: Simulator, auth: str | None, code: int) -> None:
    status, body = call(sim, "POST", "/v1/videos/text2video", auth=auth, json={"prompt": "x"})
    assert (status, body["code"]) == (401, code)
    assert body["request_id"]
    assert not sim.state.creates, "a refused request created a task"


def test_text2video_then_extension_is_the_whole_video(sim: Simulator, tmp_path: Path) -> None:
    status, body = call(
        sim, "POST", "/v1/videos/text2video", json={"prompt": "a cat", "model_name": "kling-v1-6"}
    )
    assert status == 200 and body["code"] == 0
    first = wait_done(sim, "text2video", body["data"]["task_id"])
    video = first["task_result"]["videos"][0]
    assert video["duration"] == "5"
    status, body = call(
        sim, "POST", "/v1/videos/video-extend", json={"video_id": video["id"], "prompt": "more"}
    )
    assert status == 200, body
    ext = wait_done(sim, "video-extend", body["data"]["task_id"])
    assert ext["task_info"]["parent_video"]["id"] == video["id"]
    assert ext["task_info"]["parent_video"]["duration"] == "5"
    total = float(ext["task_result"]["videos"][0]["duration"])
    assert 9.0 <= total <= 10.0
    data = httpx.get(ext["task_result"]["videos"][0]["url"], timeout=10).content
    (tmp_path / "v.mp4").write_bytes(data)
    info = media.probe(tmp_path / "v.mp4")
    assert info.is_h264_mp4 and abs(info.duration - total) < 0.05
    assert isinstance(ext["created_at"], int) and ext["created_at"] > 1_600_000_000_000  # milliseconds
    assert ext["task_id"].isdigit()


def test_extension_of_a_v2_video_is_refused(sim: Simulator) -> None:
    _, body = call(
        sim, "POST", "/v1/videos/text2video", json={"prompt": "x", "model_name": "kling-v2-master"}
    )
    done = wait_done(sim, "text2video", body["data"]["task_id"])
    status, body = call(
        sim, "POST", "/v1/videos/video-extend", json={"video_id": done["task_result"]["videos"][0]["id"]}
    )
    assert (status, body["code"]) == (400, 1201)
    assert "cannot be extended" in body["message"]


def test_unknown_video_id_is_not_found(sim: Simulator) -> None:
    status, body = call(sim, "POST", "/v1/videos/video-extend", json={"video_id": "no-such-video"})
    assert (status, body["code"]) == (404, 1203)


def _plant(sim: Simulator, seconds: float, model: str = "kling-v1") -> str:
    """Put a video of the given length on the account without rendering it."""
    fps = sim.config.fps
    video = SimVideo(
        "planted",
        "1",
        sim.data_dir / "planted.mp4",
        int(seconds * fps),
        fps,
        model,
        "std",
        sim.state.now_ms(),
        Scene(seed=1),
    )
    sim.state.videos[video.video_id] = video
    return video.video_id


def test_extension_past_three_minutes_is_refused(sim: Simulator) -> None:
    video_id = _plant(sim, 176.5)  # even the shortest extension (4 s) would pass 180 s
    status, body = call(sim, "POST", "/v1/videos/video-extend", json={"video_id": video_id})
    assert (status, body["code"]) == (400, 1201)
    assert "3-minute" in body["message"]


def test_extension_that_fits_under_the_cap_is_accepted(sim: Simulator) -> None:
    video_id = _plant(sim, 176.0)
    status, body = call(sim, "POST", "/v1/videos/video-extend", json={"video_id": video_id})
    assert (status, body["code"]) == (200, 0)
    task = sim.state.tasks[body["data"]["task_id"]]
    assert task.frames / sim.config.fps <= 180.0


def test_expired_video_ids_are_refused(sim: Simulator) -> None:
    video_id = _plant(sim, 5.0)
    sim.state.advance(31 * 86400)
    status, body = call(sim, "POST", "/v1/videos/video-extend", json={"video_id": video_id})
    assert (status, body["code"]) == (404, 1203)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "prompt is required"),
        ({"prompt": "x" * 2501}, "longer than 2500"),
        ({"prompt": "x", "duration": 5}, "duration"),
        ({"prompt": "x", "mode": "turbo"}, "mode"),
        ({"prompt": "x", "cfg_scale": 1.5}, "cfg_scale"),
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"prompt": "x", "model_name": "kling-v9"}, "model_name"),
    ],
)
def test_text2video_validation(sim: Simulator, body: dict, needle: str) -> None:
    status, answer = call(sim, "POST", "/v1/videos/text2video", json=body)
    assert (status, answer["code"]) == (400, 1201)
    assert needle in answer["message"]


def _png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "image,needle",
    [
        (_png(200, 400), "at least 300 px"),
        (_png(1000, 300), "aspect ratio"),
        ("data:image/png;base64," + _png(400, 400), "data: prefix"),
        ("not base64!!", "not valid base64"),
    ],
)
def test_image2video_image_rules(sim: Simulator, image: str, needle: str) -> None:
    status, answer = call(sim, "POST", "/v1/videos/image2video", json={"image": image})
    assert (status, answer["code"]) == (400, 1201)
    assert needle in answer["message"]


def test_image2video_starts_from_the_image(sim: Simulator, tmp_path: Path) -> None:
    status, body = call(
        sim, "POST", "/v1/videos/image2video", json={"image": _png(400, 400), "prompt": "red"}
    )
    assert status == 200, body
    done = wait_done(sim, "image2video", body["data"]["task_id"])
    (tmp_path / "i.mp4").write_bytes(httpx.get(done["task_result"]["videos"][0]["url"]).content)
    frame = media.frame_at(tmp_path / "i.mp4", 0.5)
    r, g, b = frame.getpixel((frame.width // 2, frame.height // 3))  # type: ignore[misc]
    assert r > 150 and g < 90 and b < 90, "the first frames should show the given (red) image"


def test_concurrency_limit_answers_1303(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(concurrency=1, time_scale=1.0)
    assert call(sim, "POST", "/v1/videos/text2video", json={"prompt": "a"})[0] == 200
    status, body = call(sim, "POST", "/v1/videos/text2video", json={"prompt": "b"})
    assert (status, body["code"]) == (429, 1303)
    assert len(sim.state.creates) == 1


def test_a_long_task_is_rendered_only_near_its_end(sim_factory) -> None:  # type: ignore[no-untyped-def]
    """At Kling's pace the video is made shortly before the task ends, not at its create
    (the client's machine is not Kling's render farm); moving the clock there starts it."""
    sim = sim_factory(time_scale=1.0)
    early = call(sim, "POST", "/v1/videos/text2video", json={"prompt": "a"})[1]["data"]["task_id"]
    later = call(sim, "POST", "/v1/videos/text2video", json={"prompt": "b"})[1]["data"]["task_id"]
    tasks = sim.state.tasks
    assert tasks[early].render is None and tasks[later].render is None
    assert call(sim, "GET", f"/v1/videos/text2video/{early}")[1]["data"]["task_status"] != "succeed"
    # the clock to just inside `early`'s lead: the render clock starts it (and only it)
    first, second = sorted((tasks[early], tasks[later]), key=lambda t: t.done_ms)
    sim.state.advance((first.done_ms - sim.state.now_ms() - RENDER_LEAD_MS / 2) / 1000)
    assert first.render is not None  # advance() started what became due
    first.render.result(timeout=120)
    if second.done_ms - RENDER_LEAD_MS > sim.state.now_ms():
        assert second.render is None
    assert wait_done(sim, "text2video", second.task_id)["task_status"] == "succeed"
    assert wait_done(sim, "text2video", first.task_id)["task_status"] == "succeed"


def test_render_clock_holds_a_due_render_until_released_and_starts_each_once() -> None:
    now = [0]
    clock = RenderClock(lambda: now[0])
    started: list[str] = []
    # due now but held (a create's render waits for its answer to be written) ...
    clock.schedule("due", RENDER_LEAD_MS, lambda: started.append("due"), hold_ms=50)
    # ... and one due in 10 s of simulated time
    clock.schedule("later", RENDER_LEAD_MS + 10_000, lambda: started.append("later"), hold_ms=50)
    try:
        assert started == []
        clock.release("later")
        assert started == [], "a release does not start a render before it is due"
        clock.release("due")
        clock.release("due")
        clock.launch_now("due")
        assert started == ["due"], "released once, started once"
        now[0] = 10_000
        clock.kick()
        assert started == ["due", "later"]
    finally:
        clock.close()


def test_external_task_id_is_unique_and_queryable(sim: Simulator) -> None:
    status, body = call(
        sim, "POST", "/v1/videos/text2video", json={"prompt": "a", "external_task_id": "mine-1"}
    )
    assert status == 200
    task_id = body["data"]["task_id"]
    status, body = call(
        sim, "POST", "/v1/videos/text2video", json={"prompt": "b", "external_task_id": "mine-1"}
    )
    assert (status, body["code"]) == (400, 1201)
    for path in ("/v1/videos/text2video/mine-1", "/v1/videos/text2video?external_task_id=mine-1"):
        status, body = call(sim, "GET", path)
        assert status == 200 and body["data"]["task_id"] == task_id
    status, body = call(sim, "GET", "/v1/videos/video-extend/mine-1")  # wrong kind
    assert (status, body["code"]) == (404, 1203)


def test_list_paging_ranges(sim: Simulator) -> None:
    for n in range(3):
        call(sim, "POST", "/v1/videos/text2video", json={"prompt": f"p{n}"})
    status, body = call(sim, "GET", "/v1/videos/text2video?pageNum=1&pageSize=2")
    assert status == 200 and len(body["data"]) == 2
    status, body = call(sim, "GET", "/v1/videos/text2video?pageNum=2&pageSize=2")
    assert len(body["data"]) == 1
    for bad in ("pageSize=501", "pageSize=0", "pageNum=1001", "pageNum=x"):
        status, body = call(sim, "GET", f"/v1/videos/text2video?{bad}")
        assert (status, body["code"]) == (400, 1201), bad


def test_download_urls_are_signed_and_expire(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(url_ttl_s=60)
    _, body = call(sim, "POST", "/v1/videos/text2video", json={"prompt": "a"})
    url = wait_done(sim, "text2video", body["data"]["task_id"])["task_result"]["videos"][0]["url"]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("sig=", "sig=0")).status_code == 403
    ranged = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and len(ranged.content) == 10
    sim.state.advance(120)
    assert httpx.get(url).status_code == 403


def test_proxy_dialect_needs_key_prefix_and_parent_task_id(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(dialect="proxy", path_prefix="/kling", send_parent_task_id=True, prompt_max_chars=500)
    key = {"auth": "Bearer sim-api-key"}
    assert (
        call(sim, "POST", "/kling/v1/videos/text2video", auth="Bearer wrong", json={"prompt": "a"})[1]["code"]
        == 1000
    )
    status, body = call(sim, "POST", "/kling/v1/videos/text2video", json={"prompt": "x" * 501}, **key)  # type: ignore[arg-type]
    assert (status, body["code"]) == (400, 1201)
    _, body = call(sim, "POST", "/kling/v1/videos/text2video", json={"prompt": "a"}, **key)  # type: ignore[arg-type]
    task_id = body["data"]["task_id"]
    sim.state.finish_now(task_id)
    done = call(sim, "GET", f"/kling/v1/videos/text2video/{task_id}", **key)[1]["data"]  # type: ignore[arg-type]
    assert done["task_status"] == "succeed", done
    video_id = done["task_result"]["videos"][0]["id"]
    status, body = call(sim, "POST", "/kling/v1/videos/video-extend", json={"video_id": video_id}, **key)  # type: ignore[arg-type]
    assert (status, body["code"]) == (400, 1201) and "task_id" in body["message"]
    status, body = call(
        sim, "POST", "/kling/v1/videos/video-extend", json={"video_id": video_id, "task_id": "123"}, **key
    )  # type: ignore[arg-type]
    assert (status, body["code"]) == (400, 1201)
    status, body = call(
        sim, "POST", "/kling/v1/videos/video-extend", json={"video_id": video_id, "task_id": task_id}, **key
    )  # type: ignore[arg-type]
    assert (status, body["code"]) == (200, 0)


def test_content_policy_failures_end_the_task_failed(sim: Simulator) -> None:
    _, body = call(sim, "POST", "/v1/videos/text2video", json={"prompt": "bad [sim:fail]"})
    done = wait_done(sim, "text2video", body["data"]["task_id"])
    assert done["task_status"] == "failed"
    assert "content-safety" in done["task_status_msg"]


def test_image2video_fetches_image_urls_on_loopback(sim: Simulator, tmp_path: Path) -> None:
    import http.server
    import threading
    from functools import partial

    Image.new("RGB", (400, 400), (10, 200, 10)).save(tmp_path / "green.png")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/green.png"
        status, body = call(sim, "POST", "/v1/videos/image2video", json={"image": url})
        assert status == 200, body
        status, body = call(
            sim, "POST", "/v1/videos/image2video", json={"image": url.replace("green", "nope")}
        )
        assert (status, body["code"]) == (400, 1201) and "404" in body["message"]
    finally:
        server.shutdown()
    status, body = call(sim, "POST", "/v1/videos/image2video", json={"image": "https://example.com/a.png"})
    assert (status, body["code"]) == (400, 1201) and "loopback" in body["message"]
