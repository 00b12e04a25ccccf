"""Conformance: every documented rule and code, against both dialects of the simulator.

Plain httpx and PyJWT written from shared/kling-api.md, never chainer's client, so the
simulator is checked against the spec rather than against chainer's reading of it.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import pytest
from PIL import Image

from chainer.simulator import SimConfig, Simulator

ROOT = Path(__file__).resolve().parent.parent
FAST = {"time_scale": 0.0005, "width": 160, "height": 96}


class Api:
    """One dialect's way of calling the simulator: auth header and path prefix."""

    def __init__(self, sim: Simulator, dialect: str):
        self.sim, self.dialect = sim, dialect
        self.prefix = "/kling" if dialect == "proxy" else ""

    def auth(self) -> str:
        if self.dialect == "proxy":
            return f"Bearer {self.sim.config.api_key}"
        now = int(time.time())
        token = jwt.encode(
            {"iss": self.sim.config.access_key, "exp": now + 1800, "nbf": now - 5},
            self.sim.config.secret_key,
            algorithm="HS256",
        )
        return f"Bearer {token}"

    def request(
        self, method: str, path: str, *, auth: str | None = "default", **kw: Any
    ) -> tuple[int, dict, httpx.Response]:
        headers = dict(kw.pop("headers", {}))
        if auth is not None:
            headers["Authorization"] = self.auth() if auth == "default" else auth
        r = httpx.request(method, self.sim.base_url + self.prefix + path, headers=headers, timeout=10, **kw)
        return r.status_code, r.json(), r

    def create(self, kind: str, body: dict[str, Any]) -> tuple[int, dict]:
        status, data, _ = self.request("POST", f"/v1/videos/{kind}", json=body)
        return status, data

    def get(self, path: str) -> tuple[int, dict]:
        status, data, _ = self.request("GET", path)
        return status, data

    def done(self, kind: str, task_id: str) -> dict:
        """The task once it has ended (the simulator's clock is moved there: no sleeping)."""
        self.sim.state.finish_now(task_id)
        status, body = self.get(f"/v1/videos/{kind}/{task_id}")
        assert status == 200, body
        assert body["data"]["task_status"] in ("succeed", "failed"), body
        return body["data"]  # type: ignore[no-any-return]

    def video(self, body: dict[str, Any] | None = None, kind: str = "text2video") -> dict:
        status, answer = self.create(kind, body or {"prompt": "a cat"})
        assert status == 200, answer
        return self.done(kind, answer["data"]["task_id"])

    def extend_body(self, task: dict) -> dict[str, Any]:
        body = {"video_id": task["task_result"]["videos"][0]["id"]}
        if self.dialect == "proxy":
            body["task_id"] = task["task_id"]
        return body


