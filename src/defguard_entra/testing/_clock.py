"""A clock that tests, the emulators and the tool share, and that a test can move forward (simulated days)."""

from __future__ import annotations

import datetime as dt
import threading
import time

__all__ = ["Clock"]


class Clock:
    """A callable that answers "now" as an aware UTC datetime: ``start`` plus what :meth:`advance` added plus the
    real time elapsed since it was made (so timestamps taken one after another still increase).

    Pass the same clock to :class:`~defguard_entra.testing.DefguardEmulator` (``clock=``), to
    :class:`~defguard_entra.DefguardClient` (``clock=``) and to the service, then ``clock.advance(days=1)`` lets a
    day pass for all of them: tokens expire, timestamps move on.

    ``start`` defaults to the system's now; a naive ``start`` is refused (``ValueError``). Thread-safe.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        if start is None:
            start = dt.datetime.now(dt.UTC)
        elif start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(
                "Clock(start=...) needs a timezone-aware datetime, e.g. dt.datetime(2026, 1, 1, tzinfo=dt.UTC)"
            )
        self._start = start.astimezone(dt.UTC)
        self._began = time.monotonic()
        self._offset = dt.timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            offset = self._offset
        return self._start + offset + dt.timedelta(seconds=time.monotonic() - self._began)

    def advance(
        self,
        delta: dt.timedelta | None = None,
        /,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
    ) -> dt.datetime:
        """Move the clock forward by ``delta`` and/or the units given; returns the new now.

        Time only moves forward here: a negative step raises ``ValueError``."""
        step = (delta or dt.timedelta(0)) + dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if step < dt.timedelta(0):
            raise ValueError(f"a clock only moves forward: advance({step}) is negative")
        with self._lock:
            self._offset += step
        return self()

    @property
    def offset(self) -> dt.timedelta:
        """How far :meth:`advance` has moved the clock in all."""
        with self._lock:
            return self._offset

    def __repr__(self) -> str:
        return f"Clock({self().isoformat()})"
