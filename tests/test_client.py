"""The Kling client against httpx.MockTransport: wire format and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import jwt
import pytest
from pydantic import SecretStr

from chainer import errors, rules
from chainer.profiles import from_environment
from chainer.provider.client import KlingClient
from chainer.provider.config import ProviderConfig
from chainer.provider.wire import Text2VideoRequest, VideoExtendRequest

OFFICIAL = ProviderConfig(
    name="kling",
    dialect="official",
    base_url="https://kling.test",
    access_key=SecretStr("ak"),
    secret_key=SecretStr("sk-0123456789abcdef0123456789abcdef"),
)
PROXY = ProviderConfig(
    name="proxy",
    dialect="proxy",
    base_url="https://proxy.test",
    path_prefix="/kling",
    api_key=SecretStr("key-123"),
    send_parent_task_id=True,
)

TASK = {
    "task_id": "1001",
    "task_status": "succeed",
    "task_status_msg": "",
    "task_info": {"external_task_id": "ext-1"},
    "task_result": {"videos": [{"id": "v1", "url": "https://cdn.test/v1.mp4", "duration": "9.5"}]},
    "created_at": 1722769557708,
    "updated_at": 1722769557708,
    "final_unit_deduction": "1",
}


def envelope(data: object = None, code: int = 0, message: str = "SUCCEED", request_id: str = "req-9") -> dict:
    return {"code": code, "message": message, "request_id": request_id, "data": data}


def run(
    config: ProviderConfig,
    handler: Callable[[httpx.Request], httpx.Response],
    call: Callable[[KlingClient], object],
) -> object:
    async def main() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = KlingClient(config, http=http)
            return await call(client)  # type: ignore[misc]

    return anyio.run(main)


@pytest.mark.parametrize("code", sorted(rules.ERROR_CODES))
def test_every_business_code_maps_to_its_typed_error(code: int) -> None:
    entry = rules.ERROR_CODES[code]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            entry.http_status, json=envelope(code=code, message=f"msg {code}", request_id="r-1")
        )

    with pytest.raises(errors.ApiError) as caught:
        run(OFFICIAL, handler, lambda c: c.get_task("text2video", "1"))
    exc = caught.value
    expected = {
        "auth": errors.AuthError,
        "account": errors.AccountError,
        "invalid": errors.InvalidRequestError,
        "policy": errors.PolicyError,
        "rate": errors.RateLimitError,
        "server": errors.ServerError,
    }[entry.family]
    # Codes whose handling differs from their family's have classes of their own.
    expected = {1203: errors.NotFound, 1302: errors.TooFast, 1303: errors.AccountFull}.get(code, expected)
    assert type(exc) is expected
    assert (exc.code, exc.api_message, exc.request_id, exc.http_status) == (
        code,
        f"msg {code}",
        "r-1",
        entry.http_status,
    )
    assert exc.retryable is (code in (1302, 1303, 5000, 5001, 5002))
    assert "r-1" in str(exc)


def test_the_retryable_and_fatal_sets_are_exactly_as_documented() -> None:
    retryable = {c for c, e in rules.ERROR_CODES.items() if e.retryable}
    assert retryable == {1302, 1303, 5000, 5001, 5002}
    fatal = set(rules.ERROR_CODES) - retryable
    assert fatal == {
        1000,
        1001,
        1002,
        1003,
        1004,
        1100,
        1101,
        1102,
        1103,
        1200,
        1201,
        1202,
        1203,
        1300,
        1301,
        1304,
    }


def test_billing_429_is_fatal_but_throttling_429_is_retryable() -> None:
    for code, retryable in ((1102, False), (1303, True)):

        def handler(request: httpx.Request, code: int = code) -> httpx.Response:
            return httpx.Response(429, json=envelope(code=code, message="x"))

        with pytest.raises(errors.ApiError) as caught:
            run(OFFICIAL, handler, lambda c: c.get_task("text2video", "1"))
        assert caught.value.retryable is retryable


def test_retry_after_is_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json=envelope(code=1302, message="slow down"), headers={"Retry-After": "7"}
        )

    with pytest.raises(errors.RateLimitError) as caught:
        run(OFFICIAL, handler, lambda c: c.get_task("text2video", "1"))
    assert caught.value.retry_after == 7.0


def test_undocumented_codes_are_fatal_unless_5xx() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=envelope(code=4242, message="new"))

    with pytest.raises(errors.InvalidRequestError) as caught:
        run(OFFICIAL, handler, lambda c: c.get_task("text2video", "1"))
    assert not caught.value.retryable


def test_connect_error_is_not_sent_and_read_timeout_is_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    body = Text2VideoRequest(prompt="p")
    with pytest.raises(errors.RequestNotSent):
        run(OFFICIAL, refuse, lambda c: c.create("text2video", body))
    with pytest.raises(errors.OutcomeUnknown):
        run(OFFICIAL, hang, lambda c: c.create("text2video", body))


@pytest.mark.parametrize("status,code", [(500, 5000), (503, 5001), (504, 5002), (502, None)])
def test_server_trouble_on_a_create_means_the_outcome_is_unknown(status: int, code: int | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if code is None:
            return httpx.Response(status, text="<html>bad gateway</html>")
        return httpx.Response(status, json=envelope(code=code, message="oops"))

    with pytest.raises(errors.OutcomeUnknown) as caught:
        run(OFFICIAL, handler, lambda c: c.create("text2video", Text2VideoRequest(prompt="p")))
    assert isinstance(caught.value.__cause__, errors.ServerError)


def test_a_4xx_refusal_of_a_create_stays_a_definite_refusal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=envelope(code=1301, message="unsafe"))

    with pytest.raises(errors.PolicyError):
        run(OFFICIAL, handler, lambda c: c.create("text2video", Text2VideoRequest(prompt="p")))


def test_non_envelope_answers_are_protocol_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="hello")

    with pytest.raises(errors.ProtocolError):
        run(OFFICIAL, handler, lambda c: c.get_task("text2video", "1"))

    def bad_task(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=envelope({"task_id": "1", "task_status": "exploded"}, request_id="r-x")
        )

    with pytest.raises(errors.ProtocolError) as caught:
        run(OFFICIAL, bad_task, lambda c: c.get_task("text2video", "1"))
    assert caught.value.request_id == "r-x"


def test_official_requests_carry_a_fresh_jwt_and_exact_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope({**TASK, "task_status": "submitted", "task_result": None}))

    body = Text2VideoRequest(prompt="a cat", model_name="kling-v1-6", duration="5", external_task_id="e1")
    task = run(OFFICIAL, handler, lambda c: c.create("text2video", body))
    assert task.task_id == "1001"  # type: ignore[attr-defined]
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://kling.test/v1/videos/text2video"
    assert json.loads(request.content) == {
        "prompt": "a cat",
        "model_name": "kling-v1-6",
        "duration": "5",
        "external_task_id": "e1",
    }
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = jwt.decode(token, "sk-0123456789abcdef0123456789abcdef", algorithms=["HS256"])
    assert claims["iss"] == "ak"


def test_proxy_requests_use_prefix_bearer_key_and_parent_task_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope(TASK))

    body = VideoExtendRequest(video_id="v1", task_id="1000", prompt="more")
    run(PROXY, handler, lambda c: c.create("video-extend", body))
    assert str(seen[0].url) == "https://proxy.test/kling/v1/videos/video-extend"
    assert seen[0].headers["Authorization"] == "Bearer key-123"
    assert json.loads(seen[0].content) == {"video_id": "v1", "task_id": "1000", "prompt": "more"}


def test_task_parsing_gives_float_durations_and_units() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/videos/video-extend/1001"
        return httpx.Response(200, json=envelope(TASK))

    task = run(OFFICIAL, handler, lambda c: c.get_task("video-extend", "1001"))
    assert task.video.seconds == 9.5  # type: ignore[attr-defined]
    assert task.units == 1.0  # type: ignore[attr-defined]


def test_lookup_by_external_id_returns_none_when_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["external_task_id"] == "nope"
        return httpx.Response(404, json=envelope(code=1203, message="not found"))

    assert run(OFFICIAL, handler, lambda c: c.find_by_external_id("video-extend", "nope")) is None


def test_lookup_accepts_object_or_list_answers() -> None:
    for data in (TASK, [TASK]):

        def handler(request: httpx.Request, data: object = data) -> httpx.Response:
            return httpx.Response(200, json=envelope(data))

        found = run(OFFICIAL, handler, lambda c: c.find_by_external_id("text2video", "ext-1"))
        assert found.task_id == "1001"  # type: ignore[attr-defined]


def test_a_list_without_our_id_in_answer_to_a_lookup_cannot_tell() -> None:
    """A provider that ignores the lookup parameter answers with its task list: the absence of
    our id there proves nothing (issue 22), so it is LookupUndecided, never None."""
    other = {**TASK, "task_info": {"external_task_id": "someone-else"}}
    for data in ([], [other]):

        def handler(request: httpx.Request, data: object = data) -> httpx.Response:
            return httpx.Response(200, json=envelope(data))

        with pytest.raises(errors.LookupUndecided, match="ignores the lookup"):
            run(OFFICIAL, handler, lambda c: c.find_by_external_id("text2video", "ext-1"))


def test_environment_selects_dialect_or_none() -> None:
    assert from_environment({}) is None
    official = from_environment({"KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "the-secret-b"})
    assert official is not None and official.dialect == "official"
    assert official.base_url == "https://api-singapore.klingai.com"
    proxy = from_environment({"KLING_API_KEY": "the-key-k", "KLING_BASE_URL": "https://p.test"})
    assert proxy is not None and (proxy.dialect, proxy.path_prefix) == ("proxy", "/kling")
    with pytest.raises(errors.ConfigError, match="KLING_SECRET_KEY"):
        from_environment({"KLING_ACCESS_KEY": "a"})
    with pytest.raises(errors.ConfigError, match="KLING_BASE_URL"):
        from_environment({"KLING_API_KEY": "k"})
    assert "the-secret-b" not in repr(official) and "the-key-k" not in repr(proxy)