@pytest.fixture(params=["official", "proxy"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from _api(request.param, tmp_path)


def _api(dialect: str, tmp_path: Path, **settings: Any) -> Iterator[Api]:
    proxy = {"path_prefix": "/kling", "send_parent_task_id": True} if dialect == "proxy" else {}
    sim = Simulator(
        SimConfig(dialect=dialect, **{**FAST, **proxy, **settings}), data_dir=tmp_path / dialect, admin=True
    ).start()
    try:
        yield Api(sim, dialect)
    finally:
        sim.stop()


@pytest.fixture(params=["official", "proxy"])
def api_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: list[Iterator[Api]] = []

    def make(**settings: Any) -> Api:
        gen = _api(request.param, tmp_path / str(len(made)), **settings)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        next(gen, None)


def png(w: int = 400, h: int = 400, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------ auth (1000-1002)


def test_missing_and_malformed_authorization(api: Api) -> None:
    for auth, code in ((None, 1001), ("Token x", 1002), ("Bearer", 1002)):
        status, body, _ = api.request("POST", "/v1/videos/text2video", auth=auth, json={"prompt": "x"})
        assert (status, body["code"]) == (401, code)
    wrong = (
        "Bearer sim-api-key-wrong"
        if api.dialect == "proxy"
        else f"Bearer {jwt.encode({'iss': 'x', 'exp': 1, 'nbf': 1}, 'k' * 32)}"
    )
    status, body, _ = api.request("POST", "/v1/videos/text2video", auth=wrong, json={"prompt": "x"})
    assert status == 401 and body["code"] in (1000, 1002)
    assert not api.sim.state.creates


# ------------------------------------------------------------------ envelope and task object


def test_envelope_task_object_and_units(api: Api) -> None:
    status, body = api.create("text2video", {"prompt": "a cat", "mode": "pro", "external_task_id": "e-1"})
    assert status == 200
    assert set(body) == {"code", "message", "request_id", "data"} and body["code"] == 0
    created = body["data"]
    assert created["task_status"] == "submitted" and created["task_id"].isdigit()
    assert created["task_info"] == {"external_task_id": "e-1"}
    done = api.done("text2video", created["task_id"])
    assert done["final_unit_deduction"] == "3.5"  # pro, 5 s
    assert isinstance(done["created_at"], int) and done["created_at"] > 10**12  # milliseconds
    assert done["updated_at"] >= done["created_at"]
    ten = api.video({"prompt": "long", "duration": "10"})
    assert ten["final_unit_deduction"] == "2" and ten["task_result"]["videos"][0]["duration"] == "10"


def test_extension_reports_its_parent_and_the_running_total(api: Api) -> None:
    first = api.video()
    status, body = api.create("video-extend", {**api.extend_body(first), "prompt": "more"})
    assert status == 200, body
    ext = api.done("video-extend", body["data"]["task_id"])
    parent = ext["task_info"]["parent_video"]
    assert parent["id"] == first["task_result"]["videos"][0]["id"] and parent["duration"] == "5"
    total = float(ext["task_result"]["videos"][0]["duration"])
    assert 9.0 <= total <= 10.0
    assert ext["final_unit_deduction"] == "1"


# ------------------------------------------------------------------ validation (1200, 1201)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "prompt is required"),
        ({"prompt": "x", "duration": 5}, "duration"),
        ({"prompt": "x", "mode": "turbo"}, "mode"),
        ({"prompt": "x", "cfg_scale": 1.5}, "cfg_scale"),
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"prompt": "x", "model_name": "kling-v9"}, "model_name"),
        ({"prompt": "x", "watermark_info": {"enabled": "yes"}}, "watermark_info"),
    ],
)
def test_text2video_validation(api: Api, body: dict, needle: str) -> None:
    status, answer = api.create("text2video", body)
    assert (status, answer["code"]) == (400, 1201) and needle in answer["message"]


