"""Batch runs: many storyboards, one account, the concurrency limit kept full, not passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import provider_env
from typer.testing import CliRunner

from chainer.cli import app
from chainer.journal import Journal
from chainer.simulator import Simulator


def storyboards(folder: Path, count: int, *, extensions: int = 2, fail: set[int] = frozenset()) -> Path:  # type: ignore[assignment]
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        segments = "".join(
            f"  - prompt: 'chain {n} part {k}{' [sim:fail]' if n in fail and k == 1 else ''}'\n"
            for k in range(1, extensions + 1)
        )
        (folder / f"c{n:02d}.yaml").write_text(
            f"name: c{n:02d}\nstart:\n  text2video: {{prompt: 'chain {n}'}}\nsegments:\n{segments}"
            f"output: {folder.parent / 'out' / f'c{n:02d}.mp4'}\n"
        )
    return folder


def run(sim: Simulator, workdir: Path, *args: str) -> tuple[int, str, dict]:
    result = CliRunner().invoke(
        app,
        ["run", *args, "--state-dir", str(workdir / "state"), "--archive-dir", str(workdir / "archive")],
        env=provider_env(sim),
    )
    summary_path = workdir / "state" / "last-run.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return result.exit_code, result.output, summary


def rejected(sim: Simulator) -> int:
    return sum(n for key, n in sim.state.requests.items() if key.startswith("POST") and key.endswith(" 1303"))


def test_twelve_storyboards_at_concurrency_three(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(concurrency=3, time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 12)
    code, output, summary = run(sim, tmp_path, str(folder), "--concurrency", "3")
    assert code == 0, output
    assert sim.state.peak_concurrency <= 3
    assert sim.state.peak_concurrency == 3, "the limit should be kept full"
    assert rejected(sim) == 0, "told the right limit, chainer never causes a 1303"
    assert summary["done"] == 12 and summary["peak_concurrency"] == 3
    assert len(sim.state.creates) == 12 * 3
    assert all((tmp_path / "out" / f"c{n:02d}.mp4").is_file() for n in range(12))


def test_unknown_limit_is_learned_with_few_rejections(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(concurrency=4, time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 12)
    code, output, summary = run(sim, tmp_path, str(folder), "--concurrency", "10")
    assert code == 0, output
    tasks = 12 * 3
    bound = 1 + tasks // (2 * 4)  # the scheduler's documented guarantee
    assert 1 <= rejected(sim) <= bound, f"{rejected(sim)} rejected creates, bound {bound}"
    assert sim.state.peak_concurrency == 4, "throughput reaches the real limit"
    assert summary["concurrency_limit"] in (4, 5), "the learned limit stays at the account's (probing by one)"
    assert len(sim.state.creates) == tasks


def test_one_chain_failing_does_not_stop_the_others(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 4, fail={2})
    code, output, summary = run(sim, tmp_path, str(folder))
    assert code == 1
    states = {c["chain"]: c["state"] for c in summary["chains"]}
    assert states == {"c00": "done", "c01": "done", "c02": "failed", "c03": "done"}
    assert "content-safety" in next(c["message"] for c in summary["chains"] if c["chain"] == "c02")
    assert "3 of 4 chains done" in output


def test_an_account_error_stops_the_whole_batch_at_once(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(unit_budget=3, time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 4)
    # the packs look too small before anything is sent (issue 19); told to go on anyway:
    code, output, _ = run(sim, tmp_path, str(folder), "--ignore-balance")
    assert code == 1
    assert "1102" in output and "resource pack" in output
    assert len(sim.state.creates) == 3, "no create after the account said it cannot pay"


def test_duplicate_chain_names_are_refused_before_anything_is_sent(sim: Simulator, tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    text = "name: same\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q}]\noutput: %s\n"
    a.write_text(text % (tmp_path / "a.mp4"))
    b.write_text(text % (tmp_path / "b.mp4"))
    code, output, _ = run(sim, tmp_path, str(a), str(b))
    assert code == 2 and "two storyboards name the chain 'same'" in output
    assert not sim.state.creates


def test_a_chain_may_not_take_the_output_of_one_run_before(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A storyboard copied and renamed but not given its own output: the second run would
    have replaced the first chain's video. It is refused before anything is sent; in a batch
    only that chain stops."""
    sim = sim_factory(time_scale=0.002)
    text = "name: %s\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: q}]\noutput: %s\n"
    first, copy, other = tmp_path / "first.yaml", tmp_path / "copy.yaml", tmp_path / "other.yaml"
    first.write_text(text % ("first", tmp_path / "out.mp4"))
    copy.write_text(text % ("copy", tmp_path / "out.mp4"))
    other.write_text(text % ("other", tmp_path / "other.mp4"))
    assert run(sim, tmp_path, str(first))[0] == 0
    made, video = len(sim.state.creates), (tmp_path / "out.mp4").read_bytes()
    code, output, _ = run(sim, tmp_path, str(copy))
    assert code == 2 and "already the output of chain 'first'" in output
    assert len(sim.state.creates) == made and (tmp_path / "out.mp4").read_bytes() == video
    code, _, summary = run(sim, tmp_path, str(copy), str(other))
    states = {c["chain"]: c["state"] for c in summary["chains"]}
    assert code == 1 and states == {"copy": "failed", "other": "done"}
    assert (tmp_path / "out.mp4").read_bytes() == video


