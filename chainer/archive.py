"""The archive: every result on disk, verified, with a manifest that explains the chain.

A download streams into `<name>.part` (memory does not grow with the file), resumes with
`Range` + `If-Range` when a `.part` is already there (only a 206 that starts at the right
byte is accepted; a 200 restarts from zero), is checked against the size the server
announced, probed with ffprobe (H.264, duration within 0.2 s of what the provider
reported), fsynced, renamed into place, and the folder fsynced. Only then does the caller
record it. A file at a final path is therefore never partial; a file that fails
verification is kept aside as `<name>.rejected` for the user to look at.

Layout: `<archive>/<chain>/<step>-<video_id>.mp4` and `<archive>/<chain>/manifest.json`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from pydantic import BaseModel

from . import media, rules, simulated
from .chain import StepRow
from .errors import ConfigError, DownloadError, MediaError, UrlExpired, VerificationFailed, WriteError
from .ports import JournalPort

DURATION_TOLERANCE_S = 0.2
CHUNK = 1 << 20
#: A download asks the disk to catch up (in a thread) after every this many bytes.
SYNC_EVERY = 32 << 20


class Downloaded(BaseModel):
    path: Path
    sha256: str
    size: int
    probed_duration: float


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


async def download(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    reported_duration: float | None,
    progress: Callable[[int], None] | None = None,
) -> Downloaded:
    """Fetch `url` into `dest` (resuming a previous .part), verify it, and return what was
    stored. A disk that refuses the bytes is a WriteError (retrying would not help)."""
    try:
        return await _download(http, url, dest, reported_duration=reported_duration, progress=progress)
    except OSError as exc:
        raise WriteError(
            f"cannot write {dest.parent}: {exc.strerror or exc}. Make room or fix the folder's "
            "permissions; the result stays at the provider (30 days from its creation) and `chainer "
            "archive` or the same run fetches it then"
        ) from exc


async def _download(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    reported_duration: float | None,
    progress: Callable[[int], None] | None = None,
) -> Downloaded:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta = _sidecar(part)
    offset = part.stat().st_size if part.exists() else 0
    validator = None
    if offset and meta.exists():
        with contextlib.suppress(ValueError, OSError):
            validator = json.loads(meta.read_text()).get("validator")
    size, digest = await _fetch_bytes(http, url, part, meta, offset, validator, progress)
    stated = _stated_digest(meta)
    info = await _verify(part, dest, digest, stated, reported_duration)
    os.replace(part, dest)
    media.remember(dest, info)  # the contact sheet's picture and a hand-off read it next
    meta.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return Downloaded(path=dest, sha256=digest.hexdigest(), size=size, probed_duration=info.duration)


async def _fetch_bytes(
    http: httpx.AsyncClient,
    url: str,
    part: Path,
    meta: Path,
    offset: int,
    validator: str | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, Any]:
    """Bring `part` up to the whole file (resuming at `offset` when `validator` allows);
    returns its size and the running sha256 of its bytes."""
    headers = {}
    if offset and validator:
        headers = {"Range": f"bytes={offset}-", "If-Range": validator}
    else:
        offset = 0
    digest = hashlib.sha256()
    try:
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code in (401, 403, 404, 410):
                raise UrlExpired(f"the download url answered HTTP {response.status_code}")
            if response.status_code == 416:
                _, total = _content_range(response.headers.get("Content-Range", "bytes */0"))
                if total != offset:  # the .part is not a prefix we can trust: start over
                    _discard(part)
                    raise DownloadError(f"the server cannot resume at byte {offset}; restarting")
                _hash_file(part, digest)  # the .part already holds the whole file
                size = offset
            elif response.status_code == 206:
                start, total = _content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    _discard(part)
                    raise DownloadError(f"asked to resume at byte {offset}, the server sent byte {start}")
            elif response.status_code == 200:
                offset, total = 0, _int(response.headers.get("Content-Length"))
            else:
                raise DownloadError(f"the download answered HTTP {response.status_code}")
            if response.status_code != 416:
                size = await _receive(response, part, meta, offset, digest, progress)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UrlExpired(f"the download host cannot be reached ({exc!r}); a fresh url is needed") from exc
    except httpx.TransportError as exc:
        raise DownloadError(f"the download was interrupted at byte {_size(part)}: {exc!r}") from exc
    if total is not None and size != total:
        raise DownloadError(f"the download ended at byte {size} of {total}")
    return size, digest


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


async def _receive(
    response: httpx.Response,
    part: Path,
    meta: Path,
    offset: int,
    digest: hashlib._Hash,
    progress: Callable[[int], None] | None,
) -> int:
    """Write the body into `part` from byte `offset`; return the file's size when done."""
    if offset:
        _hash_file(part, digest, limit=offset)  # the hash covers the bytes we already have
    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
    meta.write_text(json.dumps({"validator": validator, "digest": _announced_digest(response)}))
    with part.open("r+b" if offset else "wb", buffering=0) as f:
        f.seek(offset)
        f.truncate()
        flushed = offset
        syncing = False

        async def catch_up() -> None:
            nonlocal syncing
            syncing = True
            try:
                await anyio.to_thread.run_sync(os.fdatasync, f.fileno())
            finally:
                syncing = False

        failure: Exception | None = None
        async with anyio.create_task_group() as writeback:
            # Chunks as they arrive (no re-chunking copies); every SYNC_EVERY bytes, the
            # disk catches up in a thread while the next bytes arrive, so the fsync at
            # the end waits for little more than the last stretch.
            try:
                async for chunk in response.aiter_bytes():
                    f.write(chunk)
                    digest.update(chunk)
                    if progress is not None:
                        progress(f.tell())
                    if f.tell() - flushed >= SYNC_EVERY and not syncing:
                        flushed = f.tell()
                        writeback.start_soon(catch_up)
            except Exception as exc:  # raised below as it is, not wrapped in an ExceptionGroup
                failure = exc
        if failure is not None:
            raise failure
        os.fsync(f.fileno())
        return f.tell()


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
    _hash_file(path, h)
    return h.hexdigest()