def test_body_that_is_not_json(api: Api) -> None:
    status, body, _ = api.request(
        "POST", "/v1/videos/text2video", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (status, body["code"]) == (400, 1200)


def test_prompt_length_limit_per_provider(api_factory: Any) -> None:
    api = api_factory(prompt_max_chars=500)
    assert api.create("text2video", {"prompt": "x" * 500})[0] == 200
    status, body = api.create("text2video", {"prompt": "x" * 501})
    assert (status, body["code"]) == (400, 1201) and "500" in body["message"]


@pytest.mark.parametrize(
    "image,needle",
    [
        (png(200, 400), "at least 300 px"),
        (png(1000, 300), "aspect ratio"),
        ("data:image/png;base64," + png(), "data: prefix"),
        ("@@@", "not valid base64"),
    ],
)
def test_image2video_image_rules(api: Api, image: str, needle: str) -> None:
    status, answer = api.create("image2video", {"image": image})
    assert (status, answer["code"]) == (400, 1201) and needle in answer["message"]


def test_image2video_tail_forces_five_seconds(api: Api) -> None:
    status, body = api.create("image2video", {"image": png(), "image_tail": png(), "duration": "10"})
    assert (status, body["code"]) == (400, 1201)
    assert api.create("image2video", {"image_tail": png()})[0] == 200


# ------------------------------------------------------------------ extension rules


def test_extension_refusals(api: Api) -> None:
    status, body = api.create("video-extend", {"video_id": "nope", "task_id": "1"})
    assert (status, body["code"]) == (404, 1203)
    v2 = api.video({"prompt": "x", "model_name": "kling-v2-master"})
    status, body = api.create("video-extend", api.extend_body(v2))
    assert (status, body["code"]) == (400, 1201) and "cannot be extended" in body["message"]


def test_v1_5_refusal_is_optional(api_factory: Any) -> None:
    api = api_factory(extend_v1_5=False)
    v15 = api.video({"image": png(), "model_name": "kling-v1-5"}, kind="image2video")
    status, body = api.create("video-extend", api.extend_body(v15))
    assert (status, body["code"]) == (400, 1201) and "kling-v1-5" in body["message"]


def test_parent_task_id_is_checked_in_the_proxy_dialect(api: Api) -> None:
    first = api.video()
    video_id = first["task_result"]["videos"][0]["id"]
    missing = api.create("video-extend", {"video_id": video_id})
    wrong = api.create("video-extend", {"video_id": video_id, "task_id": "12345"})
    if api.dialect == "proxy":
        assert missing[1]["code"] == 1201 and wrong[1]["code"] == 1201
    else:
        assert missing[0] == 200  # the official API takes video_id alone


# ------------------------------------------------------------------ limits (1102, 1302, 1303)


def test_concurrency_limit(api_factory: Any) -> None:
    api = api_factory(concurrency=2, time_scale=1.0)
    assert api.create("text2video", {"prompt": "a"})[0] == 200
    assert api.create("text2video", {"prompt": "b"})[0] == 200
    status, body = api.create("text2video", {"prompt": "c"})
    assert (status, body["code"]) == (429, 1303)
    stats = httpx.get(api.sim.base_url + "/_sim/stats").json()
    assert stats["peak_concurrency"] == 2 and stats["creates"] == 2


def test_rate_limit_answers_1302_with_retry_after(api_factory: Any) -> None:
    api = api_factory(rate_limit_per_s=0.01)  # one request, then none for 100 s
    assert api.create("text2video", {"prompt": "a"})[0] == 200
    status, body, response = api.request("POST", "/v1/videos/text2video", json={"prompt": "b"})
    assert (status, body["code"]) == (429, 1302)
    assert float(response.headers["Retry-After"]) >= 1


def test_balance_answers_1102_when_the_pack_is_used_up(api_factory: Any) -> None:
    api = api_factory(unit_budget=4.5)
    assert api.create("text2video", {"prompt": "a", "mode": "pro"})[0] == 200  # 3.5
    assert api.create("text2video", {"prompt": "b"})[0] == 200  # 4.5
    status, body = api.create("text2video", {"prompt": "c"})
    assert (status, body["code"]) == (429, 1102)


# ------------------------------------------------------------------ ids, queries, lists


def test_external_task_id_unique_and_queryable_both_ways(api: Api) -> None:
    status, body = api.create("text2video", {"prompt": "a", "external_task_id": "mine"})
    task_id = body["data"]["task_id"]
    assert api.create("text2video", {"prompt": "b", "external_task_id": "mine"})[1]["code"] == 1201
    for path in ("/v1/videos/text2video/mine", "/v1/videos/text2video?external_task_id=mine"):
        status, body = api.get(path)
        assert status == 200 and body["data"]["task_id"] == task_id
        assert body["data"]["task_info"]["external_task_id"] == "mine"
    assert api.get("/v1/videos/image2video/mine")[1]["code"] == 1203


def test_list_paging(api: Api) -> None:
    for n in range(3):
        api.create("text2video", {"prompt": f"p{n}"})
    assert len(api.get("/v1/videos/text2video?pageNum=1&pageSize=2")[1]["data"]) == 2
    assert len(api.get("/v1/videos/text2video?pageNum=2&pageSize=2")[1]["data"]) == 1
    for bad in ("pageSize=501", "pageSize=0", "pageNum=0", "pageNum=1001"):
        assert api.get(f"/v1/videos/text2video?{bad}")[1]["code"] == 1201


# ------------------------------------------------------------------ downloads, retention


def test_signed_urls_expire_are_reissued_and_support_ranges(api_factory: Any) -> None:
    api = api_factory(url_ttl_s=100)
    task = api.video()
    url = task["task_result"]["videos"][0]["url"]
    full = httpx.get(url)
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == full.content[100:200]
    api.sim.state.advance(60)
    fresh = api.get(f"/v1/videos/text2video/{task['task_id']}")[1]["data"]["task_result"]["videos"][0]["url"]
    api.sim.state.advance(60)  # the first url is now 120 s old, the fresh one 60 s
    assert httpx.get(url).status_code == 403
    assert httpx.get(fresh).content == full.content


def test_thirty_day_retention(api: Api) -> None:
    task = api.video()
    url = task["task_result"]["videos"][0]["url"]
    api.sim.state.advance(31 * 86400)
    assert api.get(f"/v1/videos/text2video/{task['task_id']}")[1]["code"] == 1203
    assert httpx.get(url).status_code in (403, 404)
    assert api.create("video-extend", api.extend_body(task))[1]["code"] == 1203


def test_watermark_info_gives_a_watermarked_copy(api: Api) -> None:
    task = api.video({"prompt": "a", "watermark_info": {"enabled": True}})
    video = task["task_result"]["videos"][0]
    assert task["watermark_info"] == {"enabled": True}
    clean, marked = httpx.get(video["url"]), httpx.get(video["watermark_url"])
    assert clean.status_code == marked.status_code == 200 and clean.content != marked.content
    assert "watermark_url" not in api.video()["task_result"]["videos"][0]


# ------------------------------------------------------------------ callbacks


class _Catcher(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_callbacks_on_every_status_change(api: Api) -> None:
    _Catcher.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Catcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        _, body = api.create("text2video", {"prompt": "a", "callback_url": url})
        api.done("text2video", body["data"]["task_id"])
        for _ in range(500):
            if any(r["task_status"] == "succeed" for r in _Catcher.received):
                break
            time.sleep(0.01)
    finally:
        server.shutdown()
    statuses = [r["task_status"] for r in _Catcher.received]
    assert statuses[0] == "submitted" and statuses[-1] == "succeed"
    assert statuses == sorted(set(statuses), key=statuses.index), "each change announced once"
    assert "code" not in _Catcher.received[-1], "callbacks are the flat task object, no envelope"
    assert _Catcher.received[-1]["task_result"]["videos"][0]["id"]


# ------------------------------------------------------------------ faults


def test_faults_on_demand(api_factory: Any) -> None:
    api = api_factory(error_rate=1.0)
    status, body = api.create("text2video", {"prompt": "a"})
    assert (status, body["code"]) == (500, 5000) and not api.sim.state.creates
    lossy = api_factory(lose_create_rate=1.0)
    response = httpx.post(
        lossy.sim.base_url + lossy.prefix + "/v1/videos/text2video",
        headers={"Authorization": lossy.auth()},
        json={"prompt": "a"},
    )
    assert response.status_code == 502 and len(lossy.sim.state.creates) == 1, "created, answer lost"
    failing = api_factory().video({"prompt": "x [sim:fail]"})
    assert failing["task_status"] == "failed" and "content-safety" in failing["task_status_msg"]


def test_truncated_downloads(api_factory: Any) -> None:
    api = api_factory(truncate_download_rate=1.0)
    url = api.video()["task_result"]["videos"][0]["url"]
    with pytest.raises(httpx.HTTPError):  # the body ends before its Content-Length
        httpx.get(url)
    assert httpx.get(url, headers={"Range": "bytes=0-9"}).status_code == 206  # ranges are served whole


# ------------------------------------------------------------------ independence


def test_a_plain_client_runs_text2video_three_extensions_and_download(api: Api, tmp_path: Path) -> None:
    task = api.video({"prompt": "start"})
    kind = "text2video"
    for n in range(3):
        status, body = api.create("video-extend", {**api.extend_body(task), "prompt": f"ext {n}"})
        assert status == 200, body
        task, kind = api.done("video-extend", body["data"]["task_id"]), "video-extend"
        assert task["task_status"] == "succeed"
    video = task["task_result"]["videos"][0]
    (tmp_path / "final.mp4").write_bytes(httpx.get(video["url"]).content)
    from chainer import media  # only to read the result

    assert abs(media.probe(tmp_path / "final.mp4").duration - float(video["duration"])) < 0.05
    assert 17.0 <= float(video["duration"]) <= 20.0 and kind == "video-extend"


def test_the_simulator_does_not_import_the_client() -> None:
    allowed = {"chainer.rules", "chainer.media", "chainer.simulator"}
    for path in (ROOT / "chainer" / "simulator").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = (
                    "chainer"
                    + ("" if node.level == 2 else ".simulator")
                    + (f".{node.module}" if node.module else "")
                )
                names = [f"{target}.{a.name}" if not node.module else target for a in node.names]
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module
                    else [a.name for a in node.names]
                )  # type: ignore[union-attr]
            else:
                continue
            for name in names:
                if name.startswith("chainer"):
                    assert any(name == a or name.startswith(a + ".") for a in allowed), (
                        f"{path.name} imports {name}"
                    )


# ------------------------------------------------------------------ omni-video (kling-api.md §9)


def omni_body(api: Api, reference: dict, **overrides: Any) -> dict[str, Any]:
    """An omni-video body continuing `reference` (a finished task object) as the next shot."""
    body: dict[str, Any] = {
        "model_name": "kling-video-o1",
        "prompt": "Based on <<<video_1>>>, generate the next shot: the cat jumps",
        "video_list": [
            {
                "video_url": reference["task_result"]["videos"][0]["url"],
                "refer_type": "feature",
                "keep_original_sound": "no",
            }
        ],
        "duration": "3",
        "sound": "off",
    }
    return {**body, **overrides}


def test_omni_video_makes_a_new_shot_that_continues_its_reference(api: Api) -> None:
    first = api.video({"prompt": "a cat", "model_name": "kling-v2-6"})
    status, body = api.create("omni-video", omni_body(api, first, external_task_id="o-1"))
    assert status == 200, body
    shot = api.done("omni-video", body["data"]["task_id"])
    assert shot["task_status"] == "succeed"
    video = shot["task_result"]["videos"][0]
    assert video["duration"] == "3", "a shot of its own length, not the reference plus more"
    assert shot["final_unit_deduction"] == "0.6", "3 s of std, charged by the second"
    # queried by external_task_id on its own endpoint, like the other kinds
    status, found = api.get("/v1/videos/omni-video?external_task_id=o-1")
    assert status == 200 and found["data"]["task_id"] == shot["task_id"]
    # the shot's scene time starts right after the reference's last frame
    ref = api.sim.state.videos[first["task_result"]["videos"][0]["id"]]
    made = api.sim.state.videos[video["id"]]
    assert made.start_frame == ref.start_frame + ref.frames and made.scene == ref.scene


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"model_name": "kling-v2-6"}, "model_name"),
        ({"model_name": None}, "model_name is required"),
        ({"prompt": None}, "prompt is required"),
        ({"sound": "on"}, "sound must be off when a video is given"),
        ({"duration": "11"}, "duration must be"),
        ({"duration": "2"}, "duration must be"),
        ({"duration": 5}, "duration must be"),
        ({"negative_prompt": "blur"}, "negative_prompt is not a parameter"),
        ({"prompt": "continue <<<video_2>>>"}, "<<<video_2>>>"),
        ({"prompt": "use <<<image_1>>> after <<<video_1>>>"}, "<<<image_1>>>"),
        ({"video_list": "x"}, "video_list must be a list"),
        ({"mode": "max"}, "mode must be"),
    ],
)
def test_omni_video_validation(api: Api, change: dict[str, Any], needle: str) -> None:
    first = api.video()
    body = {k: v for k, v in omni_body(api, first, **change).items() if v is not None}
    status, answer = api.create("omni-video", body)
    assert (status, answer["code"]) == (400, 1201) and needle in answer["message"], answer
    assert len(api.sim.state.creates) == 1, "nothing was created"


