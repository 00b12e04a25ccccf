"""Every stuck chain has a way forward that does not pay again (issue 22).

Each test drives a real `chainer` process into one stuck state on the simulator, then
follows the way out the message names, asserting what the user sees (exit code, message,
the command suggested) and what the provider saw (creates counted by the simulator).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import CHAINER, provider_env, write_storyboard

from chainer.simulator import Simulator

DAY = 86_400.0

STORY = """
name: stuck
start:
  text2video: {{prompt: "a lantern in fog", model: kling-v1-6}}
segments:
  - prompt: "{first}"
  - prompt: "the fog lifts"
output: out.mp4
"""


def chainer(sim: Simulator, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`chainer ARGS` as a process against `sim` (bounded by its work; the timeout is a safety net)."""
    return subprocess.run(
        [CHAINER, *args], cwd=cwd, env=provider_env(sim, **env), capture_output=True, text=True, timeout=300
    )


def kinds(sim: Simulator) -> list[str]:
    return [c.kind for c in sim.state.creates]


def test_a_lost_start_at_a_list_only_provider_is_finished_by_adopting_it(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(task_lookup="list", lose_create_rate=1.0)
    write_storyboard(tmp_path, STORY.format(first="a boat"), "stuck.yaml")
    lost = chainer(sim, tmp_path, "run", "stuck.yaml", KLING_TASK_LOOKUP="list")
    assert lost.returncode == 1
    made = sim.state.creates[0].task_id
    assert f"chainer adopt stuck 0 {made}   # text2video, created" in lost.stderr, lost.stderr
    status = chainer(sim, tmp_path, "status")
    assert "chainer adopt stuck 0 TASK_ID" in " ".join(status.stdout.split())
    sim.state.config.lose_create_rate = 0.0

    wrong = chainer(sim, tmp_path, "adopt", "stuck", "0", "999999")
    assert wrong.returncode == 2 and "has no text2video task 999999" in wrong.stderr
    adopted = chainer(sim, tmp_path, "adopt", "stuck", "0", made)
    assert adopted.returncode == 0, adopted.stderr
    assert f"step 0 of stuck is now task {made}" in adopted.stdout
    again = chainer(sim, tmp_path, "adopt", "stuck", "0", made)
    assert again.returncode == 2 and "is submitted" in again.stderr

    done = chainer(sim, tmp_path, "run", "stuck.yaml", KLING_TASK_LOOKUP="list")
    assert done.returncode == 0, done.stderr
    assert kinds(sim) == ["text2video", "video-extend", "video-extend"], "the start was never sent again"
    assert sim.state.creates[1].body["video_id"] == sim.state.tasks[made].video_id


def test_adopt_refuses_a_task_that_extends_another_video(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, STORY.format(first="[sim:fail] a boat"), "stuck.yaml")
    failed = chainer(sim, tmp_path, "run", "stuck.yaml")
    assert failed.returncode == 1
    start = sim.state.creates[0].task_id
    stranger = chainer(sim, tmp_path, "adopt", "stuck", "1", start)
    assert stranger.returncode == 2 and "already belongs to step 0" in stranger.stderr
    # a task on the account (made from another machine's state) that extends some other video
    write_storyboard(tmp_path, STORY.replace("stuck", "other").format(first="x"), "other.yaml")
    other = chainer(sim, tmp_path, "run", "other.yaml", "--state-dir", "elsewhere")
    assert other.returncode == 0, other.stderr
    foreign = next(
        c.task_id for c in sim.state.creates if c.kind == "video-extend" and c.body["prompt"] == "x"
    )
    refused = chainer(sim, tmp_path, "adopt", "stuck", "1", foreign)
    assert refused.returncode == 2 and "not this step's task" in refused.stderr


def test_a_retried_step_whose_answer_is_lost_is_reconciled_past_the_failed_attempt(
    sim_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(task_lookup="list")
    write_storyboard(tmp_path, STORY.format(first="[sim:fail] a boat"), "stuck.yaml")
    failed = chainer(sim, tmp_path, "run", "stuck.yaml", KLING_TASK_LOOKUP="list")
    assert failed.returncode == 1
    sim.state.config.fail_marker = "[never]"  # the provider would now accept the prompt
    sim.state.config.lose_create_rate = 1.0  # and every create's answer is lost
    retried = chainer(sim, tmp_path, "run", "stuck.yaml", "--retry-failed", KLING_TASK_LOOKUP="list")
    assert retried.returncode == 0, retried.stderr
    assert kinds(sim) == ["text2video", "video-extend", "video-extend", "video-extend"]
    retry = sim.state.creates[2]
    assert retry.body["video_id"] == sim.state.creates[1].body["video_id"], "both attempts extend step 0"


def test_a_result_deleted_before_it_was_archived_is_known_at_once_and_can_be_made_again(
    sim, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, STORY.format(first="a boat"), "stuck.yaml")
    killed = chainer(sim, tmp_path, "run", "stuck.yaml", CHAINER_FAILPOINT="mid-download@2")
    assert killed.returncode == -9
    sim.state.advance(31 * DAY)  # the provider deletes everything 30 days on
    archived = chainer(sim, tmp_path, "archive")
    assert archived.returncode == 1
    assert "stuck step 2: LOST: gone from the provider" in archived.stderr
    assert "step 2 of 'stuck'" in archived.stderr and "was not archived in time" in archived.stderr
    assert "--from-step 2" in archived.stderr
    # one retry: the stored url had expired, and the fresh one's query answers 'not found'
    assert archived.stderr.count("retry, attempt") <= 1, "a result the provider deleted is not retried"
    status = " ".join(chainer(sim, tmp_path, "status").stdout.split())
    assert "step 2 failed: LOST" in status and "--from-step 2" in status
    resumed = chainer(sim, tmp_path, "run", "stuck.yaml")
    assert resumed.returncode == 1 and "was not archived in time" in resumed.stderr
    creates = len(sim.state.creates)
    # step 1's video is gone too, so the re-roll starts from its archived file's last frame
    plain = chainer(sim, tmp_path, "run", "stuck.yaml", "--from-step", "2")
    assert plain.returncode == 1 and "--from-last-frame" in plain.stderr
    again = chainer(sim, tmp_path, "run", "stuck.yaml", "--from-step", "2", "--from-last-frame")
    assert again.returncode == 0, again.stderr
    assert kinds(sim)[creates:] == ["image2video"], "only the lost step is made again, as a hand-off"
    assert (tmp_path / "out.mp4").is_file()


def test_a_task_the_provider_forgets_stops_its_step_with_the_task_named(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_storyboard(tmp_path, STORY.format(first="a boat"), "stuck.yaml")
    killed = chainer(sim, tmp_path, "run", "stuck.yaml", CHAINER_FAILPOINT="polling@1")
    assert killed.returncode == -9
    forgotten = sim.state.creates[1].task_id
    with sim.state.lock:
        del sim.state.tasks[forgotten]  # the provider loses it
    stopped = chainer(sim, tmp_path, "run", "stuck.yaml")
    assert stopped.returncode == 1
    assert f"the provider no longer knows task {forgotten}" in stopped.stderr
    assert "chainer adopt stuck 1 TASK_ID" in stopped.stderr and "--retry-failed" in stopped.stderr
    status = " ".join(chainer(sim, tmp_path, "status").stdout.split())
    assert "failed" in status and f"no longer knows task {forgotten}" in status
    assert re.search(r"stuck\s+kling\s+failed", chainer(sim, tmp_path, "status").stdout)


def test_the_account_sweep_names_a_list_it_cannot_read_and_sweeps_the_others(
    sim_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import os

    sim = sim_factory(
        dialect="proxy",
        path_prefix="/kling",
        send_parent_task_id=True,
        prompt_max_chars=500,
        task_lookup="list",
        unlisted_kinds=["omni-video"],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "CHAINER_"))}
    env.update(
        KLING_API_KEY="sim-api-key",
        KLING_BASE_URL=sim.base_url,
        CHAINER_TIME_SCALE=str(sim.config.time_scale),
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINER, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    mine = STORY.replace("output: out.mp4", "provider: cometapi").format(first="a boat")
    write_storyboard(tmp_path, mine, "stuck.yaml")
    assert run("run", "stuck.yaml").returncode == 0
    outside = (
        STORY.replace("stuck", "other").replace("output: out.mp4", "provider: cometapi").format(first="x")
    )
    write_storyboard(tmp_path, outside, "other.yaml")
    assert run("run", "other.yaml", "--state-dir", "elsewhere").returncode == 0  # not in this journal
    theirs = {sim.state.tasks[c.task_id].video_id for c in sim.state.creates[3:]}

    swept = run("archive", "--account")
    assert swept.returncode == 1
    assert f"task list GET {sim.base_url}/kling/v1/videos/omni-video: cannot be read" in swept.stderr
    saved = set(re.findall(r"account video (\S+): saved", swept.stdout))
    assert saved == theirs, "the other lists were swept, and none of this journal's own videos"
    assert "3 result(s) saved; 1 problem(s)." in swept.stdout


def test_the_run_summary_peak_counts_only_tasks_the_account_held(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    write_storyboard(tmp_path, STORY.format(first="a boat"), "stuck.yaml")
    killed = chainer(sim, tmp_path, "run", "stuck.yaml", CHAINER_FAILPOINT="polling@2")
    assert killed.returncode == -9
    last = sim.state.tasks[sim.state.creates[-1].task_id]
    sim.state.advance(max(0.0, (last.done_ms - sim.state.now_ms()) / 1000) + 1)  # its time has come
    assert last.render is not None
    last.render.result(timeout=120)  # and its video is rendered (bounded by that work)
    assert sim.state.status(last) == "succeed"
    resumed = chainer(sim, tmp_path, "run", "stuck.yaml", "--summary", "sum.json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "sum.json").read_text())
    # the resumed task had already ended and nothing was created: the account held nothing
    assert summary["peak_concurrency"] == 0 and len(sim.state.creates) == 3