def _hash_file(path: Path, digest: hashlib._Hash, *, limit: int | None = None) -> None:
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


def check_file(path: str | None, size: int | None, sha256: str | None) -> str | None:
    """Why an archived file is not what the journal recorded, or None if it is."""
    if not path:
        return "no file was recorded"
    file = Path(path)
    if not file.is_file():
        return f"{file} is missing"
    if size is not None and file.stat().st_size != size:
        return f"{file} has {file.stat().st_size} bytes, not the {size} recorded"
    if sha256 is not None:
        digest = hashlib.sha256()
        _hash_file(file, digest)
        if digest.hexdigest() != sha256:
            return f"{file} changed since it was archived (sha256 differs)"
    return None


def safe_id(video_id: str) -> str:
    """A provider's id as a file-name part (nothing but letters, digits, - _ .)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in video_id)


def result_name(idx: int, video_id: str) -> str:
    """The archive file name of step `idx`'s result."""
    return f"{idx:03d}-{safe_id(video_id)}.mp4"


def handoff_name(idx: int, attempt: int) -> str:
    """The archive file name of a hand-off's start image (one per take: its parent may differ)."""
    return f"handoff-{idx:03d}-take{attempt}.png"


#: The contact sheet's file name inside a chain's archive folder.
CONTACT_SHEET = "contact-sheet.png"


def public_url(url: str | None) -> str | None:
    """A url without its query string: signed urls' signatures never go into a manifest."""
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# ------------------------------------------------------------------ manifest


class ManifestStep(BaseModel):
    index: int
    kind: str
    state: str
    #: The take: 1, then one more for each re-roll (or retry) of this step.
    attempt: int
    #: Whether this take is the one in the chain's video (earlier takes stay archived).
    current: bool = True
    prompt: str | None
    task_id: str | None
    external_task_id: str | None
    video_id: str | None
    url: str | None
    reported_duration: float | None
    probed_duration: float | None
    units: float | None
    file: str | None
    sha256: str | None
    size: int | None
    created_at: dt.datetime | None
    expires_at: dt.datetime | None
    #: When the file was deleted on purpose (keep: final); its sha256 and size stay on record.
    pruned_at: dt.datetime | None = None
    #: A hand-off's start image (the last frame of the previous part), archived next to it.
    handoff_image: str | None = None


class Manifest(BaseModel):
    """`manifest.json`: enough to understand and rebuild the chain without the journal."""

    manifest_version: Literal[2] = 2
    chain: str
    storyboard: str
    storyboard_sha256: str
    provider: str
    #: Made by chainer's offline simulator: no credits spent, not a provider's result.
    simulated: bool = False
    model: str
    mode: str
    output: str | None
    #: The archived video that is the whole chain (one part), else None.
    final_video: str | None
    #: The archived videos joined into the output, one per part (180 s each at most).
    parts: list[str]
    contact_sheet: str | None = None
    steps: list[ManifestStep]
    #: Takes that are no longer current (re-rolled, or failed and retried), in step order.
    earlier_takes: list[ManifestStep] = []
    written_at: dt.datetime


def expires_at(created_ms: int | None) -> dt.datetime | None:
    if created_ms is None:
        return None
    created = from_ms(created_ms)
    assert created is not None
    return created + dt.timedelta(days=rules.RETENTION_DAYS)


