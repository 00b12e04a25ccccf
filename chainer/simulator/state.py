"""The simulator's Kling: accounts' tasks and videos, validated and timed as Kling does.

This module is an independent implementation of the spec (shared/kling-api.md). It shares
only `chainer.rules` (the facts) and `chainer.media` (ffmpeg) with chainer, never the
client or its wire models, so a misreading of the protocol in one cannot hide in the other.
Task status is computed from the clock whenever a task is looked at: submitted until its
queue time passes, processing until its generation time passes and its file is rendered,
then succeed (or failed, for the prompts the fault settings mark).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .. import media, rules
from .config import SimConfig
from .renders import RenderClock
from .video import Canvas, Scene, render

#: The host name a simulator served in-process answers to (its own urls name it).
IN_PROCESS_HOST = "simulator.in-process"


class SimError(Exception):
    """A refusal, answered with the documented HTTP status for `code`."""

    def __init__(self, code: int, message: str, *, retry_after: float | None = None):
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.http_status = rules.ERROR_CODES[code].http_status
        super().__init__(f"{code}: {message}")


@dataclass
class SimVideo:
    video_id: str
    task_id: str
    path: Path
    frames: int
    fps: int
    model: str
    mode: str
    created_ms: int
    scene: Scene
    #: Where in its scene's time the video starts (frames): not 0 for an Omni-Video shot.
    start_frame: int = 0

    @property
    def duration(self) -> str:
        seconds = self.frames / self.fps
        return f"{seconds:.3f}".rstrip("0").rstrip(".")


@dataclass
class SimTask:
    task_id: str
    kind: str
    body: dict[str, Any]
    model: str
    mode: str
    external_task_id: str | None
    created_ms: int
    start_ms: int
    done_ms: int
    video_id: str
    frames: int
    fail_reason: str | None
    parent: SimVideo | None
    render: Future[None] | None = None
    #: The video an omni-video task was given as its `feature` reference.
    reference: SimVideo | None = None
    updated_ms: int = 0
    watermark: bool = False
    callback_url: str | None = None
    #: The status last announced to callback_url (not persisted: a restart re-announces).
    notified: str | None = None
    #: For measuring clients (not persisted): when the video was rendered, how often the
    #: task was queried, and when a query first answered `succeed`.
    rendered_ms: int | None = None
    queries: int = 0
    #: How often the task was on a list page a client asked for (a look, not a query by id).
    listed: int = 0
    succeed_seen_ms: int | None = None

    @property
    def ready_ms(self) -> int | None:
        """When the task first could answer `succeed`: done by the clock and rendered."""
        return max(self.done_ms, self.rendered_ms) if self.rendered_ms is not None else None


@dataclass
class CreateRecord:
    """One accepted create, as the admin API reports it (what tests count)."""

    task_id: str
    kind: str
    body: dict[str, Any]
    at_ms: int


@dataclass
class SimState:
    """All of one simulated account's state, guarded by one lock."""

    config: SimConfig
    data_dir: Path
    clock_offset_s: float = 0.0
    tasks: dict[str, SimTask] = field(default_factory=dict)
    videos: dict[str, SimVideo] = field(default_factory=dict)
    creates: list[CreateRecord] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    peak_concurrency: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        #: Tasks by external_task_id, and the in-flight count's parts (see in_flight): an
        #: account with ten thousand tasks answers a create without looking at each.
        self._by_external: dict[str, SimTask] = {}
        self._ending: list[tuple[int, str]] = []
        self._finishing: set[str] = set()
        self.rng = random.Random(self.config.seed)
        self.fault_rng = random.Random(self.config.seed + 1)
        self.callback_rng = random.Random(self.config.seed + 2)
        #: Tasks with a callback_url whose end is not announced yet (the sender's work list).
        self._announcing: dict[str, SimTask] = {}
        #: Callbacks due later (send time, order, url, body): the delayed ones.
        self._held_callbacks: list[tuple[float, int, str, dict[str, Any]]] = []
        self._callback_seq = itertools.count()
        #: Callbacks to post, by task, each task's in order; a task is in `_posting` while
        #: one sender drains its queue (so one task's callbacks never overtake each other).
        self._outbox: dict[str, deque[tuple[str, dict[str, Any]]]] = {}
        self._posting: set[str] = set()
        self._outbox_lock = threading.Lock()
        # a bucket of one second's requests (at least one), full at start
        self._capacity = max(1.0, float(self.config.rate_limit_per_s or 0.0))
        self._tokens = self._capacity
        self._token_at = time.monotonic()
        self.url_key = hashlib.sha256(f"url-{self.config.seed}-{uuid.uuid4()}".encode()).digest()
        self.pool = ThreadPoolExecutor(
            max_workers=self.config.render_workers, thread_name_prefix="sim-render"
        )
        self.renders = RenderClock(self.now_ms)
        (self.data_dir / "videos").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "images").mkdir(exist_ok=True)
        self._next_id = int(time.time() * 1000) * 1000 + self.rng.randrange(1000)
        #: When this account began (its pack's dates count from it); kept across restarts.
        self.started_ms = int(time.time() * 1000)
        self._log_path = self.data_dir / "state.jsonl"
        self._replay()
        self._log = self._log_path.open("a", encoding="utf-8")
        if self._log_path.stat().st_size == 0:
            self._record({"e": "meta", "url_key": self.url_key.hex(), "started_ms": self.started_ms})

    def fault(self, rate: float) -> bool:
        """A seeded coin flip: True with probability `rate`."""
        if rate <= 0:
            return False
        with self.lock:
            return self.fault_rng.random() < rate

    def close(self) -> None:
        self.renders.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            self._log.close()

    # ------------------------------------------------------------------ persistence
    # The state survives a restart as an append-only log of events, one JSON object per
    # line, replayed at start. A task whose video was not rendered yet is rendered again.

    def _record(self, event: dict[str, Any]) -> None:
        self._log.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._log.flush()

    def _replay(self) -> None:
        if not self._log_path.exists():
            return
        pending: list[tuple[SimTask, dict[str, Any]]] = []
        for line in self._log_path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash: everything before it stands
            match event.pop("e", None):
                case "meta":
                    self.url_key = bytes.fromhex(event["url_key"])
                    self.started_ms = int(event.get("started_ms", self.started_ms))
                case "clock":
                    self.clock_offset_s = float(event["offset"])
                case "task":
                    scene = event.pop("scene")
                    parent = self.videos.get(event.pop("parent_video_id") or "")
                    reference = self.videos.get(event.pop("reference_video_id", None) or "")
                    task = SimTask(**event, parent=parent, reference=reference)
                    self._admit(task)
                    if task.callback_url is not None:  # a restart announces again
                        self._announcing[task.task_id] = task
                    self.creates.append(CreateRecord(task.task_id, task.kind, task.body, task.created_ms))
                    self._next_id = max(self._next_id, int(task.task_id))
                    pending.append((task, scene))
                case "video":
                    scene = self._scene_from(event.pop("scene"))
                    video = SimVideo(**{**event, "path": Path(event["path"]), "scene": scene})
                    self.videos[video.video_id] = video
        for task, scene in pending:
            if task.fail_reason is None and task.video_id not in self.videos:
                prompt = str(task.body.get("prompt") or "")
                self._schedule_render(task, self._scene_from(scene), self._added(task), prompt)
            else:
                task.render = _done()

    def _scene_to(self, scene: Scene) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": scene.seed}
        if scene.image is not None:
            digest = hashlib.sha256(scene.image).hexdigest()
            path = self.data_dir / "images" / digest
            if not path.exists():
                path.write_bytes(scene.image)
            out["image"] = digest
        return out

    def _scene_from(self, data: dict[str, Any]) -> Scene:
        image = (self.data_dir / "images" / data["image"]).read_bytes() if data.get("image") else None
        return Scene(seed=int(data.get("seed", 0)), image=image)

    # ------------------------------------------------------------------ clock

    def now_ms(self) -> int:
        return int((time.time() + self.clock_offset_s) * 1000)

    def advance(self, seconds: float) -> None:
        """Move the simulated wall clock forward (retention and url expiry follow it)."""
        with self.lock:
            self.clock_offset_s += seconds
            self._record({"e": "clock", "offset": self.clock_offset_s})
        self.renders.kick()

    def finish_now(self, task_id: str) -> None:
        """End `task_id` now, for tests that must not sleep: the clock moves to the task's
        end (when it is not there yet) and its video's rendering is waited for, so the next
        query answers succeed or failed."""
        with self.lock:
            task = self.tasks[task_id]
            ahead_s = (task.done_ms - self.now_ms()) / 1000
        if ahead_s > 0:
            self.advance(ahead_s + 0.001)
        self.renders.launch_now(task_id)
        if task.render is not None:
            task.render.result()

    # ------------------------------------------------------------------ status

    def status(self, task: SimTask) -> str:
        now = self.now_ms()
        if now < task.start_ms:
            return "submitted"
        if now < task.done_ms:
            return "processing"
        if task.fail_reason is not None:
            return "failed"
        if task.render is None or not task.render.done():
            return "processing"
        if task.render.exception() is not None:
            task.fail_reason = f"internal error while rendering: {task.render.exception()}"
            return "failed"
        return "succeed"

    def observed(self, task: SimTask) -> None:
        """Count a query of `task` by its id (what the benchmarks measure clients by)."""
        with self.lock:
            task.queries += 1
            if task.succeed_seen_ms is None and self.status(task) == "succeed":
                task.succeed_seen_ms = self.now_ms()

    def listed_on_page(self, tasks: list[SimTask]) -> None:
        """Count that `tasks` were shown on a list page."""
        with self.lock:
            for task in tasks:
                task.listed += 1

    @staticmethod
    def _added(task: SimTask) -> int:
        """Frames the task generates (an extension's video also holds its parent's)."""
        return task.frames - (task.parent.frames if task.parent else 0)

    def units(self, task: SimTask) -> float:
        """What the task costs (Kling's price list is not public: chainer's estimate)."""
        return rules.task_units(task.kind, task.mode, self._added(task) / self.config.fps)

    def units_committed(self) -> float:
        """Units of every task that has not failed: what the resource pack has paid for."""
        return sum(self.units(t) for t in self.tasks.values() if t.fail_reason is None)

    #: The pack shown when no unit_budget is set (the simulator then never answers 1102).
    UNLIMITED_PACK_UNITS = 100_000.0

    def packs(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """The account's resource packs bought in [start_ms, end_ms], as GET /account/costs
        lists them (kling-api.md §10): one video pack holding the unit budget."""
        with self.lock:
            bought = self.started_ms - int(self.config.pack_age_days * 86_400_000)
            invalid = bought + int(self.config.pack_valid_days * 86_400_000)
            total = (
                self.config.unit_budget if self.config.unit_budget is not None else self.UNLIMITED_PACK_UNITS
            )
            left = max(0.0, total - self.units_committed())
            now = self.now_ms()
            status = "expired" if now >= invalid else "runout" if left <= 0 else "online"
            pack = {
                "resource_pack_name": "Simulated video pack",
                "resource_pack_id": "sim-pack-1",
                "resource_pack_type": "video",
                "total_quantity": total,
                "remaining_quantity": left,
                "purchase_time": bought,
                "effective_time": bought,
                "invalid_time": invalid,
                "status": status,
            }
            return [pack] if start_ms <= bought <= end_ms else []

    def take_token(self) -> float | None:
        """Rate limiting: None if the request may go on, else the seconds to wait."""
        rate = self.config.rate_limit_per_s
        if rate is None:
            return None
        with self.lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._token_at) * rate)
            self._token_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) / rate

    def due_callbacks(self, base_url: str) -> list[tuple[str, dict[str, Any]]]:
        """(url, body) for every task whose status changed since its callback was last sent."""
        due = []
        with self.lock:
            for task in list(self._announcing.values()):
                assert task.callback_url is not None
                status = self.status(task)
                if status in ("succeed", "failed"):
                    del self._announcing[task.task_id]  # announced below, for the last time
                if status == task.notified:
                    continue
                # Every change is announced, also the ones a fast task passed between two ticks.
                unfinished = ["submitted", "processing"]
                path = (
                    unfinished[: unfinished.index(status) + 1]
                    if status in unfinished
                    else [*unfinished, status]
                )
                start = path.index(task.notified) + 1 if task.notified in path else 0
                current = self.task_json(task, base_url)
                for passed in path[start:]:
                    body = current if passed == status else _as_status(current, passed)
                    due.append((task.callback_url, body))
                task.notified = status
        return due

    def _deliverable(self, base_url: str) -> list[tuple[str, dict[str, Any]]]:
        """The callbacks to POST now, after the network faults the config asks for."""
        cfg, rng, now = self.config, self.callback_rng, time.monotonic()
        with self.lock:
            for url, body in self.due_callbacks(base_url):
                if rng.random() < cfg.callback_drop_rate:
                    self.requests[f"CALLBACK {body['task_status']} dropped"] += 1
                    continue
                copies = 2 if rng.random() < cfg.callback_duplicate_rate else 1
                for _ in range(copies):
                    at = now + rng.uniform(0.0, cfg.callback_delay_s)
                    heapq.heappush(self._held_callbacks, (at, next(self._callback_seq), url, body))
            ready = []
            while self._held_callbacks and self._held_callbacks[0][0] <= now:
                _, _, url, body = heapq.heappop(self._held_callbacks)
                ready.append((url, body))
        return ready

    def send_callbacks(
        self, base_url: str, http: httpx.Client | None = None, pool: ThreadPoolExecutor | None = None
    ) -> None:
        """POST the flat task object (no envelope, as Kling does) to each due callback_url;
        through `pool`, several tasks' at once (as a provider's fleet does: one slow receiver
        answer does not hold back the other tasks' callbacks), each task's in order."""
        ready = self._deliverable(base_url)
        if pool is None:
            for url, body in ready:
                self._post_callback(url, body, http)
            return
        starting = []
        with self._outbox_lock:
            for url, body in ready:
                key = str(body.get("task_id"))
                self._outbox.setdefault(key, deque()).append((url, body))
                if key not in self._posting:
                    self._posting.add(key)
                    starting.append(key)
        for key in starting:
            pool.submit(self._drain, key, http)

    def _drain(self, key: str, http: httpx.Client | None) -> None:
        """Post task `key`'s queued callbacks one after the other, until none is left."""
        while True:
            with self._outbox_lock:
                queue = self._outbox.get(key)
                if not queue:
                    self._outbox.pop(key, None)
                    self._posting.discard(key)
                    return
                url, body = queue.popleft()
            self._post_callback(url, body, http)

    def _post_callback(self, url: str, body: dict[str, Any], http: httpx.Client | None) -> None:
        if httpx.URL(url).host not in ("127.0.0.1", "localhost", "::1"):
            outcome = "refused: not loopback"
        else:
            try:
                post = http.post if http is not None else httpx.post
                outcome = str(post(url, json=body, timeout=5.0).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
        with self.lock:
            self.requests[f"CALLBACK {body['task_status']} {outcome}"] += 1

    def _admit(self, task: SimTask) -> None:
        """Keep `task` (a create's, or one replayed from the log)."""
        self.tasks[task.task_id] = task
        if task.external_task_id is not None:
            self._by_external.setdefault(task.external_task_id, task)
        heapq.heappush(self._ending, (task.done_ms, task.task_id))

    def in_flight(self) -> int:
        """Tasks submitted or processing: those before their end, plus those past it whose
        video is still rendering (each task leaves the count once, so this stays cheap)."""
        now = self.now_ms()
        while self._ending and self._ending[0][0] <= now:
            self._finishing.add(heapq.heappop(self._ending)[1])
        self._finishing = {
            t for t in self._finishing if self.status(self.tasks[t]) in ("submitted", "processing")
        }
        return len(self._ending) + len(self._finishing)

    def expired(self, created_ms: int) -> bool:
        return self.now_ms() > created_ms + rules.RETENTION_DAYS * 86_400_000

    # ------------------------------------------------------------------ creates

    def create(self, kind: str, body: dict[str, Any], *, hold_render_ms: int = 0) -> SimTask:
        """Validate and accept a create, or raise the SimError Kling would answer. A render
        due at once is held back up to `hold_render_ms`, until `renders.release` starts it."""
        with self.lock:
            if not isinstance(body, dict):
                raise SimError(1200, "request body must be a JSON object")
            ext = None if self.config.ignore_external_task_id else _opt_str(body, "external_task_id")
            if ext is not None and ext in self._by_external:
                raise SimError(1201, f"external_task_id {ext!r} already exists")
            parent: SimVideo | None = None
            reference: SimVideo | None = None
            image: bytes | None = None
            if kind == "text2video":
                model, mode, frames = self._validate_t2v(body)
            elif kind == "image2video":
                model, mode, frames, image = self._validate_i2v(body)
            elif kind == "omni-video":
                model, mode, frames, reference = self._validate_omni(body)
            else:
                parent = self._validate_extend(body)
                model, mode = parent.model, parent.mode
                room = int(rules.MAX_TOTAL_SECONDS * self.config.fps) - parent.frames
                lo, hi = (
                    int(rules.EXTEND_MIN_SECONDS * self.config.fps),
                    int(rules.EXTEND_MAX_SECONDS * self.config.fps),
                )
                frames = self.rng.randint(lo, min(hi, room))
            in_flight = self.in_flight()
            if in_flight >= self.config.concurrency:
                raise SimError(1303, "parallel task over resource pack limit")
            if self.config.unit_budget is not None:
                cost = rules.task_units(kind, mode, frames / self.config.fps)
                if self.units_committed() + cost > self.config.unit_budget + 1e-9:
                    raise SimError(1102, "resource pack used up or expired")
            watermark = _watermark_wanted(body)
            callback = _opt_str(body, "callback_url")
            now = self.now_ms()
            self._next_id += self.rng.randrange(1, 997)
            task_id = str(self._next_id)
            queue_s, gen_s = self._timing(kind, mode, frames)
            prompt = str(body.get("prompt") or "")
            task = SimTask(
                task_id=task_id,
                kind=kind,
                body=body,
                model=model,
                mode=mode,
                external_task_id=ext,
                created_ms=now,
                start_ms=now + int(queue_s * 1000),
                done_ms=now + int((queue_s + gen_s) * 1000),
                video_id=str(uuid.uuid4()),
                frames=frames + (parent.frames if parent else 0),
                fail_reason=(
                    "content-safety policy triggered: the generated video was blocked"
                    if self.config.fail_marker and self.config.fail_marker in prompt
                    else None
                ),
                parent=parent,
                reference=reference,
                updated_ms=now,
                watermark=watermark,
                callback_url=callback,
            )
            known = parent or reference
            scene = known.scene if known else Scene(seed=self.rng.randrange(1 << 30), image=image)
            self._record(
                {
                    "e": "task",
                    **{k: getattr(task, k) for k in _LOGGED_TASK_FIELDS},
                    "scene": self._scene_to(scene),
                    "parent_video_id": parent.video_id if parent else None,
                    "reference_video_id": reference.video_id if reference else None,
                }
            )
            if task.fail_reason is None:
                self._schedule_render(task, scene, frames, prompt, hold_ms=hold_render_ms)
            else:
                task.render = _done()
            self._admit(task)
            if task.callback_url is not None:
                self._announcing[task_id] = task
            self.creates.append(CreateRecord(task_id, kind, dict(body), now))
            self.peak_concurrency = max(self.peak_concurrency, in_flight + 1)
            return task

    def _timing(self, kind: str, mode: str, frames: int) -> tuple[float, float]:
        """Queue and generation seconds: log-normal around Kling's usual minutes, scaled."""
        median = rules.EXPECTED_SECONDS.get(kind, 90.0) * (1.4 if mode == "pro" else 1.0)
        if kind != "video-extend" and frames > 6 * self.config.fps:
            median *= 1.8
        gen = median * self.rng.lognormvariate(0.0, 0.25)
        queue = self.rng.uniform(1.0, 6.0)
        return queue * self.config.time_scale, gen * self.config.time_scale

    def _schedule_render(
        self, task: SimTask, scene: Scene, frames: int, prompt: str, *, hold_ms: int = 0
    ) -> None:
        """Render `task`'s video shortly before its end (see `renders`)."""

        def launch() -> None:
            task.render = self.pool.submit(self._render, task, scene, frames, prompt)

        self.renders.schedule(task.task_id, task.done_ms, launch, hold_ms=hold_ms)

    def _render(self, task: SimTask, scene: Scene, frames: int, prompt: str) -> None:
        path = self.data_dir / "videos" / f"{task.video_id}.mp4"
        segment = 0
        source = task.parent or task.reference
        while source is not None:  # the segment number is how many ancestors it has
            segment += 1
            src = self.tasks.get(source.task_id)
            source = (src.parent or src.reference) if src else None
        start_frame = task.reference.start_frame + task.reference.frames if task.reference else 0
        render(
            path,
            scene=scene,
            canvas=Canvas(self.config.width, self.config.height, self.config.fps),
            frames=frames,
            segment=segment,
            prompt=prompt or f"({task.kind})",
            parent=task.parent.path if task.parent else None,
            parent_frames=task.parent.frames if task.parent else 0,
            start_frame=start_frame,
        )
        if task.watermark:
            media.watermark(path, path.with_name(f"{task.video_id}_wm.mp4"))
        with self.lock:
            task.rendered_ms = self.now_ms()
            video = self.videos[task.video_id] = SimVideo(
                video_id=task.video_id,
                task_id=task.task_id,
                path=path,
                frames=task.frames,
                fps=self.config.fps,
                model=task.model,
                mode=task.mode,
                created_ms=task.created_ms,
                scene=scene,
                start_frame=start_frame,
            )
            if not self._log.closed:
                self._record(
                    {
                        "e": "video",
                        **{k: getattr(video, k) for k in _LOGGED_VIDEO_FIELDS},
                        "path": str(video.path),
                        "scene": self._scene_to(scene),
                    }
                )

    # ------------------------------------------------------------------ validation

    def _prompt(self, body: dict[str, Any], *, required: bool) -> None:
        for name in ("prompt", "negative_prompt"):
            value = body.get(name)
            if value is None:
                if name == "prompt" and required:
                    raise SimError(1201, "prompt is required")
                continue
            if not isinstance(value, str):
                raise SimError(1201, f"{name} must be a string")
            if len(value) > self.config.prompt_max_chars:
                raise SimError(1201, f"{name} is longer than {self.config.prompt_max_chars} characters")
        cfg = body.get("cfg_scale")
        if cfg is not None and (
            not isinstance(cfg, int | float) or isinstance(cfg, bool) or not 0.0 <= cfg <= 1.0
        ):
            raise SimError(1201, "cfg_scale must be a number in [0, 1]")

    def _model_mode(self, body: dict[str, Any], allowed: tuple[str, ...]) -> tuple[str, str]:
        # The legacy field `model` is accepted but behaves as if model_name were empty.
        model = body.get("model_name") or rules.DEFAULT_MODEL
        if model not in allowed:
            raise SimError(1201, f"model_name {model!r} is not supported here")
        mode = body.get("mode") or "std"
        if mode not in rules.MODES:
            raise SimError(1201, f"mode must be one of {', '.join(rules.MODES)}")
        return str(model), str(mode)

    def _duration_frames(self, body: dict[str, Any]) -> int:
        duration = body.get("duration", "5")
        if duration not in ("5", "10"):
            raise SimError(1201, 'duration must be the string "5" or "10"')
        return int(duration) * self.config.fps

    def _validate_t2v(self, body: dict[str, Any]) -> tuple[str, str, int]:
        self._prompt(body, required=True)
        model, mode = self._model_mode(body, rules.TEXT2VIDEO_MODELS)
        if body.get("aspect_ratio", "16:9") not in rules.ASPECT_RATIOS:
            raise SimError(1201, f"aspect_ratio must be one of {', '.join(rules.ASPECT_RATIOS)}")
        return model, mode, self._duration_frames(body)

    def _validate_i2v(self, body: dict[str, Any]) -> tuple[str, str, int, bytes]:
        self._prompt(body, required=False)
        model, mode = self._model_mode(body, rules.IMAGE2VIDEO_MODELS)
        image, tail = body.get("image"), body.get("image_tail")
        if not image and not tail:
            raise SimError(1201, "image or image_tail is required")
        first = _decode_image("image" if image else "image_tail", image or tail)
        if tail and image:
            _decode_image("image_tail", tail)
        frames = self._duration_frames(body)
        if tail and frames != 5 * self.config.fps:
            raise SimError(1201, 'duration must be "5" when image_tail is used')
        return model, mode, frames, first

    def _validate_extend(self, body: dict[str, Any]) -> SimVideo:
        self._prompt(body, required=False)
        video_id = body.get("video_id")
        if not isinstance(video_id, str) or not video_id:
            raise SimError(1201, "video_id is required")
        video = self.videos.get(video_id)
        if video is None or self.expired(video.created_ms):
            raise SimError(1203, f"video {video_id} not found (unknown, or deleted after 30 days)")
        if self.config.send_parent_task_id:
            parent_task = body.get("task_id")
            if not parent_task:
                raise SimError(1201, "task_id (of the task that produced video_id) is required")
            if parent_task != video.task_id:
                raise SimError(1201, f"task_id {parent_task} did not produce video {video_id}")
        refusal = _extend_refusal(video, not self.config.extend_v1_5)
        if refusal:
            raise SimError(1201, refusal)
        return video

    def _validate_omni(self, body: dict[str, Any]) -> tuple[str, str, int, SimVideo | None]:
        """omni-video (kling-api.md §9): (model, mode, frames, the reference video)."""
        self._prompt(body, required=True)
        for name in ("negative_prompt", "cfg_scale"):
            if name in body:
                raise SimError(1201, f"{name} is not a parameter of omni-video")
        if not body.get("model_name"):
            raise SimError(1201, f"model_name is required ({', '.join(rules.OMNI_MODELS)})")
        model, mode = self._model_mode(body, rules.OMNI_MODELS)
        if body.get("aspect_ratio") is not None and body["aspect_ratio"] not in rules.ASPECT_RATIOS:
            raise SimError(1201, f"aspect_ratio must be one of {', '.join(rules.ASPECT_RATIOS)}")
        videos = _list_of_objects(body, "video_list")
        images = _list_of_objects(body, "image_list")
        if len(videos) > rules.OMNI_MAX_VIDEOS:
            raise SimError(1201, f"video_list takes at most {rules.OMNI_MAX_VIDEOS} video")
        for n, item in enumerate(images):
            if item.get("type") not in (None, "first_frame", "end_frame"):
                raise SimError(1201, f"image_list[{n}].type must be first_frame or end_frame")
            _decode_image(f"image_list[{n}].image_url", item.get("image_url"))
        problem = rules.omni_placeholder_problem(str(body["prompt"]), videos=len(videos), images=len(images))
        if problem:
            raise SimError(1201, problem)
        sound = body.get("sound", "off")
        if sound not in ("on", "off"):
            raise SimError(1201, "sound must be on or off")
        if videos and sound != "off":
            raise SimError(1201, "sound must be off when a video is given")
        reference = None
        if videos:
            item = videos[0]
            if item.get("refer_type") not in ("feature", "base"):
                raise SimError(1201, "video_list[0].refer_type must be feature or base")
            if item.get("refer_type") == "base":
                raise SimError(1201, "refer_type base (editing the given video) is not simulated")
            if item.get("keep_original_sound", "no") not in ("yes", "no"):
                raise SimError(1201, "video_list[0].keep_original_sound must be yes or no")
            reference = self._reference(item.get("video_url"))
        duration = body.get("duration", str(rules.DEFAULT_OMNI_SECONDS))
        least, most = rules.OMNI_DURATION_RANGE
        if not isinstance(duration, str) or not duration.isdigit() or not least <= int(duration) <= most:
            raise SimError(1201, f'duration must be a whole number of seconds from "{least}" to "{most}"')
        return model, mode, int(duration) * self.config.fps, reference

    def _reference(self, url: Any) -> SimVideo:
        """The video a `video_url` names, fetched as Kling would fetch it: only a url this
        simulator signed, still valid, of a video not yet deleted (it has no others)."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SimError(1201, "video_list[0].video_url must be an http(s) URL")
        parsed = httpx.URL(url)
        name = parsed.path.removeprefix("/files/")
        if parsed.host not in ("127.0.0.1", "localhost", "::1", IN_PROCESS_HOST) or name == parsed.path:
            raise SimError(
                1201, "video_url: the offline simulator can reference only videos it made (its /files/ urls)"
            )
        try:
            return self.check_signature(name, parsed.params.get("expires", ""), parsed.params.get("sig", ""))
        except PermissionError as exc:
            raise SimError(1201, f"video_url could not be fetched: HTTP 403 ({exc})") from exc
        except FileNotFoundError as exc:
            raise SimError(1201, "video_url could not be fetched: HTTP 404") from exc

    # ------------------------------------------------------------------ reading

    def find(self, kind: str, key: str) -> SimTask:
        """A task of `kind` by task_id or external_task_id (Kling's path form takes both)."""
        with self.lock:
            task = self.tasks.get(key)
            if task is None and self.config.task_lookup == "external_id":
                task = self._by_external.get(key)
            if task is None or task.kind != kind or self.expired(task.created_ms):
                raise SimError(1203, f"task {key} not found")
            return task

    def page(self, kind: str, page: int, size: int) -> list[SimTask]:
        with self.lock:
            mine = [t for t in self.tasks.values() if t.kind == kind and not self.expired(t.created_ms)]
            mine.sort(key=lambda t: t.created_ms, reverse=True)
            return mine[(page - 1) * size : page * size]

    def sign(self, video_id: str, *, watermark: bool = False) -> str:
        """A download path that expires after `url_ttl_s` (re-issued on every query)."""
        expires = int(self.now_ms() / 1000 + self.config.url_ttl_s)
        name = f"{video_id}{'_wm' if watermark else ''}.mp4"
        sig = hmac.new(self.url_key, f"{name}:{expires}".encode(), "sha256").hexdigest()[:32]
        return f"/files/{name}?expires={expires}&sig={sig}"

    def check_signature(self, name: str, expires: str, sig: str) -> SimVideo:
        want = hmac.new(self.url_key, f"{name}:{expires}".encode(), "sha256").hexdigest()[:32]
        if not hmac.compare_digest(want, sig):
            raise PermissionError("bad signature")
        if not expires.isdigit() or int(expires) < self.now_ms() / 1000:
            raise PermissionError("url expired")
        video = self.videos.get(name.removesuffix(".mp4").removesuffix("_wm"))
        if video is None or self.expired(video.created_ms):
            raise FileNotFoundError(name)
        return video

    def task_json(self, task: SimTask, base_url: str) -> dict[str, Any]:
        """The task object exactly as Kling's query endpoints return it."""
        with self.lock:
            status = self.status(task)
            info: dict[str, Any] = {}
            if task.external_task_id is not None and self.config.task_lookup == "external_id":
                info["external_task_id"] = task.external_task_id
            if task.parent is not None:
                info["parent_video"] = {
                    "id": task.parent.video_id,
                    "url": base_url + self.sign(task.parent.video_id),
                    "duration": task.parent.duration,
                }
            out: dict[str, Any] = {
                "task_id": task.task_id,
                "task_status": status,
                "task_status_msg": task.fail_reason or "" if status == "failed" else "",
                "task_info": info,
                "created_at": task.created_ms,
                "updated_at": max(task.created_ms, min(self.now_ms(), task.done_ms)),
            }
            if status == "succeed":
                video = self.videos[task.video_id]
                entry = {
                    "id": video.video_id,
                    "url": base_url + self.sign(video.video_id),
                    "duration": video.duration,
                }
                if task.watermark:
                    entry["watermark_url"] = base_url + self.sign(video.video_id, watermark=True)
                out["task_result"] = {"videos": [entry]}
                if task.watermark:
                    out["watermark_info"] = {"enabled": True}
                out["final_unit_deduction"] = f"{self.units(task):g}"
            elif status == "failed":
                out["final_unit_deduction"] = "0"
            return out


_LOGGED_TASK_FIELDS = (
    "task_id", "kind", "body", "model", "mode", "external_task_id", "created_ms", "start_ms",
    "done_ms", "video_id", "frames", "fail_reason", "updated_ms", "watermark", "callback_url",
)  # fmt: skip
_LOGGED_VIDEO_FIELDS = ("video_id", "task_id", "frames", "fps", "model", "mode", "created_ms", "start_frame")


def _done() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


def _as_status(task: dict[str, Any], status: str) -> dict[str, Any]:
    """The task object as it was while `status` (an earlier, unfinished state)."""
    earlier = {
        k: v for k, v in task.items() if k not in ("task_result", "final_unit_deduction", "watermark_info")
    }
    earlier["task_status"] = status
    return earlier


def _watermark_wanted(body: dict[str, Any]) -> bool:
    info = body.get("watermark_info")
    if info is None:
        return False
    if not isinstance(info, dict) or not isinstance(info.get("enabled"), bool) or set(info) != {"enabled"}:
        raise SimError(1201, 'watermark_info must be {"enabled": true} or {"enabled": false}')
    return bool(info["enabled"])


def _list_of_objects(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SimError(1201, f"{name} must be a list of objects")
    return value


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SimError(1201, f"{name} must be a non-empty string")
    return value


def _extend_refusal(video: SimVideo, refuse_v1_5: bool) -> str | None:
    # The simulator's own cap check: Kling refuses when even the shortest extension
    # (4 s) cannot fit; the result is then clipped to the cap.
    if video.model not in rules.EXTENDABLE_MODELS or (refuse_v1_5 and video.model == "kling-v1-5"):
        return rules.extension_refusal(video.model, 0.0, refuse_v1_5=refuse_v1_5)
    if video.frames / video.fps + rules.EXTEND_MIN_SECONDS > rules.MAX_TOTAL_SECONDS:
        return f"the video is {video.duration} s long; extending it would pass the 3-minute limit"
    return None


def _fetch_image(field_name: str, url: str) -> bytes:
    """Fetch an image URL as Kling would; the simulator is offline, so loopback hosts only."""
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SimError(1201, f"{field_name}: the offline simulator fetches images from loopback hosts only")
    try:
        response = httpx.get(url, timeout=10.0, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise SimError(1201, f"{field_name}: the image URL could not be fetched ({exc})") from exc
    if response.status_code != 200:
        raise SimError(1201, f"{field_name}: the image URL answered HTTP {response.status_code}")
    problem = rules.image_problem(response.content)
    if problem is not None:
        raise SimError(1201, f"{field_name} {problem}")
    return response.content


def _decode_image(field_name: str, value: Any) -> bytes:
    """Kling's image rules: raw base64 (no data: prefix) of a JPEG/PNG, <= 10 MB, >= 300 px."""
    if not isinstance(value, str):
        raise SimError(1201, f"{field_name} must be a string")
    if value.startswith(("http://", "https://")):
        return _fetch_image(field_name, value)
    if value.startswith("data:"):
        raise SimError(1201, f"{field_name} must be raw base64 without a data: prefix")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SimError(1201, f"{field_name} is not valid base64") from exc
    problem = rules.image_problem(raw)
    if problem is not None:
        raise SimError(1201, f"{field_name} {problem}")
    return raw
