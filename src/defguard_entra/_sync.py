"""The one way sync callers drive async code: a private event loop in a daemon thread, and the blocking twins
built on it.

``asyncio.run()`` per call breaks twice: a second call on the same client fails ("Event loop is closed") and a
notebook cell already runs a loop. A loop that lives as long as its owner, in its own thread, works from scripts,
threads and notebooks alike (the same idea as anyio's blocking portal, ``anyio/from_thread.py``).

- :func:`blocking` makes a class's blocking method from its async one, with the same signature and docstring:
  ``provision = blocking(aprovision)``. The class runs coroutines on its loop with ``_run(coro)``.
- :func:`delegated` does the same for a wrapper whose async methods live on an inner object, ``self._client``:
  ``find_users = delegated(AsyncEntraClient.find_users)``.
- :func:`blocking_function` does the same for a module-level coroutine function, on a loop of its own per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import types
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

__all__ = ["Bridged", "Delegating", "LoopThread", "blocking", "blocking_function", "delegated"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
A_co = TypeVar("A_co", covariant=True)
A = TypeVar("A")
#: How long the caller's thread waits at a time for the loop's answer (seconds; signals are handled in between).
_WAIT_SLICE = 0.25


class Bridged(Protocol):
    """What :func:`blocking` needs of its class: a way to run a coroutine on the object's own loop."""

    def _run(self, coro: Coroutine[Any, Any, T]) -> T: ...


class Delegating(Bridged, Protocol[A_co]):
    """What :func:`delegated` needs of its class: :class:`Bridged`, and the inner object whose async methods it
    mirrors."""

    @property
    def _client(self) -> A_co: ...


S = TypeVar("S", bound=Bridged)
O = TypeVar("O", bound=Bridged)  # noqa: E741 - the owner


class _Twin(Generic[O, P, R]):
    """The one implementation of a blocking twin: a descriptor named like its attribute, with the async form's
    signature and docstring, that runs ``coroutine(obj, *args, **kwargs)`` on ``obj``'s loop."""

    def __init__(
        self,
        method: Callable[..., Coroutine[Any, Any, R]],
        coroutine: Callable[Concatenate[O, P], Coroutine[Any, Any, R]],
    ) -> None:
        @functools.wraps(method)
        def twin(obj: O, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return obj._run(coroutine(obj, *args, **kwargs))  # noqa: SLF001 - the Bridged protocol

        self._twin = twin
        functools.update_wrapper(self, method)

    def __set_name__(self, owner: type, name: str) -> None:
        self._twin.__name__ = self.__name__ = name
        self._twin.__qualname__ = self.__qualname__ = f"{owner.__qualname__}.{name}"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: O, owner: type | None = None) -> Callable[P, R]: ...
    def __get__(self, obj: O | None, owner: type | None = None) -> Self | Callable[P, R]:
        if obj is None:
            return self
        return types.MethodType(self._twin, obj)

    def __call__(self, obj: O, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._twin(obj, *args, **kwargs)


class blocking(_Twin[S, P, R]):  # noqa: N801 - used like a decorator: ``provision = blocking(aprovision)``
    """The blocking twin of an async method: same parameters, same docstring, the result instead of a coroutine.

    A descriptor, so the twin takes the attribute's name (``provision``, not ``aprovision``) and binds like a
    method: ``inspect.signature`` and ``help()`` show the async form's parameters.
    """

    def __init__(self, method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]]) -> None:
        super().__init__(method, method)


class delegated(_Twin[Delegating[A], P, R]):  # noqa: N801 - used like a decorator, as :class:`blocking`
    """The blocking twin of the inner object's async method: ``find_users = delegated(AsyncEntraClient.find_users)``
    on a class whose ``_client`` is an ``AsyncEntraClient`` runs ``self._client.find_users(…)`` on ``self``'s loop.
    Same name, parameters and docstring as the async method."""

    def __init__(self, method: Callable[Concatenate[A, P], Coroutine[Any, Any, R]]) -> None:
        def on_inner(obj: Delegating[A], /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            return method(obj._client, *args, **kwargs)  # noqa: SLF001 - the Delegating protocol

        super().__init__(method, on_inner)


def blocking_function(function: Callable[P, Coroutine[Any, Any, R]], name: str) -> Callable[P, R]:
    """The blocking twin of a module-level coroutine function, named ``name``: each call runs on a loop thread of
    its own, stopped when the call returns (an abandoned sign-in must not hide the real error, so a loop that will
    not stop in time is left to its daemon thread)."""

    @functools.wraps(function)
    def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        runner = LoopThread(name=f"defguard-entra-{name}")
        try:
            return runner.run(function(*args, **kwargs))
        finally:
            with contextlib.suppress(TimeoutError):
                runner.close()

    twin.__name__ = name
    twin.__qualname__ = name
    return twin


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
            # Waited in slices: a lock wait without a timeout is not interrupted by Ctrl-C on Windows, and the
            # main thread must stay interruptible (a sign-in waiting for the user, a slow Graph).
            while not concurrent.futures.wait([future], timeout=_WAIT_SLICE).done:
                pass
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
