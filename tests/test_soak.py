"""Soak: 10-step chains with lost create answers and 5xx errors injected, each killed at random
moments up to 3 times and resumed. Prints the totals; asserts none duplicated, none lost.

Chains run a few at a time (separate `chainer` processes sharing the journal and the
account), so the waits before each kill overlap. CHAINER_SOAK_ITERATIONS sets the number of
chains (CI runs the default, a short version).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import CHAINER, provider_env

from chainer import media
from chainer.journal import Journal
from chainer.simulator import Simulator

ITERATIONS = int(os.environ.get("CHAINER_SOAK_ITERATIONS", "8"))
#: Chains in flight at once (below the simulator's account limit of 5).
LANES = 4
STEPS = 10
EXTERNAL_ID = re.compile(r"^chainer-(?P<uid>[^-]+)-(?P<idx>\d{3})-a\d+-")


def storyboard(name: str) -> str:
    segments = "".join(f"  - prompt: 'segment {i}'\n" for i in range(1, STEPS))
    return f"name: {name}\nstart:\n  text2video: {{prompt: 'soak {name}'}}\nsegments:\n{segments}output: {name}.mp4\n"


def kill_and_finish(name: str, tmp_path: Path, env: dict[str, str], seed: int) -> int:
    """Run chain `name`, SIGKILL it at random moments 1-3 times, then run it to the end;
    returns the kills that landed."""
    rng = random.Random(seed)
    (tmp_path / f"{name}.yaml").write_text(storyboard(name))
    kills = 0
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
        [CHAINER, "run", f"{name}.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return kills


def creates_per_step(sim: Simulator, uids: dict[str, str]) -> Counter[tuple[str, int]]:
    """How many creates the simulator accepted for each (chain, step), from the
    external_task_id each create carried (every attempt of a step counts)."""
    chain_of = {uid: name for name, uid in uids.items()}
    counted: Counter[tuple[str, int]] = Counter()
    for create in sim.state.creates:
        match = EXTERNAL_ID.match(str(create.body.get("external_task_id", "")))
        assert match is not None, f"a create chainer did not send: {create.body}"
        counted[(chain_of[match["uid"]], int(match["idx"]))] += 1
    return counted


def test_soak_kills_and_lost_answers(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(lose_create_rate=0.25, error_rate=0.05, seed=7)
    names = [f"soak{n}" for n in range(ITERATIONS)]
    env = provider_env(sim)
    with ThreadPoolExecutor(LANES) as lanes:
        kills = sum(
            lanes.map(lambda n: kill_and_finish(names[n], tmp_path, env, seed=7 + n), range(ITERATIONS))
        )
    lost = 0
    with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
        assert journal.integrity_check() == "ok"
        uids = {}
        for name in names:
            chain = journal.chain(name)
            assert chain is not None
            uids[name] = chain.uid
            steps = journal.steps(name)
            lost += sum(
                1 for s in steps if s.state != "downloaded" or not s.file or not Path(s.file).is_file()
            )
            final = media.probe(tmp_path / f"{name}.mp4")
            assert abs(final.duration - (steps[-1].duration or 0)) <= 0.2
    counted = creates_per_step(sim, uids)
    assert set(counted) == {(name, idx) for name in names for idx in range(STEPS)}, "a step was never created"
    duplicates = sum(n - 1 for n in counted.values())
    lost_answers = sum(
        n for key, n in sim.state.requests.items() if key.startswith("POST") and key.endswith(" 502")
    )
    print(
        f"\nsoak: {ITERATIONS} chains x {STEPS} steps, {kills} kills, {lost_answers} lost create answers: "
        f"{duplicates} duplicate creates, {lost} lost results"
    )
    assert lost_answers > 0 and kills > 0, (
        "the faults must actually have happened for this test to mean anything"
    )
    assert duplicates == 0 and lost == 0
    assert len(sim.state.creates) == STEPS * ITERATIONS
