"""Team mode end to end: `chainer submit` and `chainer worker` processes sharing one account and
one journal on a real PostgreSQL server (a throwaway cluster on loopback), against a real
simulator on loopback. What is asserted is what a studio would check: every chain done once,
the account's limit kept across machines, no task paid for twice, nothing secret stored."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
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


THREE_STEPS = """name: m00
start:
  text2video: {prompt: "a harbour at dawn", model: kling-v1-6, duration: 5}
segments:
  - prompt: "boats leave"
  - prompt: "the sun climbs"
output: out/m00.mp4
"""


def test_a_chain_taken_over_on_another_machine_gets_its_files_from_the_archive_mirror(
    sim_factory, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Two machines (two archive folders), one archive URL: the worker that takes a chain over
    takes the results the first one archived back from the mirror, verified, instead of
    depending on the dead machine's disk; the manifest names files, not one machine's paths."""
    sim = sim_factory()
    env = sim.client_env(CHAINER_JOURNAL=pg_url, CHAINER_ARCHIVE_URL=f"file://{tmp_path / 'mirror'}")
    (tmp_path / "m00.yaml").write_text(THREE_STEPS)
    assert chainer(tmp_path, env, "submit", "m00.yaml").returncode == 0
    first = start_worker(
        tmp_path, {**env, "CHAINER_FAILPOINT": "after-post@2"}, "first", "--lease", "1", "--archive-dir", "a"
    )
    assert first.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    with Journal(pg_url) as journal:
        archived = [r for r in journal.steps("m00") if r.state == "downloaded"]
    assert archived and all(str(tmp_path / "a") in str(r.file) for r in archived)
    shutil.rmtree(tmp_path / "a")  # the first machine is gone, and its disk with it
    second = start_worker(tmp_path, env, "second", "--lease", "1", "--archive-dir", "b")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert log.count("restored") >= len(archived), log
    made = per_step(sim)
    assert len(made) == 3 and set(made.values()) == {1}, made
    b, mirror = tmp_path / "b" / "m00", tmp_path / "mirror" / "m00"
    with Journal(pg_url) as journal:
        rows = journal.steps("m00")
        assert journal.summary("m00").state == "done"
    for r in rows:
        assert r.file is not None and Path(r.file).parent == b  # relocated to this machine
        assert (b / Path(r.file).name).read_bytes() == (mirror / Path(r.file).name).read_bytes()
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest == json.loads((mirror / "manifest.json").read_text())
    assert [s["file"] for s in manifest["steps"]] == [Path(r.file).name for r in rows]  # type: ignore[arg-type]
    assert str(tmp_path) not in json.dumps(manifest["steps"])


def test_run_status_and_resume_take_a_journal_on_the_server(sim_factory, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One machine using the team's journal directly: `chainer run --journal` leases its chain,
    counts its slots in the database, and any machine's `status`/`resume` sees the result."""
    sim = sim_factory()
    env = sim.client_env()
    (path,) = storyboards(tmp_path / "boards", 1, prefix="r")
    done = chainer(tmp_path, env, "run", str(path), "--journal", pg_url, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    status = chainer(elsewhere, {**env, "CHAINER_JOURNAL": pg_url}, "status", "--json")
    row = json.loads(status.stdout)
    assert (row["chain"], row["state"], row["steps_done"]) == ("r00", "done", 2), status.stdout
    assert "***" in row["journal"] or "@" in row["journal"]  # the server, not a file here
    again = chainer(elsewhere, {**env, "CHAINER_JOURNAL": pg_url}, "resume")
    assert again.returncode == 0 and "every chain is done" in again.stdout, again.stdout + again.stderr
    assert len(creates(sim)) == 2
    with Journal(pg_url) as journal:  # its slots were given back, its lease too
        assert journal.lock_holder("r00") is None
        assert not journal.db.execute("SELECT * FROM chainer_slots WHERE held > 0").fetchall()


def test_a_chain_that_cannot_run_here_stops_for_the_user_and_the_worker_goes_on(
    sim_factory, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    good, bad = storyboards(tmp_path / "boards", 2, prefix="s")
    bad.write_text(bad.read_text().replace("output: out/", "output: blocker/"))
    (tmp_path / "blocker").write_text("a file where the worker needs a folder")
    assert chainer(tmp_path, env, "submit", str(good), str(bad)).returncode == 0
    worker = start_worker(tmp_path, env, "w")
    assert worker.wait(timeout=300) == 1, (tmp_path / "w.log").read_text()  # a chain stopped for you
    status = chainer(tmp_path, env, "status", "--json")
    rows = {r["chain"]: r for r in map(json.loads, status.stdout.splitlines())}
    assert rows["s00"]["state"] == "done"
    assert "a worker stopped it" in rows["s01"]["needs"] and "blocker" in rows["s01"]["needs"], rows
    assert status.returncode == 1
    assert len(creates(sim)) == 2  # the stopped chain sent nothing


def test_an_edited_storyboard_is_not_queued_over_its_chain(sim_factory, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A worker runs a chain from the text it was submitted with: submitting an edited version
    of it is refused (exit 2, nothing queued) rather than silently ignored."""
    sim = sim_factory()
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    (path,) = storyboards(tmp_path / "boards", 1, prefix="e")
    assert chainer(tmp_path, env, "submit", str(path)).returncode == 0
    path.write_text(path.read_text().replace("the camera moves on", "the camera flies away"))
    again = chainer(tmp_path, env, "submit", str(path))
    assert again.returncode == 2 and "another version of this storyboard" in again.stderr, again.stderr
    with Journal(pg_url) as journal:
        assert [r.prompt for r in journal.steps("e00")][1] == "the camera moves on"
    assert chainer(tmp_path, env, "validate", str(path)).returncode == 0


def test_a_worker_whose_lease_was_taken_stops_running_that_chain(
    sim_factory, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A worker cut off from the journal longer than its lease loses the chain to another
    (made here by taking the lease in SQL): it stops running it at once and creates nothing
    more for it, and leaves the slot count to the new owner."""
    sim = sim_factory(time_scale=0.02)  # a task takes seconds: the lease is taken mid-task
    env = sim.client_env(CHAINER_JOURNAL=pg_url)
    (path,) = storyboards(tmp_path / "boards", 1, prefix="f")
    assert chainer(tmp_path, env, "submit", str(path)).returncode == 0
    worker = start_worker(tmp_path, env, "w", "--lease", "0.6")
    log = tmp_path / "w.log"
    try:
        while "submitted task" not in log.read_text():  # bounded by the worker's own work
            assert worker.poll() is None, log.read_text()
            time.sleep(0.02)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE chainer_leases SET owner = 'thief', expires_at = expires_at + 3600")
        while "Lost the lease of chain f00" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            time.sleep(0.02)
        with Journal(pg_url) as journal:
            assert journal.lock_holder("f00") == "thief"
            held = journal.db.execute("SELECT held FROM chainer_slots WHERE chain = 'f00'").fetchone()
            assert held is not None and held["held"] == 1  # the thief's to count, not released by the loser
    finally:
        worker.kill()
        worker.wait()
    assert len(creates(sim)) == 1  # nothing more was sent for the chain it lost
