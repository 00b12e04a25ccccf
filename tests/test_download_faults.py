"""Download fault matrix: every case ends with the exact original bytes at the final path,
or a typed error and nothing at the final path. Never a corrupt file where users look."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from chainer import downloads, errors, media
from chainer.retry import download_backoff, retrying
from chainer.simulator.video import Canvas, Scene, render


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("orig") / "v.mp4"
    render(
        path, scene=Scene(seed=5), canvas=Canvas(160, 96, 24), frames=240, segment=0, prompt="fault matrix"
    )
    return path.read_bytes()


class Server:
    """Serves `data` with Range/If-Range, misbehaving on purpose as `mode` says."""

    def __init__(self, data: bytes, mode: str, *, digest: bool = True):
        self.data, self.mode, self.digest, self.requests = data, mode, digest, 0
        self.ranges: list[str | None] = []
        self.release = threading.Event()  # a "stall" answer waits for it
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                server.ranges.append(self.headers.get("Range"))
                server.answer(self, server.requests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v.mp4?sig=x"

    def answer(self, h: BaseHTTPRequestHandler, n: int) -> None:
        data, size, mode = self.data, len(self.data), self.mode
        etag = '"v2"' if mode == "etag-change" and n > 1 else '"v1"'
        if mode == "expired":
            h.send_response(403)
            h.end_headers()
            return
        cut = {"cut@0": 0, "cut@1": 1, "cut@mid": size // 2, "cut@size-1": size - 1}.get(mode)
        if n == 1 and mode in ("ignore-range", "etag-change", "wrong-content-range"):
            cut = size // 2
        start = 0
        rng, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        status = 200
        if rng and mode != "ignore-range" and (if_range is None or if_range == etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            status = 206
            if start >= size:  # nothing left to send: what HTTP servers answer
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        body = data[start:]
        if (
            mode in ("flip", "flip-no-digest", "always-flip")
            and (n == 1 or mode == "always-flip")
            and start == 0
        ):
            flipped = bytearray(body)
            flipped[size // 2] ^= 0xFF
            body = bytes(flipped)
        if mode == "short" and n == 1:
            body = body[:-100]
        h.send_response(status)
        h.send_header("Content-Type", "video/mp4")
        h.send_header("ETag", etag)
        h.send_header("Content-Length", str(len(body)))
        if status == 206:
            sent_start = start + 10 if mode == "wrong-content-range" and n == 2 else start
            h.send_header("Content-Range", f"bytes {sent_start}-{size - 1}/{size}")
        if self.digest:
            h.send_header(
                "Repr-Digest", f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
            )
        h.end_headers()
        if mode == "stall" and n == 1:  # half the body, then nothing until released
            h.wfile.write(body[: size // 2])
            h.wfile.flush()
            self.release.wait()
            return
        if n == 1 and cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture
def serve(original: bytes) -> Iterator[object]:
    servers: list[Server] = []

    def make(mode: str, digest: bool = True) -> Server:
        servers.append(Server(original, mode, digest=digest))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(params=["blocking", "event loop"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which client reads the body: a worker thread on blocking sockets (what a Session uses on
    the network) or the event loop (what it uses under an in-process transport)."""
    return str(request.param)


@contextlib.asynccontextmanager
async def client(kind: str) -> AsyncIterator[downloads.Http]:
    if kind == "blocking":
        with downloads.blocking_client(timeout=60) as blocking:
            yield blocking
    else:
        async with httpx.AsyncClient(timeout=60) as http:
            yield http


def fetch(url: str, dest: Path, kind: str = "blocking", *, reported: float = 10.0) -> downloads.Downloaded:
    async def main() -> downloads.Downloaded:
        async with client(kind) as http:
            return await retrying(
                lambda: downloads.download(http, url, dest, reported_duration=reported),
                on=download_backoff,
                deadline_s=60,
            )

    return anyio.run(main)


