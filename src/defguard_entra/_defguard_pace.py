"""How fast and how long the Defguard client tries: one pace for every worker, and when a request gives up.

:class:`Pacer` spaces the requests of all token workers once Defguard 2.x's rate limiter has refused one;
:class:`Tries` ends a request's retries early where the retry policy would wait in vain (a server that refuses
connections, does not answer, or fails with a 500); :func:`connection_cause` says in a few words why no answer came.
"""

from __future__ import annotations

import threading
import time

from ._defguard_wire import first_line
from ._retry import Retryable
from .exceptions import DefguardAPIError

__all__ = ["Pacer", "Tries", "Unreachable", "connection_cause"]

#: A 500 is Defguard's answer to a database or model error, usually permanent (2.x answers it to every token request
#: while its public proxy URL does not parse): one more try, not a whole back-off.
_SERVER_ERROR_TRIES = 2
#: How long a refused connection (or an unknown host) is retried: a dead server is declared dead in seconds.
_REFUSED_GIVE_UP = 2.0
#: Tries of one request that time out (each costs a whole --timeout).
_TIMEOUT_TRIES = 2
#: The longest a worker waits for its turn under the shared pace (whatever has queued up before it).
_MAX_PACE_WAIT = 10.0


class Pacer:
    """One pace for every worker thread: Defguard 2.x's rate limiter keeps one bucket per client IP for all
    ``/api/v1`` requests, so a 429 means every worker must slow down, not only the one that got it.

    Requests are spaced by ``interval`` (0 until the first 429): a refusal doubles it (from 5 ms, at most 5 s) and
    holds everyone for the reported wait, or one interval when it says ``Wait for 0s``; each success shortens it by
    2 %, so the pace settles just under the server's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.interval = 0.0
        self._next = 0.0
        self._last_cut = 0.0

    def wait(self) -> None:
        with self._lock:
            if self.interval <= 0 and self._next <= 0:
                return
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(min(at - now, _MAX_PACE_WAIT))

    def refused(self, wait: float | None) -> None:
        with self._lock:
            now = time.monotonic()
            # Refusals of requests sent together are one signal: slow down once per interval, not once each.
            if now - self._last_cut >= max(self.interval, 0.005):
                self._last_cut = now
                grow = 2.0 if self.interval < 0.02 else 1.25  # find the pace fast, then approach it gently
                self.interval = min(max(self.interval * grow, 0.005), 5.0)
            self._next = max(self._next, now + (wait or self.interval))

    def succeeded(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            self.interval *= 0.99
            if self.interval < 0.001:
                self.interval = 0.0


class Unreachable(Retryable):
    """No HTTP answer: ``kind`` is ``refused`` (connection refused, host not found) or ``timeout``."""

    def __init__(self, error: Exception, kind: str) -> None:
        super().__init__(error, None)
        self.kind = kind


class Tries:
    """The failures of one request, counted from its first try: :meth:`failed` decides whether it may go on."""

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer
        self._started = time.monotonic()
        self._server_errors = 0
        self._timeouts = 0

    def failed(self, exc: Retryable) -> None:
        """Raise ``exc.error`` when this failure ends the request's tries (else the retry policy decides); a 429
        slows down the shared pace."""
        if isinstance(exc, Unreachable):
            # A refused connection or an unknown host is an answer: a few quick tries, not minutes.
            # A server that accepts and never answers costs a whole timeout per try: two at most.
            self._timeouts += exc.kind == "timeout"
            if self._timeouts >= _TIMEOUT_TRIES or (
                exc.kind == "refused" and time.monotonic() - self._started >= _REFUSED_GIVE_UP
            ):
                raise exc.error from None
            return
        status = exc.error.status if isinstance(exc.error, DefguardAPIError) else None
        if status == 429:
            self._pacer.refused(exc.wait)
        if status == 500:
            self._server_errors += 1
            if self._server_errors >= _SERVER_ERROR_TRIES:
                raise exc.error from None


def connection_cause(exc: BaseException, *, timed_out: bool, timeout: float) -> tuple[str, str]:
    """urllib3's nested message → what happened, in a few words, and its kind (see :class:`Unreachable`);
    ``timed_out``: the HTTP library said it timed out."""
    text = str(exc)
    if timed_out or "timed out" in text.lower():
        return f"no answer within {timeout:g} s (the server accepts connections but does not respond)", "timeout"
    if "Name or service not known" in text or "NameResolutionError" in text or "getaddrinfo" in text:
        return "the host name is not known (check --url)", "refused"
    if "Connection refused" in text or "[Errno 111]" in text or "WinError 10061" in text:
        return "connection refused (is Defguard running, and is the port in --url right?)", "refused"
    if "Connection reset" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer", "dropped"
    return first_line(exc), "other"
