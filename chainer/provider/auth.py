"""Authentication as httpx.Auth flows: a self-minted JWT (official API) or a bearer key.

Keeping auth in an httpx.Auth keeps the client's transport seam narrow: the client
never touches headers, and tests can swap the transport without knowing about tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator

import httpx
import jwt

#: The official example's lifetime and clock-skew allowance (kling-api.md §1.1).
TOKEN_LIFETIME_S = 1800
NBF_SKEW_S = 5
#: A cached token is replaced when less than this much of its life is left.
REFRESH_MARGIN_S = 300


def mint_jwt(access_key: str, secret_key: str, *, now: float | None = None) -> str:
    """A Kling API token: HS256, iss = access key, exp = now + 30 min, nbf = now - 5 s."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": access_key, "exp": issued + TOKEN_LIFETIME_S, "nbf": issued - NBF_SKEW_S}
    return jwt.encode(claims, secret_key, algorithm="HS256", headers={"typ": "JWT"})


class JwtAuth(httpx.Auth):
    """Mints a token from AK/SK and reuses it until it is within REFRESH_MARGIN_S of expiry."""

    def __init__(self, access_key: str, secret_key: str, *, clock: Callable[[], float] = time.time):
        self._ak = access_key
        self._sk = secret_key
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - REFRESH_MARGIN_S:
                self._token = mint_jwt(self._ak, self._sk, now=now)
                self._expires_at = int(now) + TOKEN_LIFETIME_S
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (after a 1003/1004, so the next request mints anew)."""
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


class BearerAuth(httpx.Auth):
    """A proxy's plain API key, sent as `Authorization: Bearer <key>`."""

    def __init__(self, api_key: str):
        self._key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request
