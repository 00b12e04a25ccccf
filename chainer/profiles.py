"""Provider profiles: what differs between Kling and the proxies people use, as data.

Each profile is a small declarative description (kling-api.md §1.2 and §7 give the
facts). Validation applies a profile's limits before anything is sent; nothing else in
chainer needs to know which provider is which.

Where the public docs say nothing, the setting errs on the side of never paying twice:
proxies are assumed not to answer lookups by external_task_id (a lost create is then
reconciled from the task list, or the user is asked).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from . import rules
from .provider.config import OFFICIAL_BASE_URL, TaskLookup

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
    #: Tasks in flight at once when nothing else is known (accounts differ: 3-10 is common).
    concurrency: int = 5


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
        ),
        Profile(
            name="elkapi",
            description="ElkAPI: /kling prefix, parent task_id required, same account as the parent",
            base_url="https://api.elkapi.com",
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            task_lookup="list",
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
        ),
        Profile(
            name="proxy",
            description="a generic /kling proxy with a bearer key; every difference is a setting",
            base_url=None,
            path_prefix="/kling",
            auth="bearer",
            send_parent_task_id=True,
            task_lookup="list",
        ),
    )
}

DEFAULT_PROFILE = "kling"


def get(name: str) -> Profile | None:
    return BUILTIN.get(name)
