"""Team mode end to end: `chainer submit` and `chainer worker` processes sharing one account and
one journal on a real PostgreSQL server (a throwaway cluster on loopback), against a real
simulator on loopback. What is asserted is what a studio would check: every chain done once,
the account's limit kept across machines, no task paid for twice, nothing secret stored."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import psycopg
from helpers import CHAINER

from chainer.journal import Journal
from chainer.simulator import Simulator

STORYBOARD = """name: {name}
start:
  text2video: {{prompt: "team shot {name}", model: kling-v1-6, duration: 5}}
segments:
  - prompt: "the camera moves on"
output: out/{name}.mp4
"""


def storyboards(folder: Path, count: int, prefix: str = "c") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:02d}.yaml"
        path.write_text(STORYBOARD.format(name=f"{prefix}{i:02d}"))
        paths.append(path)
    return paths


def chainer(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHAINER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_worker(cwd: Path, env: dict[str, str], name: str, *args: str) -> subprocess.Popen[str]:
    log = open(cwd / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [CHAINER, "worker", "--until-idle", "--state-dir", f".{name}", *args],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def creates(sim: Simulator) -> list[dict[str, object]]:
    return list(httpx.get(f"{sim.base_url}/_sim/creates").json())


def per_step(sim: Simulator) -> Counter[str]:
    """Creates by external_task_id's chain-and-step part (attempt 1 each: no retries here)."""
    return Counter(str(c["body"]["external_task_id"]) for c in creates(sim))  # type: ignore[index]


def test_three_workers_share_one_account_limit(sim_factory, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """3 workers, 12 chains, an account of limit 2 (the simulator would take 4): the limit is
    kept across workers, every chain is done once, and no step is created twice."""
    sim = sim_factory(concurrency=4)
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    paths = storyboards(tmp_path / "boards", 12)
    submitted = chainer(tmp_path, env, "submit", *map(str, paths))
    assert submitted.returncode == 0, submitted.stderr
    assert "Queued 12 chain(s)" in submitted.stdout
    workers = [start_worker(tmp_path, env, f"w{i}", "--concurrency", "2", "--chains", "3") for i in range(3)]
    codes = [w.wait(timeout=300) for w in workers]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    assert codes == [0, 0, 0], logs
    stats = httpx.get(f"{sim.base_url}/_sim/stats").json()
    assert stats["peak_concurrency"] <= 2, stats
    made = per_step(sim)
    assert len(made) == 24 and set(made.values()) == {1}, made  # 12 chains x 2 steps, once each
    with Journal(pg_url) as journal:
        assert sorted(c.name for c in journal.chains()) == [f"c{i:02d}" for i in range(12)]
        assert all(journal.summary(c.name).state == "done" for c in journal.chains())
    for i in range(12):
        assert (tmp_path / "out" / f"c{i:02d}.mp4").stat().st_size > 0
    took = sum(log.count("Took chain") for log in logs)
    assert took == 12, logs


def test_a_killed_workers_chain_is_finished_by_another_with_no_second_create(
    sim_factory, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A worker killed (SIGKILL, by its own failpoint) right after the provider answered the
    create of step 1 and before the task id was committed: the one window where only the
    provider knows the task. Once its lease has run out another worker takes the chain over,
    finds the task by its external_task_id and goes on: no second create."""
    sim = sim_factory()
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    (path,) = storyboards(tmp_path / "boards", 1, prefix="k")
    assert chainer(tmp_path, env, "submit", str(path)).returncode == 0
    first = start_worker(tmp_path, {**env, "CHAINER_FAILPOINT": "after-post@1"}, "first", "--lease", "1")
    assert first.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    assert len(creates(sim)) == 2  # step 1's task exists; the journal does not know its id
    status = chainer(tmp_path, env, "status", "--json")
    row = json.loads(status.stdout.splitlines()[0])
    assert row["chain"] == "k00" and row["state"] in ("running", "queued"), status.stdout
    second = start_worker(tmp_path, env, "second", "--lease", "1")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    assert "found task" in (tmp_path / "second.log").read_text()  # reconciled, not re-created
    made = per_step(sim)
    assert len(made) == 2 and set(made.values()) == {1}, made
    with Journal(pg_url) as journal:
        assert journal.summary("k00").state == "done"
        taken = journal.db.execute("SELECT taken FROM chainer_queue WHERE chain = 'k00'").fetchone()
        assert taken is not None and taken["taken"] == 2  # taken, then taken over
        assert not journal.db.execute("SELECT * FROM chainer_slots WHERE held > 0").fetchall()
    assert (tmp_path / "out" / "k00.mp4").stat().st_size > 0


def test_a_chain_submitted_while_no_worker_runs_waits_for_the_next(
    sim_factory, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    (path,) = storyboards(tmp_path / "boards", 1, prefix="q")
    assert chainer(tmp_path, env, "submit", str(path)).returncode == 0
    status = chainer(tmp_path, env, "status", "--json")
    assert json.loads(status.stdout)["state"] == "queued", status.stdout
    assert status.returncode == 0  # a queued chain needs no one
    assert creates(sim) == []  # submit sends nothing to the provider
    late = start_worker(tmp_path, env, "late")
    assert late.wait(timeout=300) == 0, (tmp_path / "late.log").read_text()
    status = chainer(tmp_path, env, "status", "--json")
    assert json.loads(status.stdout)["state"] == "done", status.stdout
    # No credential of the user's is kept in the shared database.
    secrets = [env["KLING_ACCESS_KEY"], env["KLING_SECRET_KEY"]]
    with psycopg.connect(pg_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = "".join(str(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables)
    assert "chainer_queue" in tables and len(dump) > 1000
    assert not any(s in dump for s in secrets)
