"""Downloads: a result's bytes from its signed url into the archive, verified before they count.

A download streams into `<name>.part` (memory does not grow with the file), resumes with
`Range` + `If-Range` when a `.part` is already there (only a 206 that starts at the right
byte is accepted; a 200 restarts from zero), is checked against the size the server
announced, probed with ffprobe (H.264, duration within 0.2 s of what the provider
reported), fsynced, renamed into place, and the folder fsynced. Only then does the caller
record it. A file at a final path is therefore never partial; a file that fails
verification is kept aside as `<name>.rejected` for the user to look at.

Two ways in, one set of rules. On the network a Session downloads with `blocking_client()`:
the body is read by a worker thread on blocking sockets, 1 MB a read. On the event loop,
asyncio's cost per read held a loopback download to a third of curl's pace even with the
file on tmpfs (bench/download.py). Under an in-process transport (tests: MockTransport,
ASGITransport) the same steps run on the event loop. Either way the bytes are hashed, and
the file caught up with the disk, by a helper thread (`_Digest`), so the reader only writes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx
from pydantic import BaseModel

from . import media
from .errors import DownloadError, MediaError, UrlExpired, VerificationFailed, WriteError

#: What a download accepts: an async client (in-process transports) or a blocking one.
Http = httpx.AsyncClient | httpx.Client

DURATION_TOLERANCE_S = 0.2
CHUNK = 1 << 20
#: The file is asked to catch up with the disk (in the helper thread) every this many bytes,
#: so the fsync at the end waits for little more than the last stretch.
SYNC_EVERY = 32 << 20
#: Bytes a blocking read asks the socket for (httpcore's default is 64 KB).
READ_BYTES = 1 << 20
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: Chunks waiting for the hash at most (each at most READ_BYTES): bounds memory.
QUEUED_CHUNKS = 8


class Downloaded(BaseModel):
    path: Path
    sha256: str
    size: int
    probed_duration: float


def blocking_client(**settings: Any) -> httpx.Client:
    """The client a Session downloads with on the network (`settings` go to httpx.Client;
    a read that waits a minute for the next byte fails the attempt, which is retried).

    httpcore has no per-client read size; its class attribute is the knob its maintainers
    tuned (encode/httpcore#135). A read returns what the socket holds, so small answers are
    unaffected; only chainer's downloads use the blocking client in chainer's process."""
    if httpcore.HTTP11Connection.READ_NUM_BYTES < READ_BYTES:
        httpcore.HTTP11Connection.READ_NUM_BYTES = READ_BYTES
    return httpx.Client(**{"timeout": TIMEOUT, **settings})


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


async def download(
    http: Http,
    url: str,
    dest: Path,
    *,
    reported_duration: float | None,
    progress: Callable[[int], None] | None = None,
) -> Downloaded:
    """Fetch `url` into `dest` (resuming a previous .part), verify it, and return what was
    stored. A disk that refuses the bytes is a WriteError (retrying would not help).
    `progress` gets the bytes on disk so far (from a worker thread with a blocking client)."""
    with _disk_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        meta = _sidecar(part)
        offset = part.stat().st_size if part.exists() else 0
        validator = None
        if offset and meta.exists():
            with contextlib.suppress(ValueError, OSError):
                validator = json.loads(meta.read_text()).get("validator")
        request = _Request(url, part, meta, offset, validator, progress)
        if isinstance(http, httpx.Client):
            size, digest = await _in_thread(lambda stop: request.fetch_blocking(http, stop))
        else:
            size, digest = await request.fetch(http)
        stated = _stated_digest(meta)
        info = await _verify(part, dest, digest, stated, reported_duration)
        os.replace(part, dest)
        media.remember(dest, info)  # the contact sheet's picture and a hand-off read it next
        meta.unlink(missing_ok=True)
        fsync_dir(dest.parent)
    return Downloaded(path=dest, sha256=digest.hexdigest(), size=size, probed_duration=info.duration)


@contextlib.contextmanager
def _disk_errors(dest: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise WriteError(
            f"cannot write {dest.parent}: {exc.strerror or exc}. Make room or fix the folder's "
            "permissions; the result stays at the provider (30 days from its creation) and `chainer "
            "archive` or the same run fetches it then"
        ) from exc


async def _in_thread(work: Callable[[_Stop], Any]) -> Any:
    """Run `work(stop)` in a worker thread. On cancellation `stop` is set and the thread is
    waited for (it stops at its next chunk; a read waiting on a stalled server returns at
    once): a thread still writing the .part must not outlive the download that owns it."""
    stop, done = _Stop(), threading.Event()

    def run() -> Any:
        try:
            return work(stop)
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        stop.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(done.wait)
        raise


class _Stopped(Exception):
    """The download's owner was cancelled; the worker thread leaves the .part as it is."""


class _Stop:
    """Set when the download's owner is cancelled. `socket` is the connection the worker
    reads: it is shut down then, so a read waiting for a stalled server returns at once
    instead of at the read timeout (a minute)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.socket: socket.socket | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)


class _Request:
    """One GET of a result: the same answers accepted and refused on either client."""

    def __init__(
        self,
        url: str,
        part: Path,
        meta: Path,
        offset: int,
        validator: str | None,
        progress: Callable[[int], None] | None,
    ):
        self.url, self.part, self.meta, self.progress = url, part, meta, progress
        self.total: int | None = None
        self.offset = offset if offset and validator else 0
        self.headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset and validator else {}

    async def fetch(self, http: httpx.AsyncClient) -> tuple[int, Any]:
        """Bring the .part up to the whole file on the event loop; its size and sha256."""
        with self._transport_errors():
            async with http.stream("GET", self.url, headers=self.headers) as response:
                body = await anyio.to_thread.run_sync(self._accept, response)
                if isinstance(body, _Whole):
                    return body.size, body.digest
                with body:
                    async for chunk in response.aiter_bytes():
                        if not body.offer(chunk):  # the hash is behind: wait in a thread
                            await anyio.to_thread.run_sync(body.write, chunk)
                    size = await anyio.to_thread.run_sync(body.finish)
        return self._complete(size, body)

    def fetch_blocking(self, http: httpx.Client, stop: _Stop) -> tuple[int, Any]:
        """The same in a worker thread with a blocking client; `stop` ends it between chunks."""
        with self._transport_errors(), http.stream("GET", self.url, headers=self.headers) as response:
            stream = response.extensions.get("network_stream")
            stop.socket = stream.get_extra_info("socket") if stream is not None else None
            if stop.is_set():
                raise _Stopped
            body = self._accept(response)
            if isinstance(body, _Whole):
                return body.size, body.digest
            with body:
                for chunk in response.iter_bytes():
                    if stop.is_set():
                        raise _Stopped
                    body.write(chunk)
                size = body.finish()
        return self._complete(size, body)

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UrlExpired(f"the download host cannot be reached ({exc!r}); a fresh url is needed") from exc
        except httpx.TransportError as exc:
            raise DownloadError(f"the download was interrupted at byte {_size(self.part)}: {exc!r}") from exc

    def _accept(self, response: httpx.Response) -> _Body | _Whole:
        """What the answer means for the .part: where its body goes, or that the .part already
        holds the whole file. Raises for an answer that cannot be used."""
        status = response.status_code
        if status in (401, 403, 404, 410):
            raise UrlExpired(f"the download answered HTTP {status}")
        offset, self.total = self.offset, None
        if status == 416:
            _, total = _content_range(response.headers.get("Content-Range", "bytes */0"))
            if total != offset:  # the .part is not a prefix we can trust: start over
                _discard(self.part)
                raise DownloadError(f"the server cannot resume at byte {offset}; restarting")
            return _Whole.of(self.part)
        if status == 206:
            start, self.total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                _discard(self.part)
                raise DownloadError(f"asked to resume at byte {offset}, the server sent byte {start}")
        elif status == 200:
            offset, self.total = 0, _int(response.headers.get("Content-Length"))
        else:
            raise DownloadError(f"the download answered HTTP {status}")
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        self.meta.write_text(json.dumps({"validator": validator, "digest": _announced_digest(response)}))
        return _Body(self.part, offset, self.progress)

    def _complete(self, size: int, body: _Body) -> tuple[int, Any]:
        if self.total is not None and size != self.total:
            raise DownloadError(f"the download ended at byte {size} of {self.total}")
        return size, body.digest


@dataclass(frozen=True)
class _Whole:
    """The .part already holds the whole file (the server answered 416 at its size)."""

    size: int
    digest: Any

    @classmethod
    def of(cls, part: Path) -> _Whole:
        digest = hashlib.sha256()
        hash_file(part, digest)
        return cls(_size(part), digest)


class _Body:
    """The .part being written from `offset`: the bytes go to the file in the reading thread;
    hashing them and the periodic fdatasync happen in `_Digest`'s helper thread."""

    def __init__(self, part: Path, offset: int, progress: Callable[[int], None] | None):
        self.digest = hashlib.sha256()
        self.size, self._progress = offset, progress
        if offset:
            hash_file(part, self.digest, limit=offset)  # the hash covers the bytes we already have
        self._file = part.open("r+b" if offset else "wb", buffering=0)
        self._file.seek(offset)
        self._file.truncate()
        self._hashing = _Digest(self.digest, self._file.fileno())

    def _written(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.size += len(chunk)
        if self._progress is not None:
            self._progress(self.size)

    def offer(self, chunk: bytes) -> bool:
        """Write `chunk` unless the hash is too far behind (then nothing is written)."""
        if self._hashing.full():
            return False
        self.write(chunk)
        return True

    def write(self, chunk: bytes) -> None:
        """Write `chunk`; waits while the hash is too far behind (memory stays bounded)."""
        self._written(chunk)
        self._hashing.put(chunk)

    def finish(self) -> int:
        """Wait for the hash, fsync; the file's size."""
        self._hashing.finish()
        os.fsync(self._file.fileno())
        return self.size

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hashing.abandon()
        self._file.close()


class _Digest:
    """A helper thread that hashes the chunks given to it, in order, and asks the disk to
    catch up (fdatasync) every SYNC_EVERY bytes. hashlib and fdatasync release the GIL,
    so this overlaps with reading the socket; a failure is raised at the next `put`."""

    def __init__(self, digest: Any, fd: int):
        self._digest, self._fd = digest, fd
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._failure: BaseException | None = None
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="chainer-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        unsynced = 0
        while (chunk := self._chunks.get()) is not None:
            if self._failure is not None:
                continue  # drain, so a waiting put never hangs
            try:
                self._digest.update(chunk)
                unsynced += len(chunk)
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(self._fd)
                    unsynced = 0
            except BaseException as exc:  # raised in the reading thread
                self._failure = exc

    def full(self) -> bool:
        return self._chunks.full()

    def put(self, chunk: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._chunks.put(chunk)

    def finish(self) -> None:
        """Every chunk hashed (raises the helper's failure, if any)."""
        self.abandon()
        if self._failure is not None:
            raise self._failure

    def abandon(self) -> None:
        """Stop the helper (waits for the chunk it is on); idempotent."""
        if not self._ended:
            self._ended = True
            self._chunks.put(None)
            self._thread.join()


async def _verify(
    part: Path, dest: Path, digest: Any, stated: tuple[str, str] | None, reported_duration: float | None
) -> media.ProbeResult:
    """Check the received bytes are the provider's video (digest, probe, decode, length);
    a file that fails is kept aside as `.rejected` and the error says whether to fetch again."""
    if stated is not None:
        algorithm, want = stated
        got = digest.hexdigest() if algorithm == "sha256" else _file_digest(part, algorithm)
        if got != want:
            # Bytes changed on the way: keep them aside for a look, fetch again from zero.
            os.replace(part, dest.with_name(dest.name + ".rejected"))
            _sidecar(part).unlink(missing_ok=True)
            raise DownloadError(
                f"{dest.name}: the bytes received do not match the provider's {algorithm} digest"
            )
    try:
        info = await anyio.to_thread.run_sync(media.probe, part)
    except MediaError as exc:
        _reject(part, dest)
        raise VerificationFailed(
            f"{dest.name} is not a readable video (kept as {dest.name}.rejected): {exc}"
        ) from exc
    problems = []
    if not info.is_h264_mp4:
        problems.append(f"expected H.264 in MP4, got {info.video_codec} in {info.format_name}")
    if reported_duration is not None and abs(info.duration - reported_duration) > DURATION_TOLERANCE_S:
        problems.append(f"it lasts {info.duration:.3f} s but the provider reported {reported_duration:g} s")
    # With a matching digest the bytes are the provider's own; without one, a full decode is
    # the best available check that nothing was damaged on the way.
    decode = [] if stated is not None else await anyio.to_thread.run_sync(media.decode_errors, part)
    if decode:
        os.replace(part, dest.with_name(dest.name + ".rejected"))
        _sidecar(part).unlink(missing_ok=True)
        raise DownloadError(f"{dest.name} does not decode cleanly ({decode[0]}); fetching it again")
    if problems:
        _reject(part, dest)
        raise VerificationFailed(
            f"{dest.name} failed verification (kept as {dest.name}.rejected): {'; '.join(problems)}"
        )
    return info


def _announced_digest(response: httpx.Response) -> list[str] | None:
    """The whole file's digest as the server states it: RFC 9530 Repr-Digest (any answer) or
    Content-MD5 (a 200 only, where the body is the whole file)."""
    for item in response.headers.get("Repr-Digest", "").split(","):
        name, _, value = item.strip().partition("=")
        if name.lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            with contextlib.suppress(ValueError):
                return ["sha256", base64.b64decode(value.strip(":")).hex()]
    md5 = response.headers.get("Content-MD5")
    if md5 and response.status_code == 200:
        with contextlib.suppress(ValueError):
            return ["md5", base64.b64decode(md5).hex()]
    return None


def _stated_digest(meta: Path) -> tuple[str, str] | None:
    try:
        stated = json.loads(meta.read_text()).get("digest")
    except (OSError, ValueError):
        return None
    return (stated[0], stated[1]) if isinstance(stated, list) and len(stated) == 2 else None


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    hash_file(path, h)
    return h.hexdigest()


def hash_file(path: Path, digest: Any, *, limit: int | None = None) -> None:
    """Feed `path`'s bytes (its first `limit`, when given) to `digest`."""
    left = path.stat().st_size if limit is None else limit
    with path.open("rb") as f:
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _reject(part: Path, dest: Path) -> None:
    os.replace(part, dest.with_name(dest.name + ".rejected"))
    _sidecar(part).unlink(missing_ok=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of "bytes 100-199/2000"; None for a "*" in either place."""
    try:
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes" or not span or not total:
            raise ValueError(value)
        start = None if span == "*" else int(span.split("-")[0])
        return start, (None if total == "*" else int(total))
    except (ValueError, IndexError) as exc:
        raise DownloadError(f"the server sent an unreadable Content-Range {value!r}") from exc
