"""Benchmark 4, download: chainer's verified download of a 500 MB video vs curl.

A valid MP4 padded to 500 MB (a `free` box after the video, as some encoders leave) is
served over loopback by a sendfile server that sends `Repr-Digest`, as object stores do.
chainer's download (`downloads.download` with the blocking client a Session uses on the
network: stream to .part, sha-256, fsync, probe, rename) runs in its own process so that
its peak resident memory (VmHWM) is its own; curl runs in the same run against the same
server, alternating with it, 3 runs each, medians.

Twice: with both files on tmpfs, where an fsync costs nothing and the figure is the
client's own pace (the target: chainer >= 0.8 x curl, RSS < 100 MB), and on the disk,
where chainer's file is durable when it returns and curl's only in the page cache; the
disk line shows what the disk allows, and is not the target.

    .venv/bin/python bench/download.py [--smoke]
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, Result, main_for, test_pattern

from chainer import media

CLIENT = """
import sys, time, anyio
from pathlib import Path
from chainer import downloads
async def main():
    with downloads.blocking_client(timeout=600) as http:
        started = time.perf_counter()
        got = await downloads.download(http, sys.argv[1], Path(sys.argv[2]), reported_duration=float(sys.argv[3]))
        took = time.perf_counter() - started
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(got.size, took, int(hwm) / 1024)
anyio.run(main)
"""


def padded_video(dest: Path, size: int) -> float:
    """Write a valid MP4 of exactly `size` bytes (a short clip plus a `free` box); its duration."""
    clip = test_pattern(dest.with_suffix(".clip.mp4"), size="320x180", seconds=2)
    data = clip.read_bytes()
    pad = size - len(data)
    with dest.open("wb") as f:
        f.write(data)
        f.write(pad.to_bytes(4, "big") + b"free")
        block = b"\0" * (1 << 20)
        left = pad - 8
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    clip.unlink()
    return media.probe(dest).duration


def serve(path: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    repr_digest = f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(size))
            self.send_header("Repr-Digest", repr_digest)
            self.end_headers()
            with path.open("rb") as f:
                self.connection.sendfile(f)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/video.mp4"


def durable_write_s(dest: Path, size: int) -> float:
    """Seconds to write `size` bytes and fdatasync them: the disk's own bound for any
    download that is durable when it returns (as chainer's is)."""
    block = b"\0" * (4 << 20)
    os.sync()
    started = time.perf_counter()
    with dest.open("wb", buffering=0) as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
        os.fdatasync(f.fileno())
    took = time.perf_counter() - started
    dest.unlink()
    return took


def chainer_once(url: str, dest: Path, duration: float) -> tuple[float, float]:
    """One chainer download in its own process: (seconds, peak RSS MB)."""
    os.sync()  # neither client pays for the other's (or the setup's) unwritten pages
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, url, str(dest), str(duration)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=True,
    )
    got, took, peak = proc.stdout.split()
    assert int(got) == dest.stat().st_size
    dest.unlink()
    return float(took), float(peak)


def curl_once(curl: str, url: str, dest: Path) -> tuple[float, float]:
    """One curl download: (seconds, seconds until its file is as durable as chainer's)."""
    os.sync()
    started = time.perf_counter()
    subprocess.run([curl, "-s", "-o", str(dest), url], check=True, timeout=600)
    took = time.perf_counter() - started
    with dest.open("rb") as f:
        os.fsync(f.fileno())
    durable = time.perf_counter() - started
    dest.unlink()
    return took, durable


def measure(url: str, work: Path, duration: float, runs: int) -> dict[str, float]:
    """chainer and curl alternating, `runs` each, writing into `work`: medians."""
    curl = shutil.which("curl")
    ours, peaks, theirs, durable = [], [], [], []
    for _ in range(runs):
        took, peak = chainer_once(url, work / "chainer.mp4", duration)
        ours.append(took)
        peaks.append(peak)
        if curl:
            c, d = curl_once(curl, url, work / "curl.mp4")
            theirs.append(c)
            durable.append(d)
    nan = float("nan")
    return {
        "chainer s": statistics.median(ours),
        "chainer peak RSS MB": max(peaks),
        "curl s": statistics.median(theirs) if theirs else nan,
        "curl + fsync s": statistics.median(durable) if durable else nan,
        "ratio": statistics.median(theirs) / statistics.median(ours) if theirs else nan,
    }


def run(smoke: bool) -> Result:
    size = (20 if smoke else 500) * 1_000_000
    runs = 1 if smoke else RUNS
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=memory) as tmp, tempfile.TemporaryDirectory() as on_disk:
        video = Path(tmp) / "big.mp4"
        duration = padded_video(video, size)
        server, url = serve(video)
        try:
            fast = measure(url, Path(tmp), duration, runs)
            disk = measure(url, Path(on_disk), duration, runs)
            durable = size / 1e6 / durable_write_s(Path(on_disk) / "disk.bin", size)
        finally:
            server.shutdown()
    mb = size / 1e6
    place = "tmpfs" if memory else "the temporary folder (no /dev/shm here)"
    return Result(
        name="download",
        command="bench/download.py" + (" --smoke" if smoke else ""),
        figures={
            "size MB": mb,
            "runs": runs,
            f"on {place}: chainer s (download, sha-256, fsync, probe, rename)": fast["chainer s"],
            f"on {place}: chainer MB/s": mb / fast["chainer s"],
            f"on {place}: curl MB/s": mb / fast["curl s"],
            "chainer peak RSS MB (highest run)": max(
                fast["chainer peak RSS MB"], disk["chainer peak RSS MB"]
            ),
            "on disk: chainer MB/s (its file fsynced)": mb / disk["chainer s"],
            "on disk: curl MB/s (its file in the page cache)": mb / disk["curl s"],
            "on disk: curl + fsync of its file MB/s": mb / disk["curl + fsync s"],
            "on disk: chainer / curl": disk["ratio"],
            "this disk: write + fdatasync of as many bytes, MB/s": durable,
        },
        ratio_name=f"chainer / curl throughput on {place} (median of runs)",
        ratio=fast["ratio"],
        target=">= 0.8 and peak RSS < 100 MB",
        met=fast["ratio"] >= 0.8 and fast["chainer peak RSS MB"] < 100,
        notes=[
            "on disk chainer waits for its fsync and curl does not: compare chainer with 'curl + fsync' "
            "and the disk's own write + fdatasync rate there (that rate swings from 300 to 2,500 MB/s "
            "between runs on this VM)",
        ],
        why_missed=(
            "the event loop's cost per read is gone (bodies are read by a worker thread, 1 MB a "
            "read, hashed in another); what is left is Python's work per chunk on two cores shared "
            "with the sendfile server"
        ),
    )


RUNS = 3


if __name__ == "__main__":
    main_for(run)
