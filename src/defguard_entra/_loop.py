"""One private event loop in a daemon thread: how sync callers drive the async Graph code.

``asyncio.run()`` per call breaks twice: a second call on the same client fails ("Event loop is closed") and a
notebook cell already runs a loop. A loop that lives as long as the client, in its own thread, works from scripts,
threads and notebooks alike (the same idea as anyio's blocking portal).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "defguard-entra") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop and wait for its result (from any thread but the loop's own)."""
        if self._closed:
            coro.close()
            msg = "this client is closed"
            raise RuntimeError(msg)
        if threading.current_thread() is self._thread:
            coro.close()
            msg = "a sync method was called from inside the client's own event loop: use the async form"
            raise RuntimeError(msg)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def _shutdown() -> None:
            await self._loop.shutdown_asyncgens()
            await self._loop.shutdown_default_executor()

        asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
