"""Durable runs beyond crashes: schema migration, failed steps, budgets, a damaged archive."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import anyio
import pytest
from helpers import simulator_session

from chainer import errors, load_plan, media
from chainer.journal import MIGRATIONS, SCHEMA_VERSION, Journal
from chainer.simulator import Simulator

STORYBOARD = """
name: durable
start:
  text2video: {{prompt: "A lighthouse at dusk", model: kling-v1-6}}
segments:
  - prompt: "The camera pulls back"
  - prompt: "{second}"
  - prompt: "A boat appears"
output: {out}
{extra}
"""


def write(tmp_path: Path, second: str = "Night falls", extra: str = "") -> Path:
    path = tmp_path / "durable.yaml"
    path.write_text(textwrap.dedent(STORYBOARD).format(second=second, out=tmp_path / "out.mp4", extra=extra))
    return path


class Stop(Exception):
    pass


def run(
    sim: Simulator, tmp_path: Path, sb: Path, *, stop_at: tuple[int, str] | None = None, **options: object
) -> object:
    def on_event(event: object) -> None:
        if stop_at and (getattr(event, "step", None), getattr(event, "state", None)) == stop_at:
            raise Stop

    async def main() -> object:
        async with simulator_session(sim, tmp_path) as s:
            return await s.run(load_plan(sb), on_event=on_event, **options)  # type: ignore[arg-type]

    return anyio.run(main)


JOURNAL = "state/journal-simulator.sqlite"


def downgrade_to_v1(path: Path) -> None:
    """Turn a current journal into exactly what version 1 wrote: drop what migrations added."""
    db = sqlite3.connect(path)
    for version in range(SCHEMA_VERSION - 1, 0, -1):
        for statement in reversed(MIGRATIONS[version]):
            if statement.startswith("UPDATE"):
                continue  # a backfill of a column dropped next
            if statement.startswith("CREATE TABLE"):
                db.execute(f"DROP TABLE {statement.split()[2]}")
                continue
            table, column = statement.split()[2], statement.split()[5]
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_v1_journal_is_migrated_and_resumed(sim: Simulator, tmp_path: Path) -> None:
    sb = write(tmp_path)
    with pytest.raises(Stop):
        run(sim, tmp_path, sb, stop_at=(2, "submitted"))
    downgrade_to_v1(tmp_path / JOURNAL)
    db = sqlite3.connect(tmp_path / JOURNAL)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "submitted_at" not in {r[1] for r in db.execute("PRAGMA table_info(steps)")}
    db.close()

    run(sim, tmp_path, sb)
    assert [c.kind for c in sim.state.creates] == ["text2video"] + ["video-extend"] * 3
    with Journal(tmp_path / JOURNAL) as journal:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert journal.integrity_check() == "ok"
        assert [s.state for s in journal.steps("durable")] == ["downloaded"] * 4


def test_a_newer_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(errors.JournalError, match="newer chainer"):
        Journal(path)


def test_retry_failed_makes_a_new_attempt_with_a_new_external_id(sim: Simulator, tmp_path: Path) -> None:
    sb = write(tmp_path, second="forbidden [sim:fail]")
    with pytest.raises(errors.TaskFailed):
        run(sim, tmp_path, sb)
    with pytest.raises(errors.TaskFailed):  # a plain re-run does not pay again for a failed step
        run(sim, tmp_path, sb)
    assert len(sim.state.creates) == 3
    sim.config.fail_marker = "[never]"  # the provider now accepts the same prompt
    run(sim, tmp_path, sb, retry_failed=True)
    creates = sim.state.creates
    assert [c.kind for c in creates] == ["text2video"] + ["video-extend"] * 4
    failed, retried = creates[2], creates[3]
    assert failed.body["video_id"] == retried.body["video_id"], "the retry extends the same parent"
    assert failed.body["external_task_id"] != retried.body["external_task_id"]
    assert "-a1-" in failed.body["external_task_id"] and "-a2-" in retried.body["external_task_id"]
    assert media.probe(tmp_path / "out.mp4").duration > 17


def test_budget_stops_before_the_step_that_would_pass_it(sim: Simulator, tmp_path: Path) -> None:
    sb = write(tmp_path, extra="max_units: 2.5")
    with pytest.raises(errors.BudgetExceeded, match=r"past the budget of 2\.5"):
        run(sim, tmp_path, sb)
    assert len(sim.state.creates) == 2  # 1 + 1 units spent; the third would make 3 > 2.5
    run(sim, tmp_path, sb, max_units=10)  # the command line raises it: the chain continues
    assert len(sim.state.creates) == 4


def test_a_lost_archive_file_is_fetched_again_not_recreated(sim: Simulator, tmp_path: Path) -> None:
    sb = write(tmp_path)
    run(sim, tmp_path, sb)
    victim = sorted((tmp_path / "archive" / "durable").glob("001-*.mp4"))[0]
    original = victim.read_bytes()
    victim.write_bytes(original[:100])  # damaged on disk
    (tmp_path / "out.mp4").unlink()
    run(sim, tmp_path, sb)
    assert len(sim.state.creates) == 4
    assert victim.read_bytes() == original
