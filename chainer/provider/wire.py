"""Pydantic models of Kling's wire format: request bodies, the response envelope, tasks.

Responses are parsed leniently (unknown fields kept, so a provider adding fields breaks
nothing); requests are strict (a typo in chainer's own code fails loudly, at once).
Durations are strings on the wire (they can be fractional, e.g. "5.1"); `seconds`
properties give them as floats.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..rules import TaskStatus


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        """The JSON body as sent: unset fields are left out, not sent as null."""
        return self.model_dump(exclude_none=True, mode="json")


class Envelope(_Response):
    """`{code, message, request_id, data}`, around every answer of the API."""

    code: int
    message: str = ""
    request_id: str | None = None
    data: Any = None


class Video(_Response):
    id: str
    url: str
    duration: str
    watermark_url: str | None = None

    @property
    def seconds(self) -> float:
        return float(self.duration)


class ParentVideo(_Response):
    id: str
    url: str | None = None
    duration: str | None = None


class TaskInfo(_Response):
    external_task_id: str | None = None
    parent_video: ParentVideo | None = None


class TaskResult(_Response):
    videos: list[Video] = Field(default_factory=list)


class Task(_Response):
    """One task as the query endpoints (and the create endpoints, partially) return it."""

    task_id: str
    task_status: TaskStatus
    task_status_msg: str = ""
    task_info: TaskInfo = Field(default_factory=TaskInfo)
    task_result: TaskResult | None = None
    created_at: int | None = None
    updated_at: int | None = None
    final_unit_deduction: str | None = None

    @property
    def video(self) -> Video | None:
        """The first result video, present once the task has succeeded."""
        if self.task_result and self.task_result.videos:
            return self.task_result.videos[0]
        return None

    @property
    def units(self) -> float | None:
        try:
            return float(self.final_unit_deduction) if self.final_unit_deduction else None
        except ValueError:
            return None


class ResourcePack(_Response):
    """One resource pack of the account (GET /account/costs, kling-api.md §10); times in ms."""

    resource_pack_name: str = ""
    resource_pack_id: str = ""
    resource_pack_type: str = ""
    total_quantity: float = 0.0
    remaining_quantity: float = 0.0
    purchase_time: int | None = None
    effective_time: int | None = None
    invalid_time: int | None = None
    #: online, runout or expired (kept as a string: an unknown one is simply not spendable)
    status: str = ""

    @property
    def spendable(self) -> bool:
        """Whether units can still be spent from this pack (online, some left)."""
        return self.status == "online" and self.remaining_quantity > 0

    @property
    def for_video(self) -> bool:
        """Whether the pack pays for video tasks (packs are per type; an untyped one counts)."""
        return not self.resource_pack_type or "video" in self.resource_pack_type.lower()


class AccountCosts(_Response):
    """The `data` of GET /account/costs."""

    resource_pack_subscribe_infos: list[ResourcePack] = Field(default_factory=list)


class WatermarkInfo(_Request):
    enabled: bool


class Text2VideoRequest(_Request):
    model_name: str | None = None
    prompt: str
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    mode: Literal["std", "pro"] | None = None
    aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None
    duration: Literal["5", "10"] | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    watermark_info: WatermarkInfo | None = None


class Image2VideoRequest(_Request):
    model_name: str | None = None
    image: str | None = None
    image_tail: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    mode: Literal["std", "pro"] | None = None
    duration: Literal["5", "10"] | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    watermark_info: WatermarkInfo | None = None


class VideoExtendRequest(_Request):
    video_id: str
    #: Not an official field: several proxies require the parent task's id (kling-api.md §1.2).
    task_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    watermark_info: WatermarkInfo | None = None


class OmniVideo(_Request):
    """The one reference video of an omni-video task (kling-api.md §9)."""

    video_url: str
    #: feature: a reference for the next shot (style, camera, subject); base: edit this video.
    refer_type: Literal["feature", "base"] = "feature"
    keep_original_sound: Literal["yes", "no"] = "no"


class OmniImage(_Request):
    #: A URL, or raw base64 like image2video's `image` (the sources do not say which; both are sent as is).
    image_url: str
    type: Literal["first_frame", "end_frame"] | None = None


class OmniVideoRequest(_Request):
    """`POST /v1/videos/omni-video`: a new shot, here always from the previous shot as a
    `feature` reference. The prompt names its inputs (<<<video_1>>>, <<<image_1>>>)."""

    model_name: str
    prompt: str
    video_list: list[OmniVideo] | None = Field(default=None, max_length=1)
    image_list: list[OmniImage] | None = None
    duration: str | None = None
    mode: Literal["std", "pro"] | None = None
    aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None
    #: Must be "off" when a video is given (kling-api.md §9).
    sound: Literal["on", "off"] | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    watermark_info: WatermarkInfo | None = None


CreateRequest = Text2VideoRequest | Image2VideoRequest | VideoExtendRequest | OmniVideoRequest