def test_omni_video_takes_one_video_and_reference_images(api: Api) -> None:
    first = api.video()
    two = omni_body(api, first)
    two["video_list"] = two["video_list"] * 2
    status, answer = api.create("omni-video", two)
    assert (status, answer["code"]) == (400, 1201) and "at most 1" in answer["message"]
    with_image = omni_body(
        api,
        first,
        prompt="<<<video_1>>> goes on; the cat now wears <<<image_1>>>",
        image_list=[{"image_url": png()}],
    )
    status, answer = api.create("omni-video", with_image)
    assert status == 200, answer
    small = omni_body(api, first, image_list=[{"image_url": png(100, 100)}])
    status, answer = api.create("omni-video", small)
    assert (status, answer["code"]) == (400, 1201) and "300 px" in answer["message"]


def test_omni_video_fetches_its_reference_url_as_kling_would(api: Api) -> None:
    first = api.video()
    url = first["task_result"]["videos"][0]["url"]
    api.sim.state.advance(api.sim.config.url_ttl_s + 60)  # the signed url has expired
    status, answer = api.create("omni-video", omni_body(api, first))
    assert (status, answer["code"]) == (400, 1201) and "HTTP 403" in answer["message"], answer
    assert httpx.get(url).status_code == 403
    fresh = api.done("text2video", first["task_id"])  # a query signs the url anew
    status, answer = api.create("omni-video", omni_body(api, fresh))
    assert status == 200, answer
    tampered = omni_body(api, fresh)
    tampered["video_list"][0]["video_url"] = url.replace("sig=", "sig=0")
    status, answer = api.create("omni-video", tampered)
    assert (status, answer["code"]) == (400, 1201) and "bad signature" in answer["message"]
    foreign = omni_body(api, fresh)
    foreign["video_list"][0]["video_url"] = "https://cdn.example/v.mp4"
    status, answer = api.create("omni-video", foreign)
    assert (status, answer["code"]) == (400, 1201) and "only videos it made" in answer["message"]


