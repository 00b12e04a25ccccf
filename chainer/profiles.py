"""Provider profiles: what differs between Kling and the proxies people use, as data.

Each profile is a small declarative description (kling-api.md §1.2 and §7 give the
facts). Validation applies a profile's limits before anything is sent; nothing else in
chainer needs to know which provider is which.

Where the public docs say nothing, the setting errs on the side of never paying twice:
proxies are assumed not to answer lookups by external_task_id (a lost create is then
reconciled from the task list, or the user is asked).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from . import rules
from .errors import ConfigError
from .provider.config import OFFICIAL_BASE_URL, ProviderConfig, TaskLookup

if TYPE_CHECKING:  # the simulator is only configured here, never imported for it
    from .simulator import SimConfig

ExtendField = Literal["prompt", "negative_prompt", "cfg_scale"]


class Profile(BaseModel):
    """How one provider speaks Kling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    #: None: the user must give it (KLING_BASE_URL / --base-url).
    base_url: str | None
    path_prefix: str = ""
    auth: Literal["jwt", "bearer"]
    #: Send the parent task's id next to video_id in video-extend bodies.
    send_parent_task_id: bool = False
    prompt_max_chars: int = rules.PROMPT_MAX_CHARS
    negative_prompt_max_chars: int = rules.PROMPT_MAX_CHARS
    #: Optional video-extend fields the provider accepts (others are dropped, with a warning).
    extend_fields: tuple[ExtendField, ...] = ("prompt", "negative_prompt", "cfg_scale")
    extend_v1_5: bool = True
    task_lookup: TaskLookup = "external_id"
    #: Whether the provider answers GET /account/costs with Kling's resource packs.
    account_costs: bool = True
    #: Tasks in flight at once when nothing else is known (accounts differ: 3-10 is common).
    concurrency: int = 5
    #: What one unit costs, if you want plans and confirmations in money (your contract's price).
    unit_price: float | None = None
    currency: str = "USD"

    def client_config(
        self,
        *,
        base_url: str,
        access_key: str = "",
        secret_key: str = "",
        api_key: str = "",
        path_prefix: str | None = None,
        send_parent_task_id: bool | None = None,
        task_lookup: TaskLookup | None = None,
        time_scale: float = 1.0,
        offline: bool = False,
        name: str | None = None,
    ) -> ProviderConfig:
        """The client's settings for this provider: the one translation from a profile
        (the keywords are the environment's or the command line's overrides)."""
        return ProviderConfig(
            name=name or self.name,
            dialect="official" if self.auth == "jwt" else "proxy",
            base_url=base_url,
            path_prefix=self.path_prefix if path_prefix is None else path_prefix,
            access_key=SecretStr(access_key) if access_key else None,
            secret_key=SecretStr(secret_key) if secret_key else None,
            api_key=SecretStr(api_key) if api_key else None,
            send_parent_task_id=self.send_parent_task_id
            if send_parent_task_id is None
            else send_parent_task_id,
            task_lookup=task_lookup or self.task_lookup,
            account_costs=self.account_costs,
            concurrency=self.concurrency,
            offline=offline,
            time_scale=time_scale,
        )

    def simulator_config(self, base: SimConfig) -> SimConfig:
        """`base` changed so that the simulator behaves like this provider: the one
        translation to the simulator's settings (they share the names in SIMULATED)."""
        shared: dict[str, object] = {name: getattr(self, name) for name in SIMULATED}
        # the simulator always has its task list; "none" is a client-side choice
        shared["task_lookup"] = "external_id" if self.task_lookup == "external_id" else "list"
        return base.model_copy(update={"dialect": "official" if self.auth == "jwt" else "proxy", **shared})

    @classmethod
    def of_simulator(cls, config: SimConfig, *, name: str, base_url: str) -> Profile:
        """The profile a simulator with `config` presents, at `base_url`."""
        return cls(
            name=name,
            description="chainer's offline simulator",
            base_url=base_url,
            auth="jwt" if config.dialect == "official" else "bearer",
            account_costs=config.dialect == "official",
            concurrency=config.concurrency,
            **{name: getattr(config, name) for name in SIMULATED},
        )


#: The provider facts the simulator imitates, under the same names in Profile and SimConfig.
SIMULATED = ("path_prefix", "send_parent_task_id", "prompt_max_chars", "extend_v1_5", "task_lookup")


BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="kling",
            description="Kling's official API (JWT from access key + secret key)",
            base_url=OFFICIAL_BASE_URL,
            auth="jwt",
        ),
        Profile(
            name="cometapi",
            description="CometAPI: /kling prefix, parent task_id required, 500-character prompts",
            base_url="https://api.cometapi.com",
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            prompt_max_chars=500,
            task_lookup="list",
            account_costs=False,
        ),
        Profile(
            name="elkapi",
            description="ElkAPI: /kling prefix, parent task_id required, same account as the parent",
            base_url="https://api.elkapi.com",
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            task_lookup="list",
            account_costs=False,
        ),
        Profile(
            name="dmxapi",
            description="DMXAPI: /kling prefix, parent task_id required, no extending of kling-v1-5 videos",
            base_url="https://www.dmxapi.cn",
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            extend_v1_5=False,
            task_lookup="list",
            account_costs=False,
        ),
        Profile(
            name="proxy",
            description="a generic /kling proxy with a bearer key; every difference is a setting",
            base_url=None,
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            task_lookup="list",
            account_costs=False,
        ),
    )
}

