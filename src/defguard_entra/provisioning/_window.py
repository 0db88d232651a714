"""The window of tokens minted and not yet stored: places taken in order, given back one at a time.

Counted in tokens, one place per member from before its token is requested until its write is final, so that a
member whose token request is retried, or whose write waits out a ``Retry-After``, holds only its own place while
the others go on (see :mod:`.mint` and :mod:`._writes`).
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["Window"]


class Window:
    """At most ``size`` places, taken in order (first come, first served) and given back one by one."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def take(self, n: int) -> None:
        if not self._waiters and self.free >= n:
            self.free -= n
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(n)  # granted just as it was cancelled
            else:
                self._waiters.remove((n, waiter))
            raise

    async def take_some(self, most: int) -> int:
        """Wait for a free place, then take as many as are free, at most ``most`` (≥ 1): how many were taken.
        Places given back together (a batch's writes answered at once) are taken together."""
        await self.take(1)
        extra = 0 if self._waiters else max(0, min(self.free, most - 1))
        self.free -= extra
        return 1 + extra

    def give(self, n: int = 1) -> None:
        self.free += n
        while self._waiters and self._waiters[0][0] <= self.free:
            need, waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= need
                waiter.set_result(None)
