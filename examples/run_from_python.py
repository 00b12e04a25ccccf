"""Run a storyboard from Python, printing progress; uses the offline simulator when no
Kling credentials are configured.

    .venv/bin/python examples/run_from_python.py storyboards/lighthouse.yaml
"""

from __future__ import annotations

import sys

import anyio

from chainer import Event, Session, StoryboardError, load_plan


def show(event: Event) -> None:
    where = "start" if event.step == 0 else f"segment {event.step}/{event.steps}"
    print(f"{event.chain}: {where} {event.state} {event.message}")


async def main(path: str) -> int:
    try:
        plan = load_plan(path)
    except StoryboardError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(
        f"{plan.chain}: {len(plan.steps)} steps, about {plan.steps[-1].max_total:g} s, "
        f"~{plan.total_units:g} units (estimate)"
    )
    async with Session.open(state_dir=".chainer", archive_dir="archive") as session:
        if session.simulator is not None:
            print("using the offline simulator: no credits are spent")
        result = await session.run(plan, on_event=show)
    print(f"final video: {result.output} ({result.duration:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "storyboards/lighthouse.yaml"))
