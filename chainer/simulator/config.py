"""How a simulator behaves: its one settings model, kept apart from the server.

`chainer run` builds a `SimConfig` on every start (for the embedded simulator it may
need); importing it must not import the server, its renderer or Pillow.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import rules


class SimConfig(BaseModel):
    """How the simulated Kling behaves (`chainer sim` has a flag for most; --config takes all)."""

    model_config = ConfigDict(extra="forbid")

    dialect: str = Field("official", pattern="^(official|proxy)$")
    access_key: str = "sim-access-key"
    secret_key: str = "sim-secret-key-0123456789abcdef0123"
    api_key: str = "sim-api-key"
    path_prefix: str = ""
    #: Like the proxies: video-extend must send the parent task id next to video_id.
    send_parent_task_id: bool = False
    prompt_max_chars: int = rules.PROMPT_MAX_CHARS
    #: "list": like some proxies, no lookup by external_task_id (the query parameter is
    #: ignored, the list is returned) and external_task_id is not echoed in task objects.
    task_lookup: Literal["external_id", "list"] = "external_id"
    #: Task kinds whose list endpoint this provider lacks (answered 404, code 1203), as a
    #: proxy without the omni-video list.
    unlisted_kinds: list[str] = Field(default_factory=list)
    #: True: like a proxy that accepts external_task_id and throws it away: never stored, so
    #: never echoed, never found (lookups answer 1203) and never refused as a duplicate.
    ignore_external_task_id: bool = False
    #: False: like some proxies, video-extend refuses kling-v1-5 videos.
    extend_v1_5: bool = True
    #: 1.0 is real time (minutes per task); tests use 0.001 or less.
    time_scale: float = 1.0
    concurrency: int = 5
    width: int = 640
    height: int = 360
    fps: int = 24
    seed: int = 0
    url_ttl_s: float = 3600.0
    #: Tasks whose prompt contains this text end `failed` with a content-safety message.
    fail_marker: str = "[sim:fail]"
    render_workers: int = 2
    # ---- faults on demand (seeded by `seed`)
    #: Fraction of accepted creates whose answer is lost (a 502 from a "gateway") although
    #: the task was created, as when a response dies on the way back.
    lose_create_rate: float = Field(0.0, ge=0.0, le=1.0)
    #: Callbacks as a real network delivers them (seeded): this fraction never sent, this
    #: fraction sent twice, and each one held back up to this long (so they also overtake
    #: one another: a task's "succeed" may arrive before its "processing").
    callback_drop_rate: float = Field(0.0, ge=0.0, le=1.0)
    callback_duplicate_rate: float = Field(0.0, ge=0.0, le=1.0)
    callback_delay_s: float = Field(0.0, ge=0.0)
    #: Fraction of API requests answered 500 / code 5000 before anything is done.
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    #: Fraction of downloads cut off half-way (the connection drops after Content-Length was sent).
    truncate_download_rate: float = Field(0.0, ge=0.0, le=1.0)
    #: Downloads are served at most this fast (bytes per second; 0: unlimited).
    download_bytes_per_s: float = Field(0.0, ge=0.0)
    #: Extra delay before answering, per endpoint: "create", "query", "download" (seconds).
    latency_s: dict[str, float] = Field(default_factory=dict)
    # ---- account limits
    #: API requests per second allowed (None: no limit); over it: 429, code 1302, Retry-After.
    rate_limit_per_s: float | None = Field(None, gt=0)
    #: Units the resource pack holds (None: unlimited); a create that would pass it: 429, code 1102.
    unit_budget: float | None = Field(None, ge=0)
    #: The pack GET /account/costs shows: bought this many days before the simulator started,
    #: valid for this many days from then (its expiry follows the simulated clock).
    pack_age_days: float = Field(1.0, ge=0)
    pack_valid_days: float = Field(365.0, gt=0)
