"""What every benchmark shares: a simulator in its own process, a naive baseline client,
process sampling, and one way to report a figure against its target.

The simulator runs in a separate process so that its rendering never competes with the
client being measured for the GIL; chainer runs in the benchmark's process (or in its
own, where its memory and CPU are measured). Everything is on 127.0.0.1 with fixed
seeds. Timings are what they are: nothing here asserts on them.
"""

from __future__ import annotations

import compileall
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chainer import receiver  # noqa: E402
from chainer.callbacks import CallbackHub  # noqa: E402
from chainer.provider.config import ProviderConfig  # noqa: E402
from chainer.session import simulator_provider  # noqa: E402
from chainer.simulator import SimConfig, client_env  # noqa: E402

_SIM_SCRIPT = """
import json, sys, time
from pathlib import Path
from chainer.simulator import SimConfig, Simulator
sim = Simulator(SimConfig(**json.loads(sys.argv[1])), data_dir=Path(sys.argv[2]), admin=True).start()
print(sim.base_url, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
sim.stop()
"""


@dataclass
class Sim:
    """A simulator in a child process; `base_url`, `config`, admin reads."""

    config: SimConfig
    base_url: str
    proc: subprocess.Popen[str]

    def admin(self, path: str) -> Any:
        return httpx.get(f"{self.base_url}/_sim/{path}", timeout=60).json()

    def tasks(self, since_ms: int = 0, until_ms: int = 1 << 62) -> list[dict[str, Any]]:
        """The simulator's record of the tasks created in [since_ms, until_ms]."""
        return [t for t in self.admin("tasks") if since_ms <= t["created_ms"] <= until_ms]

    def headers(self) -> dict[str, str]:
        """A fresh JWT for the official dialect."""
        now = int(time.time())
        claims = {"iss": self.config.access_key, "exp": now + 1800, "nbf": now - 5}
        return {"Authorization": f"Bearer {jwt.encode(claims, self.config.secret_key, algorithm='HS256')}"}

    def video_url(self, task: dict[str, Any]) -> str:
        """A fresh signed download url of `task`'s video (signed urls expire)."""
        url = f"{self.base_url}/v1/videos/{task['kind']}/{task['task_id']}"
        answer = httpx.get(url, headers=self.headers(), timeout=30).json()
        return answer["data"]["task_result"]["videos"][0]["url"]  # type: ignore[no-any-return]

    def provider(self) -> ProviderConfig:
        return simulator_provider(self, time_scale=self.config.time_scale)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        """Environment for a `chainer` subprocess talking to this simulator as Kling."""
        return client_env(self.config, self.base_url)


@contextmanager
def simulator(**settings: Any) -> Iterator[Sim]:
    """Start a simulator process with `settings` (SimConfig fields); stop it afterwards."""
    config = SimConfig(**{"width": 160, "height": 96, "seed": 1234, **settings})
    with tempfile.TemporaryDirectory(prefix="chainer-bench-sim-") as data:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SIM_SCRIPT, config.model_dump_json(), data],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stdout is not None and proc.stdin is not None
        base_url = proc.stdout.readline().strip()
        if not base_url:
            raise RuntimeError("the simulator process did not start")
        try:
            yield Sim(config, base_url, proc)
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---------------------------------------------------------------- the naive baseline


class NaiveClient:
    """How many existing scripts drive Kling: create, sleep a fixed interval, ask, repeat;
    download the result at the end. No journal, no archive of intermediates."""

    def __init__(self, sim: Sim, http: httpx.AsyncClient, interval: float):
        self.sim = sim
        self.http = http
        self.interval = interval

    async def create(self, kind: str, body: dict[str, Any]) -> str:
        while True:
            r = await self.http.post(
                f"{self.sim.base_url}/v1/videos/{kind}", json=body, headers=self.sim.headers()
            )
            data = r.json()
            if data.get("code") == 0:
                return str(data["data"]["task_id"])
            if data.get("code") in (1302, 1303):  # full: try again after one interval
                await anyio.sleep(self.interval)
                continue
            raise RuntimeError(f"create refused: {data}")

    async def wait(self, kind: str, task_id: str) -> dict[str, Any]:
        while True:
            await anyio.sleep(self.interval)
            r = await self.http.get(
                f"{self.sim.base_url}/v1/videos/{kind}/{task_id}", headers=self.sim.headers()
            )
            task = r.json()["data"]
            if task["task_status"] == "succeed":
                return task["task_result"]["videos"][0]  # type: ignore[no-any-return]
            if task["task_status"] == "failed":
                raise RuntimeError(f"task failed: {task}")

    async def chain(self, extensions: int, *, download_to: Path | None = None) -> dict[str, Any]:
        """A text2video start and `extensions` extensions, then one download of the result."""
        task = await self.create(
            "text2video", {"prompt": "start", "model_name": "kling-v1-6", "duration": "5"}
        )
        video = await self.wait("text2video", task)
        for n in range(extensions):
            task = await self.create("video-extend", {"video_id": video["id"], "prompt": f"segment {n + 1}"})
            video = await self.wait("video-extend", task)
        if download_to is not None:
            async with self.http.stream("GET", video["url"]) as r:
                with download_to.open("wb") as f:
                    async for block in r.aiter_bytes(1 << 20):
                        f.write(block)
        return video


# ---------------------------------------------------------------- inputs


