"""The window of tokens minted and not yet stored: places taken in order, given back one at a time.

Counted in tokens, not batches, so that a batch whose last few writes wait out a ``Retry-After`` holds only their
places while the next batch mints (see :mod:`.mint`).
"""

from __future__ import annotations

import asyncio
import collections

import attrs

__all__ = ["Places", "Window"]


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

    def give(self, n: int) -> None:
        self.free += n
        while self._waiters and self._waiters[0][0] <= self.free:
            need, waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= need
                waiter.set_result(None)


@attrs.define
class Places:
    """The places one batch holds in the window: given back as each token is stored, the rest at the end."""

    window: Window
    held: int

    def give(self, n: int = 1) -> None:
        n = min(n, self.held)
        self.held -= n
        self.window.give(n)