@pytest.mark.parametrize(
    "mode,digest",
    [
        ("cut@0", True),
        ("cut@1", True),
        ("cut@mid", True),
        ("cut@size-1", True),
        ("ignore-range", True),
        ("etag-change", True),
        ("wrong-content-range", True),
        ("short", True),
        ("flip", True),
        pytest.param(
            "flip-no-digest",
            False,
            marks=pytest.mark.xfail(
                strict=True,
                reason="known limit: with no digest from the server, a byte flipped inside picture data "
                "can still decode cleanly, so it cannot be detected (measured: a full decode catches about "
                "2 in 3 positions); Repr-Digest / Content-MD5 close this",
            ),
        ),
    ],
)
def test_recoverable_faults_end_with_the_exact_file(
    serve, original: bytes, tmp_path: Path, mode: str, digest: bool, kind: str
) -> None:  # type: ignore[no-untyped-def]
    server = serve(mode, digest)
    dest = tmp_path / "out.mp4"
    got = fetch(server.url, dest, kind)
    assert dest.read_bytes() == original, f"{mode}: a corrupt file at the final path"
    assert got.sha256 == hashlib.sha256(original).hexdigest() and got.size == len(original)
    assert server.requests >= 2, "the fault happened and was recovered from"
    assert not dest.with_name("out.mp4.part").exists()


@pytest.mark.parametrize(
    "mode,error", [("expired", errors.UrlExpired), ("always-flip", errors.DownloadError)]
)
def test_unrecoverable_faults_end_with_a_typed_error(
    serve, tmp_path: Path, mode: str, error: type, kind: str
) -> None:  # type: ignore[no-untyped-def]
    server = serve(mode)
    dest = tmp_path / "out.mp4"
    with pytest.raises(error):
        fetch(server.url, dest, kind)
    assert not dest.exists(), "nothing at the final path"