def test_pattern(dest: Path, *, size: str, seconds: float, hue: int = 0) -> Path:
    """An H.264 MP4 test pattern made with chainer's own encoder settings."""
    from chainer import media

    args = [media.tools().ffmpeg, "-v", "error", "-y", "-f", "lavfi"]
    args += ["-i", f"testsrc2=size={size}:rate=24,hue=h={hue}", "-t", f"{seconds}"]
    for key, value in media.H264_OUTPUT.items():
        args += [f"-{key}", str(value)]
    subprocess.run([*args, str(dest)], check=True)
    return dest


async def run_batch(
    sim: Sim, work: Path, plans: list[Any], concurrency: int, *, hub: CallbackHub | None = None
) -> float:
    """chainer's library running `plans` at once against `sim` (with callbacks through
    `hub` if given); the seconds it took."""
    from chainer import Session

    async with Session.open(
        state_dir=work / "state",
        archive_dir=work / "archive",
        provider=sim.provider(),
        concurrency=concurrency,
        callbacks=hub,
    ) as session:
        started = time.perf_counter()
        results = await session.run_many(plans)
        assert all(r.state == "done" for r in results), results
        return time.perf_counter() - started


def write_storyboard(folder: Path, name: str, extensions: int, *, output: Path | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "start: {text2video: {prompt: start, model: kling-v1-6, duration: 5}}\n"
        f"segments:\n  - {{prompt: next segment, repeat: {extensions}}}\n"
        f"output: {output or folder / 'out' / f'{name}.mp4'}\n"
    )
    return path


def storyboard_folder(work: Path, prefix: str, chains: int) -> Path:
    """`work/storyboards` holding `chains` one-extension storyboards (outputs under work/out)."""
    folder = work / "storyboards"
    folder.mkdir()
    for n in range(chains):
        write_storyboard(folder, f"{prefix}{n:04d}", 1, output=work / "out" / f"{prefix}{n:04d}.mp4")
    return folder


def chainer_batch(sim: Sim, folder: Path, work: Path, chains: int) -> subprocess.Popen[bytes]:
    """`chainer run FOLDER` as its own process, all chains at once, talking to `sim`."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "chainer"),
            "run",
            str(folder),
            "--quiet",
            "--yes",  # thousands of units, on a simulator
            "--concurrency",
            str(chains),
            "--state-dir",
            str(work / "state"),
            "--archive-dir",
            str(work / "archive"),
        ],
        env=sim.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
    )


def until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Wait until `predicate()` holds; the seconds it took. TimeoutError after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("the benchmark's processes did not get there in time")
        time.sleep(step)
    return time.monotonic() - started


def now_ms() -> int:
    """Wall-clock milliseconds, the simulator's unit."""
    return int(time.time() * 1000)


# ---------------------------------------------------------------- process sampling


@dataclass
class Sample:
    rss_mb: float
    cpu_s: float
    at: float


def sample(pid: int) -> Sample:
    """Resident memory and CPU time (user + system) of process `pid`, now."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return Sample(rss_kb / 1024, cpu, time.monotonic())


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


# ---------------------------------------------------------------- reporting


@dataclass
class Result:
    """One benchmark's figures, its ratio against the baseline, and its target."""

    name: str
    command: str
    figures: dict[str, Any]
    ratio_name: str
    ratio: float
    target: str
    met: bool
    notes: list[str] = field(default_factory=list)
    #: Why the target was missed and what would fix it: shown only when it was missed.
    why_missed: str = ""

    def __post_init__(self) -> None:
        if self.why_missed and not self.met:
            self.notes.append(f"why missed, and what would fix it: {self.why_missed}")

    def show(self) -> None:
        print(f"== {self.name}  ({self.command})")
        for key, value in self.figures.items():
            print(f"   {key}: {fmt(value)}")
        print(
            f"   {self.ratio_name}: {self.ratio:.3f}   target {self.target}: {'met' if self.met else 'NOT met'}"
        )
        for note in self.notes:
            print(f"   note: {note}")

    def to_json(self) -> str:
        return json.dumps(self.__dict__, default=str)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


async def download(url: str, dest: Path) -> float:
    """Seconds a plain streaming download of `url` into `dest` takes."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http, http.stream("GET", url) as r:
        r.raise_for_status()
        with dest.open("wb") as f:
            async for block in r.aiter_bytes(1 << 20):
                f.write(block)
    return time.perf_counter() - started


def main_for(run: Callable[[bool], Result | list[Result]]) -> None:
    """The command line of one benchmark: `--smoke` for the tiny CI version, `--json` to
    print each result as one JSON line (run_all uses them)."""
    smoke = "--smoke" in sys.argv
    # chainer as installed: its bytecode current, so no start measured here pays for
    # compiling a module edited since (PYTHONDONTWRITEBYTECODE keeps Python from caching it)
    compileall.compile_dir(ROOT / "chainer", quiet=1)
    made = run(smoke)
    results = made if isinstance(made, list) else [made]
    for result in results:
        result.show()
    if "--json" in sys.argv:
        for result in results:
            print("RESULT " + result.to_json())


@asynccontextmanager
async def callback_receiver() -> AsyncIterator[CallbackHub]:
    """chainer's callback receiver on a free loopback port (the simulator posts to it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with receiver.receiving(f"http://127.0.0.1:{port}/hooks", f"127.0.0.1:{port}") as hub:
        yield hub
