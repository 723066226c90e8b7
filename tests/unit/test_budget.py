"""The collector's memory budget: shares grow, wait in turn, give back, time out."""

from __future__ import annotations

import asyncio

from shadowreplay.collector.budget import MemoryBudget, Share


async def test_shares_take_beyond_their_free_part_and_give_back() -> None:
    budget = MemoryBudget(1000)
    a, b = Share(budget, 100), Share(budget, 100)
    assert await a.cover(100, 1.0) and budget.used == 0  # within the free part
    assert await a.cover(700, 1.0) and budget.used == 600
    assert a.try_cover(400) and budget.used == 300  # shrinks
    assert not b.try_cover(900)  # 800 more would pass the limit
    assert b.try_cover(800) and budget.used == 1000
    a.release()
    b.release()
    assert budget.used == 0


async def waiters(budget: MemoryBudget, n: int) -> None:
    """Until ``n`` shares wait in the budget's queue (no clock: the loop runs until they do)."""
    for _ in range(1000):
        if len(budget._waiters) == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(budget._waiters)} waiters, not {n}")


async def test_a_share_waits_for_memory_in_turn_and_gives_up_at_its_deadline() -> None:
    budget = MemoryBudget(1000)
    holder, first, second = Share(budget, 0), Share(budget, 0), Share(budget, 0)
    assert holder.try_cover(900)
    order: list[str] = []

    async def want(share: Share, n: int, name: str, timeout: float) -> bool:
        ok = await share.cover(n, timeout)
        order.append(f"{name}:{ok}")
        return ok

    t1 = asyncio.create_task(want(first, 500, "first", 60.0))
    await waiters(budget, 1)
    t2 = asyncio.create_task(want(second, 50, "second", 60.0))  # fits now, but waits its turn
    await waiters(budget, 2)
    assert order == [] and budget.used == 900
    holder.shrink(400)  # 500 given back: first, then second
    assert await t1 and await t2
    assert order == ["first:True", "second:True"] and budget.used == 950
    late = Share(budget, 0)
    assert not await late.cover(500, 0.05)  # nothing given back in time
    assert budget.used == 950 and not budget._waiters


async def test_a_cancelled_or_too_big_waiter_leaves_nothing_behind() -> None:
    budget = MemoryBudget(100)
    holder, big, small = Share(budget, 0), Share(budget, 0), Share(budget, 0)
    assert holder.try_cover(100)
    assert not big.would_fit(101) and not await big.cover(101, 5.0)
    waiting = asyncio.create_task(big.cover(80, 60.0))
    await waiters(budget, 1)
    behind = asyncio.create_task(small.cover(10, 60.0))
    await waiters(budget, 2)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    holder.release()
    assert await behind and budget.used == 10 and not budget._waiters
