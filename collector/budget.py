"""The collector's memory budget: one pool of bytes shared by every connection.

Each connection holds a ``Share``. What it holds (an incomplete frame's bytes, the
frame being decoded, records waiting for the bus) is measured at checkpoints and its
share grown or shrunk to match; the first ``free_bytes`` of each connection come
outside the pool, so a client that sends small chunks never waits for it. A share
that cannot grow waits, first come first served, for others to give bytes back (the
connection reads nothing meanwhile: TCP pushes back on its client), and gives up at
its deadline: the connection is then closed without acknowledging what it holds.
"""

from __future__ import annotations

import asyncio
import collections


class MemoryBudget:
    """``limit_bytes`` shared by every ``Share`` taken from it."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        # One entry per share waiting (a connection waits for one thing at a time).
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _try_take(self, n: int) -> bool:
        if self._waiters or self.used + n > self.limit:
            return False
        self.used += n
        return True

    async def _take(self, n: int, timeout: float) -> bool:
        """Take ``n`` bytes, waiting up to ``timeout`` seconds behind earlier waiters."""
        if self._try_take(n):
            return True
        if n > self.limit:
            return False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, done)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await done
        except BaseException as exc:  # timed out or cancelled: leave the queue
            if done.done() and not done.cancelled():
                self.give(n)  # granted at the last moment: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # a big waiter leaving may let smaller ones through
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def give(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, done = self._waiters[0]
            if self.used + n > self.limit:
                return
            self._waiters.popleft()
            self.used += n
            done.set_result(None)


class Share:
    """One connection's part of a ``MemoryBudget``, beyond its first ``free_bytes``."""

    def __init__(self, budget: MemoryBudget, free_bytes: int) -> None:
        self._budget = budget
        self._free = free_bytes
        self.held = 0  # bytes taken from the budget

    def would_fit(self, need: int) -> bool:
        """Whether ``need`` can ever be covered (it is within the pool and the free part)."""
        return need - self._free <= self._budget.limit

    def try_cover(self, need: int) -> bool:
        """Make the share cover ``need`` bytes if that takes no waiting."""
        want = max(0, need - self._free)
        if want <= self.held:
            self.shrink(need)
            return True
        if not self._budget._try_take(want - self.held):
            return False
        self.held = want
        return True

    def shrink(self, need: int) -> None:
        """Give back what ``need`` no longer uses (never waits)."""
        want = max(0, need - self._free)
        if want < self.held:
            self._budget.give(self.held - want)
            self.held = want

    async def cover(self, need: int, timeout: float) -> bool:
        """Make the share cover ``need`` bytes; False when the budget could not give
        enough within ``timeout`` seconds (or never could)."""
        want = max(0, need - self._free)
        if want <= self.held:
            self.shrink(need)
            return True
        if not await self._budget._take(want - self.held, timeout):
            return False
        self.held = want
        return True

    def release(self) -> None:
        if self.held:
            self._budget.give(self.held)
            self.held = 0
