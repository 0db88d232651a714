"""The one sync facade (``_sync``): blocking twins keep the async form's name, signature and docstring, run on the
owner's loop, and a module-level twin stops its loop thread after each call."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from defguard_entra._sync import LoopThread, blocking, blocking_function, delegated


class Owner:
    def __init__(self) -> None:
        self.loop = LoopThread(name="test-owner")
        self.threads: list[str] = []

    def _run(self, coro):  # the Bridged protocol
        return self.loop.run(coro)

    async def aadd(self, a: int, b: int = 1, *, scale: int = 1) -> int:
        """Add two numbers, scaled."""
        self.threads.append(threading.current_thread().name)
        await asyncio.sleep(0)
        return (a + b) * scale

    add = blocking(aadd)


def test_blocking_twin_runs_on_the_owners_loop_with_the_async_forms_face() -> None:
    owner = Owner()
    try:
        assert owner.add(2, 3, scale=10) == 50
        assert owner.add(1) == 2  # a second call on the same loop works
        assert owner.threads == ["test-owner", "test-owner"]
        assert Owner.add.__name__ == "add"
        assert owner.add.__name__ == "add"
        assert owner.add.__qualname__ == "Owner.add"
        assert owner.add.__doc__ == "Add two numbers, scaled."
        assert str(inspect.signature(owner.add)) == "(a: 'int', b: 'int' = 1, *, scale: 'int' = 1) -> 'int'"
    finally:
        owner.loop.close()


def test_blocking_twin_errors_propagate_and_closed_loop_refuses() -> None:
    class Failing(Owner):
        async def aboom(self) -> None:
            msg = "boom"
            raise ValueError(msg)

        boom = blocking(aboom)

    owner = Failing()
    with pytest.raises(ValueError, match="boom"):
        owner.boom()
    owner.loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        owner.add(1)


async def _atwice(value: int) -> tuple[int, str]:
    """Twice the value, and the thread it ran on."""
    return value * 2, threading.current_thread().name


twice = blocking_function(_atwice, "twice")


def test_blocking_function_uses_a_loop_per_call_and_stops_it() -> None:
    before = {t.name for t in threading.enumerate()}
    assert twice(21) == (42, "defguard-entra-twice")
    assert twice.__name__ == "twice"
    assert twice.__doc__ == "Twice the value, and the thread it ran on."
    assert "defguard-entra-twice" not in {t.name for t in threading.enumerate()} - before


def test_blocking_function_works_inside_a_running_loop() -> None:
    async def main() -> tuple[int, str]:
        return twice(1)  # a notebook cell: a loop already runs in this thread

    assert asyncio.run(main()) == (2, "defguard-entra-twice")


class Inner:
    """An async object a wrapper delegates to."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    async def scale(self, value: int, *, by: int = 2) -> int:
        """Scale the value."""
        self.threads.append(threading.current_thread().name)
        await asyncio.sleep(0)
        return value * by


class Wrapper:
    def __init__(self) -> None:
        self.loop = LoopThread(name="test-wrapper")
        self._client = Inner()

    def _run(self, coro):  # the Delegating protocol, with ``_client``
        return self.loop.run(coro)

    scale = delegated(Inner.scale)


def test_delegated_twin_runs_the_inner_method_on_the_wrappers_loop() -> None:
    wrapper = Wrapper()
    try:
        assert wrapper.scale(21) == 42
        assert wrapper.scale(5, by=3) == 15
        assert wrapper._client.threads == ["test-wrapper", "test-wrapper"]
        assert wrapper.scale.__name__ == "scale"
        assert wrapper.scale.__qualname__ == "Wrapper.scale"
        assert wrapper.scale.__doc__ == "Scale the value."
        assert inspect.signature(wrapper.scale) == inspect.signature(Inner().scale)
        assert inspect.signature(Wrapper.scale) == inspect.signature(Inner.scale)
        assert not inspect.iscoroutinefunction(Wrapper.scale)
    finally:
        wrapper.loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        wrapper.scale(1)
