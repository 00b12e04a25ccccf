"""The archive: every result on disk, verified, with a manifest that explains the chain.

Results arrive through `downloads` (a file at a final path is never partial; one that
fails verification is kept aside as `<name>.rejected`). This module names the files,
publishes outputs, writes manifests, and mirrors the archive.

Layout: `<archive>/<chain>/<step>-<video_id>.mp4` and `<archive>/<chain>/manifest.json`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from . import media, rules, simulated
from .chain import StepRow
from .downloads import CHUNK, fsync_dir, hash_file
from .errors import ConfigError, DownloadError
from .ports import JournalPort


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
        hash_file(file, digest)
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
    rename, fsync of the folder): a crash never leaves a half-written file. The temp file's
    name is this writer's own: two processes writing one file (two runs sharing a state
    folder, each ending with last-run.json) never rename each other's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
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