# ---------------------------------------------------------------- account and unrouted requests (issue 19)


def test_account_costs_lists_the_pack_with_its_remaining_units(api_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory(unit_budget=4.5, pack_age_days=10, pack_valid_days=30)
    now = int(time.time() * 1000)
    window = {"start_time": now - 400 * 86_400_000, "end_time": now}
    status, body, _ = api.request("GET", "/account/costs", params=window)
    assert status == 200 and body["code"] == 0, body
    (pack,) = body["data"]["resource_pack_subscribe_infos"]
    assert pack["status"] == "online" and pack["resource_pack_type"] == "video"
    assert pack["total_quantity"] == 4.5 and pack["remaining_quantity"] == 4.5
    assert pack["invalid_time"] - pack["purchase_time"] == 30 * 86_400_000
    api.video({"prompt": "spend one unit"})  # 5 s std: 1 unit
    left = api.request("GET", "/account/costs", params=window)[1]["data"]["resource_pack_subscribe_infos"][0]
    assert left["remaining_quantity"] == 3.5
    # a window that starts after the purchase does not list the pack (clients must look back far)
    narrow = {"start_time": now - 86_400_000, "end_time": now}
    assert (
        api.request("GET", "/account/costs", params=narrow)[1]["data"]["resource_pack_subscribe_infos"] == []
    )
    assert api.request("GET", "/account/costs", auth=None)[0] == 401
    api.sim.state.advance(21 * 86_400.0)  # the pack's 30 days run out on the simulated clock
    gone = api.request("GET", "/account/costs", params=window)[1]["data"]["resource_pack_subscribe_infos"]
    assert [p["status"] for p in gone] == ["expired"]


@pytest.mark.parametrize(
    "method,path,http,code",
    [
        ("DELETE", "/v1/videos/text2video", 404, 1202),  # a known path, a method it does not take
        ("PUT", "/account/costs", 404, 1202),
        ("GET", "/v1/no-such-thing", 404, 1203),
        ("POST", "/v2/videos/text2video", 404, 1203),
    ],
)
def test_unrouted_requests_are_answered_in_the_envelope(
    api, method: str, path: str, http: int, code: int
) -> None:  # type: ignore[no-untyped-def]
    status, body, response = api.request(method, path)
    assert status == http and body["code"] == code and body["message"], body
    assert response.headers["content-type"].startswith("application/json")