@pytest.mark.parametrize("listed", [True, False], ids=["list", "no-list"])
def test_a_batch_resumes_like_one_chain(sim_factory, tmp_path: Path, listed: bool) -> None:  # type: ignore[no-untyped-def]
    """Killed mid-batch, run again: every step created once. The resume's first look at
    the tasks in flight is the provider's list page, or each task by id where a provider
    has no list."""
    import subprocess

    from helpers import CHAINER

    unlisted = [] if listed else ["text2video", "video-extend"]
    sim = sim_factory(concurrency=3, time_scale=0.002, unlisted_kinds=unlisted)
    folder = storyboards(tmp_path / "boards", 6)
    env = provider_env(sim, CHAINER_FAILPOINT="after-post@2")  # dies when a chain's 2nd extension is created
    args = [
        CHAINER,
        "run",
        str(folder),
        "--state-dir",
        str(tmp_path / "state"),
        "--archive-dir",
        str(tmp_path / "a"),
    ]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    assert not any(t.listed for t in sim.state.tasks.values())
    done = subprocess.run(args, env=provider_env(sim), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert any(t.listed for t in sim.state.tasks.values()) == listed
    assert len(sim.state.creates) == 6 * 3, "every step of every chain created exactly once"
    with Journal(tmp_path / "state" / "journal-kling.sqlite") as journal:
        assert all(journal.summary(f"c{n:02d}").state == "done" for n in range(6))


def test_chains_the_network_stops_with_tasks_in_flight_need_attention_not_failed(
    sim_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Tasks paid for and still running when the provider cannot be reached: the chains
    stopped, they did not fail. The summary says so, and the next run finishes them with
    no second create."""
    import subprocess

    from helpers import CHAINER

    sim = sim_factory(concurrency=3, time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 2)
    dirs = ["--state-dir", str(tmp_path / "state"), "--archive-dir", str(tmp_path / "archive")]
    env = provider_env(sim, CHAINER_FAILPOINT="after-post@2")
    killed = subprocess.run([CHAINER, "run", str(folder), *dirs], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9
    unreachable = CliRunner().invoke(
        app, ["run", str(folder), *dirs], env=provider_env(sim, KLING_BASE_URL="http://127.0.0.1:9")
    )
    assert unreachable.exit_code == 1, unreachable.output
    summary = json.loads((tmp_path / "state" / "last-run.json").read_text())
    assert [c["state"] for c in summary["chains"]] == ["needs_attention"] * 2 and summary["failed"] == 0
    assert all("never sent" in c["message"] for c in summary["chains"])
    code, output, summary = run(sim, tmp_path, str(folder))
    assert code == 0, output
    assert len(sim.state.creates) == 2 * 3, "every step created exactly once"


def test_json_events_are_one_object_per_line(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(time_scale=0.002)
    folder = storyboards(tmp_path / "boards", 2, extensions=1)
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(folder),
            "--json",
            "--state-dir",
            str(tmp_path / "state"),
            "--archive-dir",
            str(tmp_path / "a"),
        ],
        env=provider_env(sim),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith("{") for line in lines), lines
    *events, summary = [json.loads(line) for line in lines]
    assert {e["chain"] for e in events} == {"c00", "c01"}
    assert sum(e["state"] == "done" for e in events) == 2
    assert all({"step", "steps", "state", "units", "at"} <= set(e) for e in events)
    # the last line sums the run up, so a script reading the stream needs nothing else
    assert summary["chain"] is None and summary["state"] == "summary"
    assert summary["done"] == 2 and summary["units"] == sum(c["units"] for c in summary["chains"]) > 0


def test_downloads_share_one_limit_across_chains(sim_factory, tmp_path: Path, open_session) -> None:  # type: ignore[no-untyped-def]
    import anyio

    from chainer import load_plan

    class Counting:
        """The session's download limiter, counting how many hold it at once."""

        def __init__(self, limit: int) -> None:
            self.limiter, self.now, self.peak = anyio.CapacityLimiter(limit), 0, 0

        async def __aenter__(self) -> None:
            await self.limiter.acquire()
            self.now += 1
            self.peak = max(self.peak, self.now)

        async def __aexit__(self, *exc: object) -> None:
            self.now -= 1
            self.limiter.release()

    sim = sim_factory(concurrency=8, time_scale=0.002, download_bytes_per_s=50_000)  # slow enough to overlap
    folder = storyboards(tmp_path / "boards", 6, extensions=1)
    counting = Counting(2)

    async def main() -> None:
        async with open_session(
            sim, state_dir=tmp_path / "s", archive_dir=tmp_path / "a", concurrency=8
        ) as session:
            session.downloads = counting  # type: ignore[assignment]
            await session.run_many([load_plan(p) for p in sorted(folder.glob("*.yaml"))])

    anyio.run(main)
    assert counting.peak == 2, f"downloads at once: {counting.peak}"
    assert len(list((tmp_path / "a").rglob("*.mp4"))) == 12
