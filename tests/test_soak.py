"""Soak: a 10-step chain with lost create answers and 5xx errors injected, killed at random
moments up to 3 times and resumed. Prints the totals; asserts none duplicated, none lost.

CHAINER_SOAK_ITERATIONS sets the number of chains (CI runs the default, a short version).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from helpers import CHAINER, provider_env

from chainer import media
from chainer.journal import Journal

ITERATIONS = int(os.environ.get("CHAINER_SOAK_ITERATIONS", "20"))


def storyboard(name: str) -> str:
    segments = "".join(f"  - prompt: 'segment {i}'\n" for i in range(1, 10))
    return f"name: {name}\nstart:\n  text2video: {{prompt: 'soak {name}'}}\nsegments:\n{segments}output: {name}.mp4\n"


def test_soak_kills_and_lost_answers(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(lose_create_rate=0.25, error_rate=0.05, seed=7)
    rng = random.Random(7)
    kills = duplicates = lost = 0
    for n in range(ITERATIONS):
        name = f"soak{n}"
        (tmp_path / f"{name}.yaml").write_text(storyboard(name))
        env = provider_env(sim)
        for _ in range(rng.randint(1, 3)):
            proc = subprocess.Popen(
                [CHAINER, "run", f"{name}.yaml"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.5, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        done = subprocess.run(
            [CHAINER, "run", f"{name}.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
            steps = journal.steps(name)
            assert journal.integrity_check() == "ok"
        tasks = {s.task_id for s in steps}
        created = [c for c in sim.state.creates if c.task_id in tasks]
        by_step = {c.body["external_task_id"] for c in created}
        duplicates += len(created) - len(by_step)
        lost += sum(1 for s in steps if s.state != "downloaded" or not s.file or not Path(s.file).is_file())
        final = media.probe(tmp_path / f"{name}.mp4")
        assert abs(final.duration - (steps[-1].duration or 0)) <= 0.2
        assert len(created) == 10
    # every create the simulator accepted belongs to exactly one step of one chain
    assert len(sim.state.creates) == 10 * ITERATIONS, (
        f"{len(sim.state.creates)} creates for {10 * ITERATIONS} steps"
    )
    lost_answers = sum(
        n for key, n in sim.state.requests.items() if key.startswith("POST") and key.endswith(" 502")
    )
    print(
        f"\nsoak: {ITERATIONS} chains x 10 steps, {kills} kills, {lost_answers} lost create answers: "
        f"{duplicates} duplicate creates, {lost} lost results"
    )
    assert duplicates == 0 and lost == 0
