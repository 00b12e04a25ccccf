"""Money and results safe at the edges a paying user walks first (issue 16).

Each test plays one user's habit (a typo in a URL, a cron job without its environment, a
folder that cannot be written, a huge target, an edited storyboard, a proxy that ignores
external_task_id) and asserts what that user sees and what the provider saw.
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import anyio
import pytest
from helpers import CHAINER, provider_env, write_storyboard

from chainer import load_plan
from chainer.errors import ConfigError, WriteError
from chainer.events import ChainResult
from chainer.simulator import Simulator

SHORT = """
name: {name}
start:
  text2video: {{prompt: "a harbour at dawn {name}", model: kling-v1-6}}
segments:
  - prompt: "boats leave"
  - prompt: "gulls follow"
"""


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chainer(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`chainer ARGS` run as a process in `cwd` (bounded by its work; the timeout is a safety net)."""
    return subprocess.run([CHAINER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def creates_per_step(sim: Simulator) -> collections.Counter[str]:
    """How many creates the simulator received for each (chain instance, step), by the
    external_task_id chainer derives: chainer-<uid>-<step>-a<attempt>-<fingerprint>."""
    counted: collections.Counter[str] = collections.Counter()
    for create in sim.state.creates:
        ext = str(create.body.get("external_task_id"))
        match = re.fullmatch(r"chainer-([0-9a-f]+)-(\d{3})-a\d+-[0-9a-f]+", ext)
        assert match, f"a create without chainer's external_task_id: {ext}"
        counted[f"{match[1]}:{match[2]}"] += 1
    return counted


# ---------------------------------------------------------------- case 1: a wrong base URL


def test_an_unreachable_base_url_stops_soon_with_the_url_and_every_retry_shown(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{refused_port()}"
    sb = write_storyboard(tmp_path, SHORT.format(name="wrongurl"))
    env = {
        "PATH": "/usr/bin:/bin",
        "KLING_ACCESS_KEY": "a",
        "KLING_SECRET_KEY": "b",
        "KLING_BASE_URL": url,
    }
    # The bound is the work (a handful of refused connections), not the assertion.
    proc = chainer(tmp_path, env, "run", str(sb), "--verbose", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode != 0
    assert f"{url}/v1/videos/text2video was never sent" in proc.stderr
    assert "nothing accepts connections there" in proc.stderr
    assert "Nothing was created or charged" in proc.stderr
    # every retry was shown as it happened, before the final error
    retries = [line for line in proc.stdout.splitlines() if ": retry " in line]
    assert len(retries) >= 2, proc.stdout
    assert all("create text2video, attempt" in line for line in retries)
    gave_up = re.search(r"gave up after (\d+) attempts in (\d+) s", proc.stderr)
    assert gave_up, proc.stderr
    assert int(gave_up[2]) < 60, "a wrong URL must be reported within a minute"
    # the step is back to planned: nothing is believed to exist
    status = chainer(tmp_path, env, "status", "--state-dir", str(tmp_path / "state"))
    shown = " ".join(status.stdout.split())
    assert "wrongurl kling interrupted 0/3" in shown and "chainer resume" in shown, status.stdout


# ---------------------------------------------------------------- case 6: a lookup assumed, not known


def test_a_provider_that_ignores_external_task_id_never_gets_a_create_twice(
    tmp_path: Path, open_session, sim_factory
) -> None:  # type: ignore[no-untyped-def]
    """The profile claims lookups by external_task_id; the provider accepts the field and
    throws it away, and loses 30 % of create answers. Not one step may be created twice."""
    sim = sim_factory(ignore_external_task_id=True, lose_create_rate=0.3, seed=7, concurrency=5)
    plans = [
        load_plan(write_storyboard(tmp_path, SHORT.format(name=f"c{n:02d}"), f"c{n:02d}.yaml"))
        for n in range(20)
    ]

    async def main() -> list[ChainResult]:
        async with open_session(sim) as session:
            assert session.provider.task_lookup == "external_id"  # the claim under test
            return await session.run_many(plans)

    results = anyio.run(main)
    lost = sum(n for key, n in sim.state.requests.items() if key.endswith(" 502"))
    assert lost >= 5, "the fault must actually have happened for this test to mean anything"
    counted = creates_per_step(sim)
    assert max(counted.values()) == 1, [k for k, n in counted.items() if n > 1]
    # lost extensions were found again by their parent video in the list; lost starts,
    # which nothing can identify there, wait for the user instead of being resent
    states = collections.Counter(r.state for r in results)
    assert states["done"] >= 5 and states["done"] + states["needs_attention"] == 20, states
    for r in results:
        if r.state == "needs_attention":
            assert "--resend-unknown" in r.message and "lookup by external_task_id" in r.message, r.message


# ---------------------------------------------------------------- case 2: no credentials in a real folder


def no_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}


def test_missing_credentials_never_let_the_simulator_touch_real_results(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, SHORT.format(name="paid"), "paid.yaml")
    real = chainer(tmp_path, provider_env(sim), "run", "paid.yaml", "--quiet")
    assert real.returncode == 0, real.stderr
    output, manifest = tmp_path / "out" / "paid.mp4", tmp_path / "archive" / "paid" / "manifest.json"
    before = {p: p.read_bytes() for p in (output, manifest, tmp_path / ".chainer" / "last-run.json")}
    assert json.loads(manifest.read_text())["simulated"] is False
    creates = len(sim.state.creates)

    # a cron job that lost its environment: refused, nothing written
    cron = chainer(tmp_path, no_credentials(), "run", "paid.yaml")
    assert cron.returncode == 2
    assert (
        "will not switch to the offline simulator" in cron.stderr
        and "journal-kling.sqlite: paid" in cron.stderr
    )
    assert "--simulate" in cron.stderr
    # asked for the simulator, the chain with real history is still refused
    asked = chainer(tmp_path, no_credentials(), "run", "paid.yaml", "--simulate")
    assert asked.returncode != 0 and "the offline simulator never runs it" in asked.stderr
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} changed"
    assert not (tmp_path / "archive-simulated" / "paid").exists()
    assert not list((tmp_path / "out").glob("*.simulated.mp4"))
    assert len(sim.state.creates) == creates

    # a rehearsal of another storyboard, asked for, is kept apart and says what it is
    write_storyboard(tmp_path, SHORT.format(name="rehearsal"), "rehearsal.yaml")
    rehearsal = chainer(
        tmp_path, no_credentials(), "run", "rehearsal.yaml", "--simulate", "--sim-time-scale", "0.0005"
    )
    assert rehearsal.returncode == 0, rehearsal.stderr
    assert "Done (simulated, no credits spent): out/rehearsal.simulated.mp4" in rehearsal.stdout
    assert (tmp_path / "out" / "rehearsal.simulated.mp4").is_file()
    assert not (tmp_path / "out" / "rehearsal.mp4").exists()
    sim_manifest = json.loads((tmp_path / "archive-simulated" / "rehearsal" / "manifest.json").read_text())
    assert sim_manifest["simulated"] is True and sim_manifest["provider"] == "simulator"
    report = (tmp_path / "archive-simulated" / "report.html").read_text()
    assert "chainer report (simulated)" in report and "No credits were spent" in report
    assert json.loads((tmp_path / ".chainer" / "last-run.simulated.json").read_text())["simulated"] is True
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} changed"
    real_report = (tmp_path / "archive" / "report.html").read_text()
    assert "Made by provider <b>" in real_report and "offline simulator" not in real_report


# ---------------------------------------------------------------- case 3: folders checked before spending


def test_a_folder_that_cannot_be_written_is_refused_before_any_create(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, SHORT.format(name="nowhere"), "nowhere.yaml")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    for flags, folder in (
        (["-o", "blocker/x.mp4"], "blocker"),
        (["--archive-dir", "blocker/archive"], "blocker/archive"),
    ):
        proc = chainer(tmp_path, provider_env(sim), "run", "nowhere.yaml", *flags)
        assert proc.returncode == 2, proc.stderr
        assert f"cannot write to {tmp_path / folder}" in proc.stderr and "Nothing was sent" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not sim.state.creates


def test_too_little_free_space_is_refused_before_any_create(
    sim, tmp_path: Path, open_session, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr("chainer.preflight.shutil.disk_usage", lambda p: real(p)._replace(free=2_000_000))
    plan = load_plan(write_storyboard(tmp_path, SHORT.format(name="big"), "big.yaml"))

    async def main() -> None:
        async with open_session(
            sim,
            provider_update={"offline": False},
            state_dir=tmp_path / "s",
            archive_dir=tmp_path / "a",
        ) as session:
            with pytest.raises(ConfigError) as caught:
                await session.run(plan)
            assert "2.0 MB free, but this run needs about" in str(caught.value)
            assert "big's results" in str(caught.value) and "Nothing was sent" in str(caught.value)

    anyio.run(main)
    assert not sim.state.creates


def test_an_output_that_fails_after_paying_leaves_everything_archived_and_status_truthful(
    sim, tmp_path: Path, open_session, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import errno

    from chainer import archive
    from chainer.journal import Journal

    plan = load_plan(write_storyboard(tmp_path, SHORT.format(name="full"), "full.yaml"))
    publish = archive.publish

    def full_disk(src: Path, dest: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main() -> ChainResult:
        async with open_session(sim, state_dir=tmp_path / "s", archive_dir=tmp_path / "a") as session:
            return await session.run(plan)

    monkeypatch.setattr(archive, "publish", full_disk)
    with pytest.raises(WriteError) as caught:
        anyio.run(main)
    message = str(caught.value)
    assert f"archived in {tmp_path / 'a' / 'full'}" in message and "No space left on device" in message
    assert "pays for nothing again" in message
    with Journal(tmp_path / "s" / "journal-simulator.sqlite") as journal:
        assert all(r.state == "downloaded" for r in journal.steps("full"))
        summary = journal.summary("full")
    assert summary.state == "in progress" and "was not written" in summary.attention
    assert (tmp_path / "a" / "full" / "manifest.json").is_file()
    creates = len(sim.state.creates)
    monkeypatch.setattr(archive, "publish", publish)
    result = anyio.run(main)
    assert result.state == "done" and result.output is not None and result.output.is_file()
    assert len(sim.state.creates) == creates, "writing the output again pays for nothing"


# ---------------------------------------------------------------- case 4: a guard on cost


def test_a_costly_run_is_not_started_without_a_yes(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, SHORT.format(name="long") + "target_duration: 3000\n", "long.yaml")
    plan = chainer(tmp_path, no_credentials(), "plan", "long.yaml")
    assert plan.returncode == 0 and "Estimated units: 750 " in plan.stdout, plan.stdout[-300:]
    proc = chainer(tmp_path, provider_env(sim), "run", "long.yaml")
    assert proc.returncode == 2
    assert (
        "this run may spend about 750 units" in proc.stderr
        and "above the confirmation threshold of 250" in proc.stderr
    )
    assert "Pass --yes" in proc.stderr and "Nothing was sent" in proc.stderr
    assert not sim.state.creates
    # a budget below the threshold is consent enough: it caps what the run may spend
    capped = chainer(tmp_path, provider_env(sim), "run", "long.yaml", "--max-units", "2", "--quiet")
    assert capped.returncode == 4, capped.stderr  # BudgetExceeded's exit code
    assert len(sim.state.creates) == 2
    assert "past the run's budget of 2 (--max-units)" in capped.stderr
    assert "is at out/long.partial.mp4; every result is archived" in capped.stderr
    assert (tmp_path / "out" / "long.partial.mp4").is_file() and not (tmp_path / "out" / "long.mp4").exists()


def test_a_batch_budget_caps_the_whole_run_and_a_stop_keeps_what_was_paid_for(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from chainer import media
    from chainer.journal import Journal

    for n in range(3):
        write_storyboard(tmp_path, SHORT.format(name=f"b{n}"), f"b{n}.yaml")
    proc = chainer(
        tmp_path,
        provider_env(sim),
        "run",
        "b0.yaml",
        "b1.yaml",
        "b2.yaml",
        "--max-units",
        "7",
        "--summary",
        "sum.json",
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert sum(c["units"] for c in summary["chains"]) <= 7
    stopped = [c for c in summary["chains"] if c["state"] == "needs_attention"]
    assert stopped and all("past the run's budget of 7 (--max-units)" in c["message"] for c in stopped)
    assert len(sim.state.creates) == 7, "the budget is used up to the last unit, no further"
    with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
        made = {(c.name, r.idx): r for c in journal.chains() for r in journal.steps(c.name) if r.task_id}
    assert len(made) == 7 and all(r.state == "downloaded" for r in made.values()), (
        "every paid result archived"
    )
    for chain in stopped:
        done = [r for (name, _), r in made.items() if name == chain["chain"]]
        if not done:
            continue
        partial = tmp_path / "out" / f"{chain['chain']}.partial.mp4"
        assert (
            f"is at {partial.relative_to(tmp_path)}" in chain["message"] or str(partial) in chain["message"]
        )
        last = max(done, key=lambda r: r.idx)
        assert abs(media.probe(partial).duration - (last.probed_duration or 0)) < 0.2
        assert not (tmp_path / "out" / f"{chain['chain']}.mp4").exists()


# ---------------------------------------------------------------- case 5: an edited storyboard mid-chain

EDITED = """
name: edited
start:
  text2video: {{prompt: "a quiet street", model: kling-v1-6}}
segments:
  - prompt: "a cat crosses"
  - prompt: "{second}"
  - prompt: "{third}"
"""


def interrupted_then_edited(sim: Simulator, tmp_path: Path, **edit: str) -> Path:
    """Run EDITED until step 2 is being polled, kill it there (SIGKILL), then edit the file."""
    sb = write_storyboard(tmp_path, EDITED.format(second="a dog follows", third="rain begins"), "edited.yaml")
    killed = chainer(
        tmp_path, provider_env(sim, CHAINER_FAILPOINT="polling@2"), "run", "edited.yaml", "--quiet"
    )
    assert killed.returncode == -9, killed.stderr
    sb.write_text(EDITED.format(**{"second": "a dog follows", "third": "rain begins", **edit}))
    return sb


def run_cli(sim: Simulator, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return chainer(tmp_path, provider_env(sim), *args)


def prompts_sent(sim: Simulator) -> list[str]:
    return [str(c.body.get("prompt")) for c in sim.state.creates]


def test_an_edit_of_a_step_already_sent_offers_both_ways_and_resume_finishes_as_begun(
    sim, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    interrupted_then_edited(sim, tmp_path, second="a horse gallops")
    refused = run_cli(sim, tmp_path, "run", "edited.yaml")
    assert refused.returncode == 1
    assert "(first changed step: 2), and step 2 was already sent (submitted)" in refused.stderr
    assert "`chainer resume edited`" in refused.stderr and "--from-step 2" in refused.stderr
    resumed = run_cli(sim, tmp_path, "resume", "edited")
    assert resumed.returncode == 0, resumed.stderr
    assert prompts_sent(sim) == ["a quiet street", "a cat crosses", "a dog follows", "rain begins"]
    assert (tmp_path / "out" / "edited.mp4").is_file()


def test_an_edit_of_a_step_already_sent_can_branch_with_the_new_text(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    interrupted_then_edited(sim, tmp_path, second="a horse gallops")
    branched = run_cli(sim, tmp_path, "run", "edited.yaml", "--from-step", "2")
    assert branched.returncode == 0, branched.stderr
    # the task in flight was finished and kept (paid for), then step 2 made anew with the new text
    assert prompts_sent(sim) == [
        "a quiet street",
        "a cat crosses",
        "a dog follows",
        "a horse gallops",
        "rain begins",
    ]
    manifest = json.loads((tmp_path / "archive" / "edited" / "manifest.json").read_text())
    earlier = [t for t in manifest["earlier_takes"] if t["index"] == 2]
    assert earlier and earlier[0]["prompt"] == "a dog follows" and earlier[0]["file"]
    assert (tmp_path / "archive" / "edited" / earlier[0]["file"]).is_file()
    assert [s["prompt"] for s in manifest["steps"]][2] == "a horse gallops"


def test_an_edit_of_steps_not_yet_sent_is_simply_taken(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    interrupted_then_edited(sim, tmp_path, third="snow falls instead")
    again = run_cli(sim, tmp_path, "run", "edited.yaml")
    assert again.returncode == 0, again.stderr
    assert prompts_sent(sim) == ["a quiet street", "a cat crosses", "a dog follows", "snow falls instead"]


def test_simulated_paths_are_apart_from_real_ones_and_stable() -> None:
    from chainer import simulated

    assert simulated.output_path(Path("out/x.mp4")) == Path("out/x.simulated.mp4")
    assert simulated.output_path(Path("out/x.simulated.mp4")) == Path("out/x.simulated.mp4")  # a resume
    assert simulated.archive_root(Path("/data/archive")) == Path("/data/archive-simulated")
    assert simulated.archive_url("s3://b/archive/") == "s3://b/archive-simulated"
    assert simulated.summary_path(Path(".chainer/last-run.json")) == Path(".chainer/last-run.simulated.json")
    assert simulated.is_simulated_journal(Path("journal-simulator-cometapi.sqlite"))
    assert not simulated.is_simulated_journal(Path("journal-kling.sqlite"))
    assert not simulated.is_simulated_provider("simulatorx")


def test_expected_bytes_count_each_part_from_its_own_start_and_stop_at_the_budget(tmp_path: Path) -> None:

    from chainer import preflight

    plan = load_plan(write_storyboard(tmp_path, SHORT.format(name="size") + "target_duration: 300\n"))
    assert plan.handoffs, "the plan must cross the cap for this test to mean anything"
    results, output = preflight.expected_bytes(plan, rate=1.0)
    # every result is its part's video so far: the sum restarts at each hand-off
    starts = [0.0] + [plan.steps[i - 1].max_total for i in plan.handoffs]
    parts = [s.max_total - max(b for b in starts if b <= s.max_total - 1e-9) for s in plan.steps]
    assert results == int(sum(parts) * preflight.MARGIN)
    assert output == int(plan.steps[-1].max_total * preflight.MARGIN)
    capped, capped_output = preflight.expected_bytes(plan, rate=1.0, max_units=2)
    assert capped == int((plan.steps[0].max_total + plan.steps[1].max_total) * preflight.MARGIN)
    assert capped_output == int(plan.steps[1].max_total * preflight.MARGIN)
    done, _ = preflight.expected_bytes(plan, rate=1.0, done=[s.index for s in plan.steps])
    assert done == 0


def test_a_batch_too_big_for_the_disk_is_told_in_a_few_lines(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from chainer import preflight

    real = shutil.disk_usage
    monkeypatch.setattr("chainer.preflight.shutil.disk_usage", lambda p: real(p)._replace(free=1_000))
    needs = [preflight.Need(tmp_path / f"c{n:04d}", 10_000, f"c{n:04d}'s results") for n in range(5000)]
    with pytest.raises(ConfigError) as caught:
        preflight.check(needs)
    message = str(caught.value)
    assert "and 4994 more" in message and len(message) < 1000, message
    assert "c0000's results 10.0 KB" in message and "Nothing was sent" in message
