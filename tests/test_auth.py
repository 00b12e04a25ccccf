"""The official API's JWT: claims, header, signature, caching and refresh."""

from __future__ import annotations

import jwt

from chainer.provider.auth import NBF_SKEW_S, REFRESH_MARGIN_S, TOKEN_LIFETIME_S, JwtAuth, mint_jwt

AK, SK = "my-access-key", "my-secret-key-which-is-32-bytes!!"


def test_claims_header_and_signature() -> None:
    token = mint_jwt(AK, SK, now=1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SK, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False})
    assert claims == {"iss": AK, "exp": 1_700_000_000 + 1800, "nbf": 1_700_000_000 - 5}
    assert TOKEN_LIFETIME_S == 1800 and NBF_SKEW_S == 5


def test_wrong_secret_does_not_verify() -> None:
    token = mint_jwt(AK, SK)
    try:
        jwt.decode(token, "another-secret-key-also-32-bytes!!", algorithms=["HS256"])
    except jwt.InvalidSignatureError:
        return
    raise AssertionError("a token signed with another key verified")


def test_token_is_cached_then_refreshed_before_expiry() -> None:
    now = [1_700_000_000.0]
    auth = JwtAuth(AK, SK, clock=lambda: now[0])
    first = auth.token()
    now[0] += TOKEN_LIFETIME_S - REFRESH_MARGIN_S - 1
    assert auth.token() == first
    now[0] += 2  # inside the refresh margin: a new token with a later exp
    second = auth.token()
    assert second != first
    claims = jwt.decode(second, SK, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False})
    assert claims["exp"] == int(now[0]) + TOKEN_LIFETIME_S


def test_invalidate_forces_a_new_token() -> None:
    now = [1_700_000_000.0]
    auth = JwtAuth(AK, SK, clock=lambda: now[0])
    first = auth.token()
    now[0] += 1
    auth.invalidate()
    assert auth.token() != first
