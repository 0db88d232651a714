"""Retry plumbing shared by both clients: one policy type, one signal, one ``Retry-After`` parser.

The waiting itself is :mod:`stamina`'s (exponential back-off with jitter, bounded by attempts *and* total time);
a server's ``Retry-After`` (integer, decimal or HTTP-date) or Defguard 2.x's ``Wait for Ns`` overrides it.
"""

from __future__ import annotations

import datetime as dt
import logging
from email.utils import parsedate_to_datetime
from typing import Any, Self

import attrs

__all__ = ["RetryPolicy", "Retryable", "backoff_hook", "parse_retry_after"]

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

    def stamina_options(self) -> dict[str, Any]:
        """Keyword arguments for ``stamina.retry_context`` (both clients retry the same way)."""
        return {
            "on": backoff_hook,
            "attempts": self.attempts,
            "timeout": self.timeout,
            "wait_initial": self.wait_initial,
            "wait_max": self.wait_max,
        }

    @classmethod
    def none(cls) -> Self:
        """A single try: no retries."""
        return cls(attempts=1)


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
