"""Which provider to talk to and how: read from flags and the environment.

Two dialects exist. `official`: Kling's own API, with a JWT minted from
KLING_ACCESS_KEY + KLING_SECRET_KEY. `proxy`: a reseller that takes a plain bearer key
(KLING_API_KEY), usually under a path prefix such as `/kling`, and often wants the
parent `task_id` next to `video_id` in video-extend bodies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from ..errors import ConfigError
from ..rules import PROMPT_MAX_CHARS

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
    prompt_max_chars: int = PROMPT_MAX_CHARS
    refuse_v1_5_extension: bool = False
    task_lookup: TaskLookup = "external_id"
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


def from_environment(
    env: Mapping[str, str] | None = None,
    *,
    base_url: str | None = None,
    path_prefix: str | None = None,
) -> ProviderConfig | None:
    """The provider configured by the environment, or None when no credentials are set.

    None means "use the offline simulator". Half-configured credentials (an access key
    without its secret key) are an error rather than a silent fallback to the simulator.
    """
    env = os.environ if env is None else env
    scale_text = env.get("CHAINER_TIME_SCALE", "1").strip() or "1"
    try:
        time_scale = float(scale_text)
        if not 0 < time_scale <= 10:
            raise ValueError(scale_text)
    except ValueError:
        raise ConfigError(
            f"CHAINER_TIME_SCALE={scale_text!r}: expected a number in (0, 10], the provider's "
            "task time as a fraction of Kling's (for simulators and rehearsals)"
        ) from None
    ak, sk, key = (env.get(n, "").strip() for n in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"))
    url = base_url or env.get("KLING_BASE_URL", "").strip() or None
    prefix = path_prefix if path_prefix is not None else env.get("KLING_PATH_PREFIX")
    if bool(ak) != bool(sk):
        missing = "KLING_SECRET_KEY" if ak else "KLING_ACCESS_KEY"
        raise ConfigError(
            f"{missing} is not set: the official API needs both the access key and the secret key"
        )
    if ak and key:
        raise ConfigError("both KLING_ACCESS_KEY/KLING_SECRET_KEY and KLING_API_KEY are set; keep only one")
    if ak:
        return ProviderConfig(
            name="kling",
            dialect="official",
            base_url=url or OFFICIAL_BASE_URL,
            path_prefix=prefix or "",
            access_key=SecretStr(ak),
            secret_key=SecretStr(sk),
            time_scale=time_scale,
        )
    if key:
        if not url:
            raise ConfigError(
                "KLING_API_KEY is set but KLING_BASE_URL (or --base-url) is not: which proxy is it for?"
            )
        send_parent = env.get("KLING_SEND_PARENT_TASK_ID", "1").strip().lower() not in ("0", "false", "no")
        lookup = env.get("KLING_TASK_LOOKUP", "external_id").strip()
        if lookup not in ("external_id", "list", "none"):
            raise ConfigError(f"KLING_TASK_LOOKUP={lookup!r}: expected external_id, list or none")
        return ProviderConfig(
            name="proxy",
            dialect="proxy",
            base_url=url,
            path_prefix="/kling" if prefix is None else prefix,
            api_key=SecretStr(key),
            send_parent_task_id=send_parent,
            task_lookup=lookup,
            time_scale=time_scale,
        )
    return None
