"""The journal's own contract, against each backend: a SQLite file and a PostgreSQL database.

The same state machine, transitions, reads and chain ownership must hold on both, so a team
that moves its journal to a server keeps every guarantee a single machine had."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from chainer.errors import ChainLocked, JournalError
from chainer.journal import SCHEMA_VERSION, Journal

STEPS = [(0, "text2video", "a lighthouse", "fp0"), (1, "video-extend", "night falls", "fp1")]


def make(journal: Journal, name: str = "c") -> None:
    journal.ensure_chain(
        name=name,
        storyboard="sb.yaml",
        storyboard_sha="sha1",
        provider="kling",
        model="kling-v1-6",
        mode="std",
        output="out.mp4",
        steps=STEPS,
        storyboard_text="name: c",
    )


def test_a_chain_is_made_once_with_its_planned_steps(journal_location: str) -> None:
    with Journal(journal_location) as journal:
        make(journal)
        make(journal)  # again: unchanged
        assert [(r.idx, r.kind, r.state, r.attempt) for r in journal.steps("c")] == [
            (0, "text2video", "planned", 1),
            (1, "video-extend", "planned", 1),
        ]
        chain = journal.chain("c")
        assert chain is not None and chain.storyboard_text == "name: c" and chain.state == "running"
    with Journal(journal_location) as again:  # reopened: same rows, schema current
        assert [c.name for c in again.chains()] == ["c"]
        assert again.integrity_check() == "ok"


def test_a_chain_recorded_again_takes_no_write_transaction(
    journal_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming a thousand chains records each again: that must not wait for the write lock
    (another worker may hold it) nor commit anything."""
    with Journal(journal_location) as journal:
        make(journal)
        monkeypatch.setattr(journal, "transaction", lambda: pytest.fail("a write for a chain it has"))
        make(journal)
        chain = journal.chain("c")
        assert chain is not None and chain.storyboard_text == "name: c"


def test_transitions_follow_the_state_machine_and_compare_before_they_set(journal_location: str) -> None:
    with Journal(journal_location) as journal:
        make(journal)
        row = journal.step("c", 0)
        with pytest.raises(JournalError, match="cannot go from planned to downloaded"):
            journal.transition(row, "downloaded")
        intent = journal.transition(row, "submit_intent", external_task_id="ext-0")
        with pytest.raises(JournalError, match="changed under us"):
            journal.transition(row, "submit_intent", external_task_id="ext-other")  # a stale row
        sent = journal.transition(intent, "submitted", task_id="t-0", submitted_at=100.0)
        assert journal.step("c", 0).external_task_id == "ext-0"
        assert journal.held_task_ids() == {"t-0"}
        assert journal.latest_created_task() == ("text2video", "t-0", "ext-0")
        assert journal.intent_time(sent) is not None
        with pytest.raises(ValueError, match="unknown step fields"):
            journal.transition(sent, "processing", color="red")


def test_failed_steps_get_new_attempts_and_every_unit_counts(journal_location: str) -> None:
    with Journal(journal_location) as journal:
        make(journal)
        row = journal.transition(journal.step("c", 0), "submit_intent", external_task_id="e")
        row = journal.transition(row, "submitted", task_id="t1", submitted_at=1.0)
        row = journal.transition(row, "failed", "refused", error="refused", units=1.0)
        again = journal.new_attempt(row, "retry")
        assert (again.attempt, again.state) == (2, "planned")
        assert [t.attempt for t in journal.takes("c")] == [1]
        assert journal.units("c") == 1.0
        assert journal.holder("t1") is not None and journal.holder("nope") is None


