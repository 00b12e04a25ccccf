"""The account's slots counted in PostgreSQL (chainer.team.slots), two workers in one test:
each SharedSlots is one worker's view of the same account, on its own connection."""

from __future__ import annotations

import anyio
import pytest

from chainer.journal import Journal
from chainer.team.slots import SharedSlots


def worker_view(pg_url: str, ceiling: int = 2) -> tuple[Journal, SharedSlots]:
    journal = Journal(pg_url)
    return journal, SharedSlots(journal.db, "kling", ceiling, time_scale=0.0001)  # type: ignore[arg-type]


@pytest.fixture
def two(pg_url: str):  # type: ignore[no-untyped-def]
    a, b = worker_view(pg_url), worker_view(pg_url)
    for name in ("a1", "a2", "a3"):
        a[0].lock_chain(name)
    b[0].lock_chain("b1")
    yield a[1], b[1]
    a[0].close()
    b[0].close()


def test_a_second_worker_waits_for_a_slot_the_first_holds(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    order: list[str] = []

    async def main() -> None:
        await a.acquire(1, "a1")
        a.confirm("a1")
        await a.acquire(1, "a2")
        a.confirm("a2")
        assert b.in_flight == 2 and b.would_wait() and not b.may_create()

        async def late() -> None:
            await b.acquire(1, "b1")  # the account is full: waits for a's release
            order.append("b got a slot")

        async with anyio.create_task_group() as group:
            group.start_soon(late)
            for _ in range(5):
                await anyio.sleep(0)
            order.append("a releases")
            a.release("a1", created=True)
        assert a.in_flight == 2 and b.peak == 0 and a.peak == 2

    anyio.run(main)
    assert order == ["a releases", "b got a slot"]


def test_a_1303_one_worker_meets_lowers_the_limit_for_all(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two

    async def main() -> None:
        await a.acquire(1, "a1")
        a.confirm("a1")
        await b.acquire(1, "b1")  # the create that the account refuses
        b.rejected()
        b.release("b1", created=False)

    anyio.run(main)
    assert (a.limit, b.limit, a.rejections) == (1, 1, 1)
    assert a.would_wait() and b.would_wait()  # a's one task fills the learned limit


def test_the_limit_is_probed_upward_again_but_never_past_the_ceiling(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two

    async def cycle(slots: SharedSlots, chain: str, times: int) -> None:
        for _ in range(times):
            await slots.acquire(1, chain)
            slots.confirm(chain)
            slots.release(chain, created=True)

    async def main() -> None:
        await a.acquire(1, "a1")
        a.confirm("a1")
        a.rejected()  # limit 1
        a.release("a1", created=True)
        await cycle(b, "b1", 2)  # 2 x limit clean ends: one more
        assert a.limit == 2
        await cycle(a, "a2", 20)
        assert b.limit == 2  # the ceiling

    anyio.run(main)


def test_a_chain_taken_over_forgets_the_slots_its_dead_owner_held(pg_url: str) -> None:
    dead, slots = worker_view(pg_url)

    async def take() -> None:
        await slots.acquire(1, "c")
        slots.confirm("c")

    dead.lock_chain("c")
    anyio.run(take)
    assert slots.in_flight == 1
    # the owner dies: its lease runs out (made to, here) and another worker takes the chain
    dead.db.execute("UPDATE chainer_leases SET expires_at = 0")
    assert slots.in_flight == 0  # an expired lease of a chain no queue waits for counts nothing
    with Journal(pg_url) as heir:
        heir.lock_chain("c")
        assert slots.in_flight == 0  # forgotten: the heir counts what it finds in flight
    dead.close()