def test_a_part_that_already_holds_every_byte_is_verified_and_kept(
    serve, original: bytes, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    """Killed after the last byte arrived, before the rename: the next download asks for
    the rest, the server answers 416 (nothing left), and the .part becomes the file."""
    server = serve("plain")
    dest = tmp_path / "out.mp4"
    (tmp_path / "out.mp4.part").write_bytes(original)
    stated = ["sha256", hashlib.sha256(original).hexdigest()]
    (tmp_path / "out.mp4.part.json").write_text(json.dumps({"validator": '"v1"', "digest": stated}))
    got = fetch(server.url, dest, kind)
    assert dest.read_bytes() == original and got.sha256 == stated[1] and got.size == len(original)
    assert server.ranges == [f"bytes={len(original)}-"], "asked only for what was missing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_a_file_that_is_not_the_reported_video_is_kept_aside(serve, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    server = serve("cut@mid")
    with pytest.raises(errors.VerificationFailed, match="provider reported 60"):
        fetch(server.url, tmp_path / "x.mp4", kind, reported=60.0)
    assert not (tmp_path / "x.mp4").exists() and (tmp_path / "x.mp4.rejected").exists()


def test_a_verified_download_is_probed_once_until_its_bytes_change(
    serve, original: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """ffprobe is a process per call: the verification's probe serves the contact-sheet
    picture and every frame read of the renamed file; a file changed since is probed again."""
    probed: list[str] = []
    real = media._probe_now
    monkeypatch.setattr(media, "_probe_now", lambda p: probed.append(Path(p).name) or real(p))
    dest = tmp_path / "out.mp4"
    got = fetch(serve("plain").url, dest)
    assert probed == ["out.mp4.part"]
    assert media.probe(dest).duration == got.probed_duration
    media.frame_at(dest, 1.0, width=64)
    assert probed == ["out.mp4.part"]
    with dest.open("r+b") as f:  # damaged in place: shorter, same inode
        f.truncate(len(original) // 2)
    with contextlib.suppress(errors.MediaError):
        media.probe(dest)
    assert probed == ["out.mp4.part", "out.mp4"]


def test_a_200_mb_download_keeps_memory_small(tmp_path: Path) -> None:
    import subprocess
    import sys

    from chainer import media

    big = tmp_path / "big.mp4"
    subprocess.run(
        [
            media.tools().ffmpeg,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-t",
            "100",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "0",
            "-pix_fmt",
            "yuv420p",
            str(big),
        ],
        check=True,
    )
    data = big.read_bytes()
    assert len(data) > 190_000_000
    client = tmp_path / "client.py"
    client.write_text(
        "import sys, anyio\nfrom pathlib import Path\nfrom chainer import downloads\n"
        "async def main():\n    with downloads.blocking_client(timeout=60) as http:\n"
        "        got = await downloads.download(http, sys.argv[1], Path(sys.argv[2]), reported_duration=100.0)\n"
        "    # VmHWM belongs to this process image (ru_maxrss would count the forking parent's pages)\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "    print(got.size, int(hwm) // 1024)\n"
        "anyio.run(main)\n"
    )
    server = Server(data, "plain")
    try:
        proc = subprocess.run(
            [sys.executable, str(client), server.url, str(tmp_path / "out.mp4")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    size, peak_mb = map(int, proc.stdout.split())
    print(f"\ndownloaded {size / 1e6:.0f} MB with a peak of {peak_mb} MB resident")
    assert size == len(data)
    assert peak_mb < 100


def test_a_cancelled_download_stops_its_threads_and_resumes_where_it_stopped(
    original: bytes, tmp_path: Path, kind: str
) -> None:
    """Ctrl-C mid-body: when download() returns, nothing writes the .part any more (its reader
    and hashing threads have ended), nothing is at the final path, and the next download asks
    for the rest with Range and ends with the exact bytes."""
    pad = (16 << 20) - len(original)  # a `free` box after the video: the same video, many reads
    data = original + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8)
    server = Server(data, "plain")
    dest, part = tmp_path / "out.mp4", tmp_path / "out.mp4.part"
    seen: list[int] = []

    async def interrupted() -> None:
        async with client(kind) as http:
            with anyio.CancelScope() as scope:

                def progress(done: int) -> None:
                    seen.append(done)
                    if len(seen) == 1:
                        (scope.cancel() if kind == "event loop" else anyio.from_thread.run_sync(scope.cancel))

                await downloads.download(http, server.url, dest, reported_duration=10.0, progress=progress)
            assert scope.cancelled_caught

    try:
        anyio.run(interrupted)
        assert not dest.exists() and part.stat().st_size == seen[-1]
        assert not [t for t in threading.enumerate() if t.name == "chainer-digest"]
        got = fetch(server.url, dest, kind)
    finally:
        server.close()
    assert dest.read_bytes() == data and got.size == len(data)
    assert server.ranges == [None, f"bytes={seen[-1]}-"]


def test_ctrl_c_while_the_server_stalls_does_not_wait_for_it(original: bytes, tmp_path: Path) -> None:
    """The blocking reader waits in recv() for a server that sends nothing more; a Ctrl-C
    shuts its socket down, so download() returns while the server still stalls (with no
    read timeout here, a reader left waiting would hang this test)."""
    server = Server(original, "stall")
    dest = tmp_path / "out.mp4"

    async def interrupted() -> None:
        with downloads.blocking_client(timeout=httpx.Timeout(10.0, read=None)) as http:
            with anyio.CancelScope() as scope:

                def progress(done: int) -> None:
                    anyio.from_thread.run_sync(scope.cancel)

                await downloads.download(http, server.url, dest, reported_duration=10.0, progress=progress)
            assert scope.cancelled_caught

    try:
        anyio.run(interrupted)  # returns only if the stalled read was ended: release is set below
        assert not dest.exists() and 0 < (tmp_path / "out.mp4.part").stat().st_size < len(original)
    finally:
        server.close()


def test_a_disk_that_refuses_the_bytes_mid_download_is_a_write_error(
    serve, original: bytes, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The helper thread's catch-up with the disk fails (a full or failing disk): the reader
    hears of it, the download ends as a WriteError that says what to do (not a retry that
    cannot help), and nothing is at the final path."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(downloads, "SYNC_EVERY", 1)
    monkeypatch.setattr(downloads.os, "fdatasync", failing)
    dest = tmp_path / "out.mp4"
    with pytest.raises(errors.WriteError, match=r"Input/output error.*Make room or fix"):
        fetch(serve("plain").url, dest, kind)
    assert not dest.exists()
