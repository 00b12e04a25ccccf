"""The scheduler on its own: slots, priority, learning the limit from 1303, probing up."""

from __future__ import annotations

import anyio

from chainer.scheduler import Scheduler


def test_slots_are_limited_and_longest_remaining_goes_first() -> None:
    order: list[str] = []

    async def main() -> None:
        s = Scheduler(1)
        await s.acquire(1)  # the one slot is taken
        s.confirm()

        async def wait(name: str, remaining: int) -> None:
            await s.acquire(remaining)
            s.confirm()
            order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "short", 2)
            tg.start_soon(wait, "long", 9)
            tg.start_soon(wait, "middle", 5)
            await anyio.wait_all_tasks_blocked()
            assert order == [] and s.in_flight == 1
            for _ in range(3):
                s.release(created=True)
                await anyio.wait_all_tasks_blocked()
        assert order == ["long", "middle", "short"]
        assert s.peak == 1

    anyio.run(main)


def test_a_1303_sets_the_limit_to_what_the_account_took() -> None:
    async def main() -> None:
        s = Scheduler(10)
        for _ in range(10):  # a burst: ten slots granted before any create is answered
            await s.acquire(3)
        for _ in range(4):
            s.confirm()  # four creates accepted
        assert s.may_create()
        s.rejected()  # the fifth refused: the account holds four
        assert s.limit == 4 and s.rejections == 1
        s.release(created=False)
        assert not s.may_create(), "the five other granted slots must not send creates now"
        assert s.confirmed == 4 and s.peak == 4

    anyio.run(main)


def test_the_limit_is_probed_up_after_clean_completions_but_not_past_the_ceiling() -> None:
    s = Scheduler(5)
    s.limit = 3
    for _ in range(5):
        s.force()
        s.release(created=True)
    assert s.limit == 3
    s.force()
    s.release(created=True)  # the sixth clean completion: 2 x 3
    assert s.limit == 4
    for _ in range(100):
        s.force()
        s.release(created=True)
    assert s.limit == 5, "never past the ceiling the user gave"


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        s = Scheduler(1)
        await s.acquire(1)
        with anyio.move_on_after(0.01):
            await s.acquire(3)
        assert not s._waiters and s.in_flight == 1
        s.release(created=True)
        assert s.in_flight == 0

    anyio.run(main)