def write_atomically(target: Path, data: str | bytes) -> Path:
    """Write `target` so that it is either its old or its new self (temp file, fsync,
    rename, fsync of the folder): a crash never leaves a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    _commit(tmp, target)
    return target


def _commit(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    fsync_dir(target.parent)


class ArchiveLocation(BaseModel):
    """STATE_DIR/archive-location.json: where the archive of a state dir's chains is, so a
    command run from another folder with --state-dir finds it (relative: to the state
    dir's parent, so a project folder can move)."""

    archive_dir: str


LOCATION_FILE = "archive-location.json"


def location(state_dir: Path, given: str | os.PathLike[str] | None) -> Path:
    """The archive folder of `state_dir`'s chains: `given` when set, else the one recorded
    there, else `archive/` beside the state dir. The first to open a state dir records it."""
    record = state_dir / LOCATION_FILE
    base = state_dir.parent
    try:
        recorded: Path | None = base / ArchiveLocation.model_validate_json(record.read_bytes()).archive_dir
    except (FileNotFoundError, NotADirectoryError):  # none yet (opening the state dir says why)
        recorded = None
    except ValueError as exc:
        raise ConfigError(f"{record} is not chainer's: {exc}; delete it or pass --archive-dir") from exc
    chosen = Path(given) if given is not None else recorded or base / "archive"
    if recorded is None:
        rel = os.path.relpath(chosen.resolve(), base.resolve())
        kept = chosen.resolve() if rel.startswith("..") else Path(rel)
        with contextlib.suppress(OSError):  # a read-only folder: opening the journal says so
            state_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(record, ArchiveLocation(archive_dir=str(kept)).model_dump_json())
    return chosen


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write the chain's `manifest.json` atomically."""
    return write_atomically(folder / "manifest.json", manifest.model_dump_json(indent=2) + "\n")


def from_ms(ms: int | None) -> dt.datetime | None:
    """A provider timestamp (Unix milliseconds) as a UTC datetime."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if ms else None


def publish(src: Path, dest: Path) -> None:
    """Copy an archived file to a user-facing path atomically (never a partial file there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        for block in iter(lambda: fin.read(CHUNK), b""):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    _commit(tmp, dest)


def publish_joined(parts: Sequence[Path], dest: Path, *, drops: Sequence[bool]) -> media.Joined:
    """Join a chain's parts into `dest` atomically; `drops[i]`: the join after part i is a
    hand-off, whose repeated frame is dropped (an Omni-Video shot's join drops nothing)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.joining.mp4")
    try:
        joined = media.join(parts, tmp, drop_last_frame=drops)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        _commit(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return joined


def is_deleted(created_ms: int | None, *, now: dt.datetime | None = None) -> bool:
    """Whether the provider has deleted a video created at `created_ms` (30 days on)."""
    left = time_left(created_ms, now=now)
    return left is not None and left.total_seconds() < 0


def time_left(created_ms: int | None, *, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long until the provider deletes a video created at `created_ms` (negative: gone)."""
    expiry = expires_at(created_ms)
    if expiry is None:
        return None
    return expiry - (now or dt.datetime.now(dt.UTC))


def write_chain_manifest(journal: JournalPort, chain_name: str, folder: Path) -> Path:
    """The chain's manifest.json, rebuilt from the journal."""
    chain = journal.chain(chain_name)
    assert chain is not None
    view = journal.view(chain.name)
    rows = list(view.rows)
    ends = view.part_ends()
    parts = [Path(r.file).name for r in ends if r.file and not r.pruned_at]
    sheet = folder / CONTACT_SHEET
    return write_manifest(
        folder,
        Manifest(
            chain=chain.name,
            storyboard=chain.storyboard,
            storyboard_sha256=chain.storyboard_sha,
            provider=chain.provider,
            simulated=simulated.is_simulated_provider(chain.provider),
            model=chain.model,
            mode=chain.mode,
            output=chain.output,
            final_video=parts[0] if len(ends) == 1 and parts else None,
            parts=parts,
            contact_sheet=sheet.name if sheet.exists() else None,
            steps=[_manifest_step(r, folder, current=True) for r in rows],
            earlier_takes=[_manifest_step(r, folder, current=False) for r in view.earlier],
            written_at=dt.datetime.now(dt.UTC),
        ),
    )


def _manifest_step(r: StepRow, folder: Path, *, current: bool) -> ManifestStep:
    handoff = folder / handoff_name(r.idx, r.attempt)
    return ManifestStep(
        index=r.idx,
        kind=r.kind,
        state=r.state,
        attempt=r.attempt,
        current=current,
        prompt=r.prompt,
        task_id=r.task_id,
        external_task_id=r.external_task_id,
        video_id=r.video_id,
        url=public_url(r.video_url),
        reported_duration=r.duration,
        probed_duration=r.probed_duration,
        units=r.units,
        file=Path(r.file).name if r.file and not r.pruned_at else None,
        sha256=r.sha256,
        size=r.size,
        created_at=from_ms(r.remote_created_ms),
        expires_at=expires_at(r.remote_created_ms),
        pruned_at=dt.datetime.fromtimestamp(r.pruned_at, dt.UTC) if r.pruned_at else None,
        handoff_image=handoff.name if handoff.exists() else None,
    )


class AccountVideo(BaseModel):
    """A video found by the account sweep (made by chainer or not)."""

    kind: str
    task_id: str
    video_id: str
    prompt: str | None
    reported_duration: float | None
    probed_duration: float
    units: float | None
    file: str
    sha256: str
    size: int
    created_at: dt.datetime | None
    expires_at: dt.datetime | None
    archived_at: dt.datetime


class AccountManifest(BaseModel):
    """`<archive>/_account/manifest.json`: what the sweep saved from the account."""

    manifest_version: Literal[1] = 1
    provider: str
    videos: list[AccountVideo]


ACCOUNT_FOLDER = "_account"


def read_account_manifest(folder: Path, provider: str) -> AccountManifest:
    path = folder / "manifest.json"
    if not path.exists():
        return AccountManifest(provider=provider, videos=[])
    try:
        return AccountManifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise DownloadError(f"{path} is not a readable account manifest ({exc}); move it aside") from exc


def write_account_manifest(folder: Path, manifest: AccountManifest) -> Path:
    """Write the account sweep's `manifest.json` atomically."""
    return write_atomically(folder / "manifest.json", manifest.model_dump_json(indent=2) + "\n")


#: What the mirror copies from a chain's folder: videos, images and the manifest.
MIRRORED = (".mp4", ".png", ".json")


def is_mirrored(local: Path) -> bool:
    """Whether the mirror copies `local`: finished files only. A download's `.part` and its
    `.part.json` sidecar, `.rejected` files and temporary files stay local."""
    partial = any(s in (".part", ".rejected") for s in local.suffixes)
    return local.is_file() and not local.name.startswith(".") and local.suffix in MIRRORED and not partial


class Mirror:
    """A copy of the archive at an fsspec URL (`s3://bucket/prefix`, `gs://...`, ...).

    The local archive stays the place where files are verified; a chain's folder is
    synced here after each step, object by object, and each object's size is checked
    after it is written. Needs the `remote` extra (fsspec, plus s3fs for S3).
    """

    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - the dev install has it
            raise ConfigError("archiving to a URL needs fsspec: pip install 'chainer[remote]'") from exc
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot use {url!r} as an archive: {exc}") from exc
        self.url = url.rstrip("/")

    def sync(self, folder: Path) -> list[str]:
        """Upload what `folder` holds that the mirror lacks or holds at another size; return the names."""
        remote_dir = f"{self.root.rstrip('/')}/{folder.name}"
        try:
            existing = {Path(i["name"]).name: i.get("size") for i in self.fs.ls(remote_dir, detail=True)}
        except FileNotFoundError:
            existing = {}
            try:
                self.fs.makedirs(remote_dir, exist_ok=True)  # filesystems need it; object stores ignore it
            except OSError as exc:
                raise DownloadError(f"cannot create {self.url}/{folder.name}: {exc}") from exc
        sent = []
        for local in sorted(folder.iterdir()):
            if not is_mirrored(local):
                continue
            size = local.stat().st_size
            if existing.get(local.name) == size and local.name != "manifest.json":
                continue
            target = f"{remote_dir}/{local.name}"
            try:
                self.fs.put_file(str(local), target)
                stored = self.fs.info(target).get("size")
            except OSError as exc:
                raise DownloadError(f"could not copy {local.name} to {self.url}: {exc}") from exc
            if stored != size:
                raise DownloadError(f"{self.url}/{folder.name}/{local.name} holds {stored} bytes, not {size}")
            sent.append(local.name)
        return sent

    def restore(self, chain: str, name: str, dest: Path) -> bool:
        """Copy the mirror's `chain/name` to `dest` (fsynced, then renamed into place: never
        a partial file at `dest`); False when the mirror does not hold it. A worker that
        takes over a chain another machine archived gets its files back this way."""
        remote = f"{self.root.rstrip('/')}/{chain}/{name}"
        part = dest.with_name(dest.name + ".restore.part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(remote, str(part))
        except FileNotFoundError:
            part.unlink(missing_ok=True)
            return False
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"could not copy {self.url}/{chain}/{name} back: {exc}") from exc
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        _commit(part, dest)
        return True