DEFAULT_PROFILE = "kling"


def user_file(env: Mapping[str, str] | None = None) -> Path:
    """Where user profiles live: $CHAINER_PROVIDERS, else ~/.config/chainer/providers.toml."""
    env = os.environ if env is None else env
    if env.get("CHAINER_PROVIDERS"):
        return Path(env["CHAINER_PROVIDERS"])
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base, "chainer", "providers.toml")


def registry(path: Path | None = None) -> dict[str, Profile]:
    """Built-in profiles, overridden or extended by the user's file (if it exists).

    # providers.toml
    [providers.cometapi]      # change one setting of a built-in profile
    prompt_max_chars = 400
    [providers.myproxy]       # a new one (fields as in `chainer providers`)
    description = "our reseller"
    base_url = "https://kling.example"
    path_prefix = "/kling"
    auth = "bearer"
    send_parent_task_id = true
    task_lookup = "list"
    """
    path = path or user_file()
    try:
        seen = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return dict(BUILTIN)
    except OSError:
        return _read(path)  # says what is wrong with it
    key = (seen.st_mtime_ns, seen.st_size, seen.st_ino)
    cached = _READ.get(path)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    found = _read(path)
    _READ[path] = (key, found)
    return dict(found)


#: Each user file as last read, by (mtime, size, inode): a batch plans every storyboard
#: against the registry, and reads the file once.
_READ: dict[Path, tuple[tuple[int, int, int], dict[str, Profile]]] = {}


def _read(path: Path) -> dict[str, Profile]:
    found = dict(BUILTIN)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the provider profiles: {exc}") from exc
    table = data.get("providers", {})
    if not isinstance(table, dict) or set(data) - {"providers"}:
        raise ConfigError(f"{path}: expected only [providers.NAME] tables")
    for name, settings in table.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: [providers.{name}] must be a table of settings")
        base = found[name].model_dump() if name in found else {"description": f"user profile {name}"}
        try:
            found[name] = Profile.model_validate({**base, **settings, "name": name})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{path}: [providers.{name}]: {problems}") from exc
    return found


def get(name: str) -> Profile | None:
    """The profile called `name` (user profiles included)."""
    return registry().get(name)


def _time_scale(env: Mapping[str, str]) -> float:
    text = env.get("CHAINER_TIME_SCALE", "1").strip() or "1"
    try:
        value = float(text)
        if not 0 < value <= 10:
            raise ValueError(text)
    except ValueError:
        raise ConfigError(
            f"CHAINER_TIME_SCALE={text!r}: expected a number in (0, 10], the provider's task time as a "
            "fraction of Kling's (for simulators and rehearsals)"
        ) from None
    return value


def from_environment(
    env: Mapping[str, str] | None = None,
    *,
    profile: Profile | None = None,
    base_url: str | None = None,
    path_prefix: str | None = None,
) -> ProviderConfig | None:
    """The provider to call: `profile` (else the one the credentials imply) with the
    environment's credentials and overrides. None when no credentials are set, which
    means "use the offline simulator". Half-set or mismatched credentials are errors,
    never a silent fall-back to the simulator.
    """
    env = os.environ if env is None else env
    ak, sk, key = (env.get(n, "").strip() for n in ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"))
    if bool(ak) != bool(sk):
        missing = "KLING_SECRET_KEY" if ak else "KLING_ACCESS_KEY"
        raise ConfigError(
            f"{missing} is not set: the official API needs both the access key and the secret key"
        )
    if ak and key:
        raise ConfigError("both KLING_ACCESS_KEY/KLING_SECRET_KEY and KLING_API_KEY are set; keep only one")
    if not ak and not key:
        return None
    if profile is None:
        profile = BUILTIN["kling" if ak else "proxy"]
    if profile.auth == "jwt" and not ak:
        raise ConfigError(
            f"provider {profile.name!r} signs in with KLING_ACCESS_KEY and KLING_SECRET_KEY, "
            "but only KLING_API_KEY is set"
        )
    if profile.auth == "bearer" and not key:
        raise ConfigError(
            f"provider {profile.name!r} takes an API key in KLING_API_KEY, but only "
            "KLING_ACCESS_KEY/KLING_SECRET_KEY are set"
        )
    url = base_url or env.get("KLING_BASE_URL", "").strip() or profile.base_url
    if not url:
        raise ConfigError(f"provider {profile.name!r} has no base URL: set KLING_BASE_URL or --base-url")
    prefix = path_prefix if path_prefix is not None else env.get("KLING_PATH_PREFIX", profile.path_prefix)
    send_parent = profile.send_parent_task_id
    if "KLING_SEND_PARENT_TASK_ID" in env:
        send_parent = env["KLING_SEND_PARENT_TASK_ID"].strip().lower() not in ("0", "false", "no")
    lookup = env.get("KLING_TASK_LOOKUP", profile.task_lookup).strip()
    if lookup not in ("external_id", "list", "none"):
        raise ConfigError(f"KLING_TASK_LOOKUP={lookup!r}: expected external_id, list or none")
    return profile.client_config(
        base_url=url,
        access_key=ak,
        secret_key=sk,
        api_key=key,
        path_prefix=prefix,
        send_parent_task_id=send_parent,
        task_lookup=cast(TaskLookup, lookup),
        time_scale=_time_scale(env),
    )
