"""Signals: what Ctrl-C, SIGTERM, SIGHUP (Ctrl-Break on Windows) do to a run: a graceful first stop for commands
that check the stop event (``sync --watch``: first the end of the cycle in flight), at once for the others."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._console import Console

__all__ = [
    "install_signal_handlers",
    "interrupt_on_sigterm",
    "interrupt_signal_names",
    "interrupted_at_once",
    "stop_signal_names",
]


# -- signals ---------------------------------------------------------------------------------------------------


def stop_signal_names(platform: str) -> tuple[str, ...]:
    """The signals that stop a run on ``platform`` (a :data:`sys.platform` value), by name.

    Windows: Ctrl-C (``SIGINT``) and Ctrl-Break (``SIGBREAK``, which another program can also send to a console
    process group: ``GenerateConsoleCtrlEvent``, ``os.kill(pid, CTRL_BREAK_EVENT)``). ``SIGTERM`` is left out
    there: no other process can send it (``os.kill``, ``taskkill /F``, ``Stop-Process`` and closing the console
    window end the process at once, like ``kill -9``, and the journal covers that), and Windows has no ``SIGHUP``.
    Elsewhere: Ctrl-C, ``SIGTERM`` and ``SIGHUP`` (an SSH session dropping)."""
    if platform.startswith("win"):
        return ("SIGINT", "SIGBREAK")
    return ("SIGINT", "SIGTERM", "SIGHUP")


def _signals(names: tuple[str, ...]) -> tuple[signal.Signals, ...]:
    """The signals of ``names`` this interpreter has (looked up by name: each exists only on some platforms)."""
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


def interrupt_signal_names(platform: str) -> tuple[str, ...]:
    """Besides Ctrl-C, what interrupts a command with nothing to finish on ``platform``: ``SIGTERM``; Ctrl-Break
    (``SIGBREAK``) on Windows, where ``SIGTERM`` cannot be sent and Ctrl-Break would otherwise end the process
    without a word."""
    return ("SIGBREAK",) if platform.startswith("win") else ("SIGTERM",)


def interrupt_on_sigterm() -> Callable[[], None]:
    """SIGTERM (Ctrl-Break on Windows) behaves like Ctrl-C (KeyboardInterrupt → exit 130) for commands with nothing
    to finish (:func:`interrupt_signal_names`)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _handle) for sig in _signals(interrupt_signal_names(sys.platform))}

    def _restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return _restore


@contextlib.contextmanager
def interrupted_at_once() -> Iterator[None]:
    """Within the block, every stop signal (Ctrl-C, SIGTERM, SIGHUP; Ctrl-Break on Windows) interrupts at once
    (``KeyboardInterrupt`` → exit 130): for a sign-in, which has nothing in flight to finish. The handlers before
    it are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _handle) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: What stops a run gracefully on this platform (:func:`stop_signal_names`).
_STOP_SIGNALS = _signals(stop_signal_names(sys.platform))
#: The third signal aborts at once (the journal still holds what was in flight).
_SIGNALS_TO_ABORT = 3


def install_signal_handlers(
    stop: threading.Event, console: Console, *, finish: threading.Event | None = None
) -> Callable[[], None]:
    """First stop signal (Ctrl-C, SIGTERM, SIGHUP; Ctrl-Break on Windows): stop starting new work and finish what
    is in flight; the second: stop now.

    With ``finish`` (``sync --watch``) one more signal comes first: it sets ``finish`` (the cycle in flight runs to
    its end, and no other starts); the next ones act as above on the cycle."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    signals = 0

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        nonlocal signals
        signals += 1
        if finish is not None and not finish.is_set():
            finish.set()
            console.warn("stopping: no further cycle starts (the one in flight finishes); once more stops it too")
            return
        if signals >= _SIGNALS_TO_ABORT + (finish is not None):
            raise KeyboardInterrupt
        if stop.is_set():
            console.warn(
                "still stopping: the writes in flight finish in seconds and the journal records any token they "
                "leave unstored; once more aborts without a report"
            )
            return
        stop.set()
        console.warn("stopping: finishing the writes in flight, then writing the report")

    previous = {sig: signal.signal(sig, _handle) for sig in _STOP_SIGNALS}

    def _restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return _restore
