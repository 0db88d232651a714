"""The service's life: its private loop for the sync forms, the loop it is bound to, closing what it owns.

Kept apart from the commands (:mod:`.service`) as httpx keeps its shared client base: the commands compose phases,
this says on which loop they run and what closing means.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

from .._sync import LoopThread
from ..exceptions import ServiceStateError
from ._ports import Clients, DefguardPort, GraphPort

__all__ = ["ServiceLifecycle"]

T = TypeVar("T")

_CLOSED = "this ProvisioningService is closed: create a new one (or use it inside one with-block)"


class ServiceLifecycle:
    """Lifecycle of :class:`~.service.ProvisioningService`; the subclass sets the attributes in its constructor."""

    defguard: DefguardPort
    entra: GraphPort
    attribute_set: str
    _owns: bool
    _executor: ThreadPoolExecutor
    _runner: LoopThread | None
    _runner_lock: threading.Lock
    _closed: bool
    _loop: asyncio.AbstractEventLoop | None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._runner_lock:
            if self._closed:  # e.g. after ``async with``: no new loop thread that nobody would stop
                coro.close()
                raise ServiceStateError(_CLOSED)
            if self._runner is None:
                self._runner = LoopThread()
        return self._runner.run(coro)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self.entra.aclose()
            self.defguard.close()
        # Not waiting: after a stalled run a worker may still be inside a request nobody answers; it ends at its
        # own timeout, and its result is discarded (the journal kept that member open).
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self.aclose())
        finally:
            if self._runner is not None:
                self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _bind(self) -> Clients:
        """Tie the service to the event loop of its first call: its Graph client lives on that loop, so a call from
        another one (the async forms after the sync ones, or the reverse) would fail deep inside the HTTP stack.
        The clients, for the phases of this call."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ServiceStateError(_CLOSED)
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            msg = (
                "this ProvisioningService was first used from another event loop: use one style per service, the "
                "sync forms (provision, status, …) or the async ones (aprovision, astatus, …) on one loop; create "
                "a new service for the other"
            )
            raise ServiceStateError(msg)
        return Clients(self.defguard, self.entra, self.attribute_set, self._executor)