def test_replan_and_reroll_rewrite_only_what_was_not_sent(journal_location: str) -> None:
    with Journal(journal_location) as journal:
        make(journal)
        journal.replan(
            "c", 1, [(1, "video-extend", "edited", "fp1b"), (2, "video-extend", "new", "fp2")], "sha2", None
        )
        assert [(r.idx, r.prompt) for r in journal.steps("c")] == [
            (0, "a lighthouse"),
            (1, "edited"),
            (2, "new"),
        ]
        row = journal.transition(journal.step("c", 1), "submit_intent", external_task_id="e1")
        with pytest.raises(JournalError, match="already sent"):
            journal.replan("c", 1, STEPS, "sha3", None)
        journal.reroll("c", 1, [(1, "video-extend", "again", "fp1c")], "sha4")
        assert [(r.idx, r.attempt, r.state) for r in journal.steps("c")] == [
            (0, 1, "planned"),
            (1, 2, "planned"),
            (2, 2, "skipped"),
        ]
        assert journal.step("c", 1).prompt == "again" and row.attempt == 1


def test_provider_facts_and_budgets_are_kept(journal_location: str) -> None:
    with Journal(journal_location) as journal:
        make(journal)
        assert journal.fact("kling", "https://x", "lookup") is None
        journal.set_fact("kling", "https://x", "lookup", "no", "task t was not found")
        journal.set_fact("kling", "https://x", "lookup", "yes", "task u was found")
        fact = journal.fact("kling", "https://x", "lookup")
        assert fact is not None and (fact.value, fact.evidence) == ("yes", "task u was found")
        journal.set_max_units("c", 7.5)
        journal.set_chain_state("c", "done")
        chain = journal.chain("c")
        assert chain is not None and (chain.max_units, chain.state) == (7.5, "done")
        assert "c" in journal.last_events()


HOLD = """
import sys, time
from chainer.journal import Journal
j = Journal(sys.argv[1])
j.lock_chain("c")
print("held", flush=True)
time.sleep(60)
"""


def test_a_chain_has_one_owner_and_a_killed_owner_lets_go(journal_location: str) -> None:
    """Another process holding the chain is refused with its name; once that process is
    killed, the chain can be taken (flock: at once; a lease: when it runs out)."""
    with Journal(journal_location) as journal:
        make(journal)
    env = {**os.environ, "CHAINER_LEASE_SECONDS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, journal_location], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with Journal(journal_location) as journal:
            assert "pid" in (journal.lock_holder("c") or "")
            with pytest.raises(ChainLocked, match="is being run by pid"):
                journal.lock_chain("c")
    finally:
        holder.kill()
        holder.wait()
    os.environ["CHAINER_LEASE_SECONDS"] = "1"
    try:
        with Journal(journal_location) as journal:
            deadline = time.monotonic() + 30
            while journal.lock_holder("c") is not None:  # a lease runs out on the server's clock
                assert time.monotonic() < deadline, "the dead owner's lease never ran out"
                time.sleep(0.1)
            journal.lock_chain("c")
            assert "this process" in (journal.lock_holder("c") or "")
    finally:
        del os.environ["CHAINER_LEASE_SECONDS"]


def test_a_lease_is_renewed_while_its_owner_lives(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINER_LEASE_SECONDS", "0.6")
    with Journal(pg_url) as owner, Journal(pg_url) as other:
        make(owner)
        owner.lock_chain("c")
        for _ in range(4):  # several lease lengths: still held
            time.sleep(0.5)
            with pytest.raises(ChainLocked):
                other.lock_chain("c")
    with Journal(pg_url) as after:  # closed cleanly: the lease was given back at once
        assert after.lock_holder("c") is None


def test_a_server_journal_names_its_schema_and_refuses_a_bad_url(pg_url: str) -> None:
    with Journal(pg_url) as journal:
        assert journal.db.version() == SCHEMA_VERSION
        assert journal.folder is None
    bad = pg_url.rsplit(":", 1)[0] + ":1/nowhere"
    bad = bad.replace("postgres@", "postgres:secret@")
    with pytest.raises(JournalError, match="cannot reach the journal") as caught:
        Journal(bad)
    assert "secret" not in str(caught.value)
