"""Everything the client needs to reach one provider (built by chainer.profiles).

Two dialects exist. `official`: Kling's own API, with a JWT minted from
KLING_ACCESS_KEY + KLING_SECRET_KEY. `proxy`: a reseller that takes a plain bearer key
(KLING_API_KEY), usually under a path prefix such as `/kling`, and often wants the
parent `task_id` next to `video_id` in video-extend bodies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

Dialect = Literal["official", "proxy"]
#: How a create whose answer was lost is looked up: by external_task_id, by scanning the
#: task list (extensions are recognised by their parent video), or not at all.
TaskLookup = Literal["external_id", "list", "none"]

OFFICIAL_BASE_URL = "https://api-singapore.klingai.com"


class ProviderConfig(BaseModel):
    """Everything the client needs to reach one provider. Secrets never print."""

    model_config = ConfigDict(frozen=True)

    name: str
    dialect: Dialect
    base_url: str
    path_prefix: str = ""
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    api_key: SecretStr | None = None
    #: Send the parent task id along with video_id in video-extend (proxies need it).
    send_parent_task_id: bool = False
    task_lookup: TaskLookup = "external_id"
    #: Whether the provider offers GET /account/costs (Kling does; proxies bill their own credit).
    account_costs: bool = True
    #: Tasks in flight at once unless the command line says otherwise.
    concurrency: int = 5
    #: True for chainer's built-in simulator: no credits are spent.
    offline: bool = False
    #: Multiplies the expected task times used to shape polling (the simulator runs fast).
    time_scale: float = 1.0

    def endpoint(self, path: str) -> str:
        """Absolute URL of an API path such as `/v1/videos/text2video`."""
        prefix = "/" + self.path_prefix.strip("/") if self.path_prefix.strip("/") else ""
        return f"{self.base_url.rstrip('/')}{prefix}{path}"

    def secrets(self) -> list[str]:
        """The credential strings, so that tests and scrubbers can look for leaks."""
        return [s.get_secret_value() for s in (self.access_key, self.secret_key, self.api_key) if s]
