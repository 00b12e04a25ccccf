"""Building a step's create request, once the account's slot is the step's own.

Everything a create sends is made here from the plan's step and the journal: local
images as base64, a hand-off's start image from the archived last frame (made once per
take, so every resend carries the same image), an Omni-Video shot's reference url signed
afresh by the provider.
"""

from __future__ import annotations

import base64
import functools
from typing import Any, cast

import anyio

from .. import archive, errors, media, rules
from ..chain import StepRow
from ..plan import Step, StepRequest
from ..provider.wire import (
    CreateRequest,
    Image2VideoRequest,
    OmniImage,
    OmniVideo,
    OmniVideoRequest,
    Text2VideoRequest,
    VideoExtendRequest,
)
from ..retry import read_backoff, retrying
from . import assembly
from .context import READ_DEADLINE_S, ChainRun


def _wire(request: StepRequest) -> dict[str, Any]:
    """The wire's names for a step's request (kling-api.md): the one place they are spelled."""
    fields = {
        "model_name": request.model,
        "mode": request.mode,
        "duration": str(request.duration) if request.duration is not None else None,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "cfg_scale": request.cfg_scale,
        "aspect_ratio": request.aspect_ratio,
        "image": request.image,
        "image_tail": request.image_tail,
        "sound": request.sound,
    }
    return {k: v for k, v in fields.items() if v is not None}


async def build(run: ChainRun, step: Step, row: StepRow, parent: StepRow | None) -> CreateRequest:
    """The create request of `row`, a take of `step` after `parent`. The run's callback_url
    is added here, outside the step's fingerprint: a resume with another one (or none)
    sends the same step."""
    fields = _wire(step.request)
    if run.ctx.callbacks is not None:
        fields["callback_url"] = run.ctx.callbacks.url
    ext = row.external_task_id
    match step.kind:
        case "text2video":
            return Text2VideoRequest.model_validate({**fields, "external_task_id": ext})
        case "image2video" if step.handoff:
            assert parent is not None
            image = base64.b64encode(await handoff_image(run, step, row, parent)).decode()
            return Image2VideoRequest.model_validate({**fields, "external_task_id": ext, "image": image})
        case "image2video":
            for key in ("image", "image_tail"):
                if fields.get(key):
                    fields[key] = _image(run, fields[key])
            return Image2VideoRequest.model_validate({**fields, "external_task_id": ext})
        case "omni-video":
            assert parent is not None
            images = [OmniImage(image_url=_image(run, v)) for v in step.request.images or ()]
            video = OmniVideo(video_url=await reference_url(run, step, parent))
            return OmniVideoRequest.model_validate(
                {**fields, "external_task_id": ext, "video_list": [video], "image_list": images or None}
            )
        case "video-extend":
            assert parent is not None and parent.video_id is not None
            send_parent = run.ctx.client.config.send_parent_task_id
            return VideoExtendRequest.model_validate(
                {
                    **fields,
                    "video_id": parent.video_id,
                    "task_id": parent.task_id if send_parent else None,
                    "external_task_id": ext,
                }
            )
        case "existing":
            raise AssertionError("an existing video is never submitted")


def _image(run: ChainRun, value: str) -> str:
    """An image as Kling takes it: a URL as it is, a local file (relative to the
    storyboard) as raw base64."""
    if value.startswith(("http://", "https://")):
        return value
    return base64.b64encode((run.plan.storyboard.parent / value).read_bytes()).decode()


async def reference_url(run: ChainRun, step: Step, parent: StepRow) -> str:
    """A url Kling can fetch `parent`'s video from, for an Omni-Video shot.

    Asked of the provider again before every create rather than taken from the
    journal: signed urls expire (a resume may come days later), and Kling fetches the
    video after the create, from its queue, so the freshest url is the safest. One
    query per shot; the journal keeps the new url (downloads use it too).
    """
    client = run.ctx.client
    assert parent.task_id is not None and parent.kind != "existing"
    kind = cast(rules.TaskKind, parent.kind)
    try:
        task = await retrying(
            functools.partial(client.get_task, kind, parent.task_id),
            on=read_backoff,
            deadline_s=READ_DEADLINE_S,
            on_retry=run.on_retry(step.index, f"query of task {parent.task_id}"),
        )
    except errors.NotFound as exc:
        raise errors.ProviderError(
            f"step {step.index} of {run.name!r} references step {parent.idx}'s video by its url, "
            f"but {client.config.name} no longer has task {parent.task_id} (Kling deletes videos "
            f"{rules.RETENTION_DAYS} days after creation). An Omni-Video shot cannot be made from "
            f"the archived copy ({parent.file or 'missing'}): Kling takes the reference as a url",
            request_id=exc.request_id,
        ) from exc
    video = task.video
    if video is None or video.id != parent.video_id:
        raise errors.ProtocolError(
            f"task {parent.task_id} no longer offers video {parent.video_id} "
            f"({'no video' if video is None else 'it offers ' + video.id}); cannot reference it"
        )
    if video.url != parent.video_url:
        run.journal.refresh_url(parent, video.url)
    return video.url


async def handoff_image(run: ChainRun, step: Step, row: StepRow, parent: StepRow) -> bytes:
    """The start image of a hand-off: the last frame of `parent`'s video, archived once
    per take, so that every resend of the create carries the same image."""
    path = run.folder / archive.handoff_name(step.index, row.attempt)
    if not path.is_file():
        video = assembly.part_file(run, parent)
        data = await anyio.to_thread.run_sync(
            functools.partial(media.handoff_image, video, min_side=rules.IMAGE_MIN_SIDE)
        )
        archive.write_atomically(path, data)
    return path.read_bytes()
