"""Make an example report in examples/report/ (offline, no credits):

    .venv/bin/python examples/make_report.py [FOLDER]

It runs storyboards/lighthouse.yaml on the simulator (small frames), then re-rolls its last
segment once, so the report shows an earlier take next to the current one. The folder is
made anew each time and is not committed (its task ids and times differ on every run).
Open examples/report/report.html in a browser; the contact sheet is
examples/report/archive/lighthouse/contact-sheet.png.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import anyio

from chainer import Session, load_plan
from chainer.report import ReportSection, write_report
from chainer.session import simulator_provider
from chainer.simulator import SimConfig, Simulator

ROOT = Path(__file__).resolve().parent.parent
STORYBOARD = ROOT / "storyboards" / "lighthouse.yaml"


async def main(here: Path, state: Path, sim: Simulator) -> None:
    plan = load_plan(STORYBOARD, output=here / "lighthouse.mp4")
    async with Session.open(
        state_dir=state,
        archive_dir=here / "archive",
        provider=simulator_provider(sim, time_scale=sim.config.time_scale),
    ) as session:
        await session.run(plan)
        last = len(plan.steps) - 1
        result = await session.run(plan, from_step=last)  # a second take of the last segment
        section = ReportSection(
            session.journal,
            session.archive_dir,
            [result],
            provider=session.provider.name,
            address=session.provider.base_url,
            simulated=True,
        )
        write_report([section], here / "report.html")
    print(f"wrote {here / 'report.html'} ({result.duration:.2f} s video, {result.units:g} units)")


if __name__ == "__main__":
    HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "examples" / "report"
    shutil.rmtree(HERE, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = SimConfig(time_scale=0.002, width=320, height=180, fps=24, seed=7)
        simulator = Simulator(config, data_dir=Path(tmp) / "sim").start()
        try:
            anyio.run(main, HERE.resolve(), Path(tmp) / "state", simulator)
        finally:
            simulator.stop()
    sys.exit(0)
