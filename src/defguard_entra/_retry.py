"""Retry plumbing shared by both clients: one policy type, one signal, one ``Retry-After`` parser.

The waiting itself is :mod:`stamina`'s (exponential back-off with jitter, bounded by attempts *and* total time);
a server's ``Retry-After`` (integer, decimal or HTTP-date) or Defguard 2.x's ``Wait for Ns`` overrides it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from email.utils import parsedate_to_datetime
from typing import Any, Self

import attrs

__all__ = ["Activity", "RetryPolicy", "Retryable", "backoff_hook", "parse_retry_after"]

# The library never prints: stamina logs a warning per retry to the "stamina" logger, which Python's last-resort
# handler would print to stderr when the application has configured no logging. A NullHandler (the documented
# practice for libraries) keeps them in logging only; an application's own handlers still receive them.
logging.getLogger("stamina").addHandler(logging.NullHandler())
logging.getLogger("defguard_entra").addHandler(logging.NullHandler())


def _at_least_one(value: int) -> int:
    return max(1, int(value))


@attrs.frozen
class RetryPolicy:
    """How hard to try one request: at most ``attempts`` tries within ``timeout`` seconds in all."""

    attempts: int = attrs.field(default=8, converter=_at_least_one)
    timeout: float = 120.0
    wait_initial: float = 0.2
    wait_max: float = 10.0
    #: Random extra wait before each retry, at most this many seconds (stamina's default of 1 s made each
    #: retry of a transient 502 cost about 0.7 s on average, most of the fault run's time).
    wait_jitter: float = 0.2

    def stamina_options(self) -> dict[str, Any]:
        """Keyword arguments for ``stamina.retry_context`` (both clients retry the same way)."""
        return {
            "on": backoff_hook,
            "attempts": self.attempts,
            "timeout": self.timeout,
            "wait_initial": self.wait_initial,
            "wait_max": self.wait_max,
            "wait_jitter": self.wait_jitter,
        }

    @classmethod
    def none(cls) -> Self:
        """A single try: no retries."""
        return cls(attempts=1)


class Activity:
    """When a service last answered, for the run's watchdog: :attr:`quiet_since` is the monotonic time from which
    its silence counts. Every HTTP answer (an error, a 429 too) is a sign of life; a wait the server asked for
    (``Retry-After``, ``Wait for Ns``) moves the mark past that wait, so waiting it out is not silence."""

    def __init__(self) -> None:
        self.quiet_since = time.monotonic()

    def beat(self, wait: float | None = None) -> None:
        """An answer came now; ``wait``: the seconds it asked to wait before the next try."""
        # A plain float assignment: worker threads and the event loop may beat at once; the larger mark wins
        # often enough (a lost beat only makes the silence look a few milliseconds older).
        self.quiet_since = max(self.quiet_since, time.monotonic() + (wait or 0.0))


class Retryable(Exception):  # noqa: N818 - an internal signal, never escapes a client
    """Raised inside a retry loop for a failure worth another try; ``wait`` is the server's wish, if any."""

    def __init__(self, error: Exception, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


def backoff_hook(exc: Exception) -> bool | float:
    """For ``stamina.retry_context(on=…)``: retry :class:`Retryable`, waiting what the server asked for."""
    if isinstance(exc, Retryable):
        return exc.wait if exc.wait is not None else True
    return False


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: ``"3"``, ``"2.128"`` or an HTTP-date; ``None`` if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if seconds != seconds:  # NaN  # noqa: PLR0124
        return None
    return max(0.0, seconds)
