"""The queue of writes: tokens are minted one member at a time and stored in ``$batch``es formed from what is ready.

A batch no longer waits for the slowest of 20 token requests: a member whose request is retried (a 502, a dropped
connection) holds only its own place in the window (:mod:`._window`) while the tokens minted meanwhile go on to
Graph. A batch is sent as soon as :data:`~defguard_entra.config.BATCH_LIMIT` tokens are ready, when no token request
is in flight any more (nothing else can come before a place is given back), or when the oldest ready token has
waited :data:`LINGER` seconds. So batches stay full while tokens come quickly and a partial one goes out when they
do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..config import BATCH_LIMIT
from .plan import Member

__all__ = ["LINGER", "WriteQueue"]

#: The longest a minted token waits for others to fill its batch (seconds).
LINGER = 0.05


class WriteQueue:
    """Members whose token is minted, waiting for their write; ``store`` writes one batch of them (and settles
    them). Counts the token requests in flight (:meth:`minting` / :meth:`minted`) to know when to send."""

    def __init__(
        self,
        store: Callable[[Sequence[Member]], Awaitable[None]],
        *,
        size: int = BATCH_LIMIT,
        linger: float = LINGER,
    ) -> None:
        self._store = store
        self._size = size
        self._linger = linger
        self.ready: list[Member] = []
        self.in_flight = 0
        self._writes: set[asyncio.Future[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None

    def minting(self) -> None:
        """A token request is about to be sent."""
        self.in_flight += 1

    def minted(self, member: Member | None) -> None:
        """A token request ended: ``member`` with its token to store, or ``None`` (nothing to store)."""
        self.in_flight -= 1
        if member is not None:
            self.ready.append(member)
        if len(self.ready) >= self._size or (self.ready and self.in_flight <= 0):
            self.flush()
        elif self.ready and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)

    def flush(self) -> None:
        """Send what is ready, in batches of at most ``size``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.ready:
            batch, self.ready = self.ready[: self._size], self.ready[self._size :]
            write = asyncio.ensure_future(self._store(batch))
            self._writes.add(write)
            write.add_done_callback(self._ended)

    def _ended(self, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None and self._error is None:
            self._error = write.exception()

    async def drain(self) -> None:
        """Send what is left and wait for every write (a write's unexpected error is raised here)."""
        self.flush()
        while self._writes:
            await asyncio.wait(list(self._writes))
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop: no more sending, the writes in flight are cancelled (the watchdog settles their members)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ready.clear()
        for write in list(self._writes):
            write.cancel()
