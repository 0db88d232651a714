"""How fast and how long the Defguard client tries: one pace for every worker, and when a request gives up.

:class:`Pacer` spaces the requests of all token workers once Defguard 2.x's rate limiter has refused one;
:class:`Tries` ends a request's retries early where the retry policy would wait in vain (a server that refuses
connections, does not answer, or fails with a 500); :func:`connection_cause` says in a few words why no answer came.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ._defguard_wire import first_line
from ._retry import Retryable
from .exceptions import DefguardAPIError

__all__ = ["GATE_START", "OVERLOAD_STATUS", "Gate", "Pacer", "Tries", "Unreachable", "connection_cause"]

log = logging.getLogger(__name__)

#: A 500 is Defguard's answer to a database or model error, usually permanent (2.x answers it to every token request
#: while its public proxy URL does not parse): one more try, not a whole back-off.
_SERVER_ERROR_TRIES = 2
#: How long a refused connection (or an unknown host) is retried: a dead server is declared dead in seconds.
_REFUSED_GIVE_UP = 2.0
#: Tries of one request that time out (each costs a whole --timeout).
_TIMEOUT_TRIES = 2
#: The longest a worker waits for its turn under the shared pace (whatever has queued up before it: 16 workers at
#: the real server's shortest period, one per second, queue for 16 s) ...
_MAX_PACE_WAIT = 60.0
#: ... and the longest one refusal holds every worker (a longer reported wait is the retry policy's to honour).
_MAX_HOLD = 10.0
#: The shared pace (see :class:`Pacer`): the first interval after a refusal, and the longest.
_FIRST_INTERVAL = 0.005
_MAX_INTERVAL = 5.0
#: Refusals the period is estimated over (the oldest to the latest).
_HISTORY = 8
#: The interval is held this much above the estimated period ...
_MARGIN = 0.03
#: ... and cut by this much after this many successes in a row.
_PROBE_STEP = 0.02
_PROBE_AFTER = 50

#: The token requests in flight (see :class:`Gate`): the limit a run starts at (what runs had as a fixed
#: concurrency before the limit adapted) ...
GATE_START = 16
#: ... the answers a round is judged on (at least this many, and at least the limit: about one round trip of every
#: place) ...
_ROUND_MIN = 8
#: ... a round whose median round trip stayed within this factor of the fastest answer seen, with every place in
#: use, grows the limit by this share (at least one; by one only, once it has had to shrink) ...
_GROW_WITHIN = 1.5
_GROW = 0.25
#: ... one whose median went beyond this factor shrinks it by this share: the server queues the requests ...
_SHRINK_BEYOND = 2.5
_SHRINK = 0.25
#: ... and an answer of overload (one of these statuses, or no answer within the timeout) halves it, once a round.
OVERLOAD_STATUS = frozenset({408, 503, 504})


class Pacer:
    """One pace for every worker thread, set by an estimate of the server's period.

    Defguard 2.x's rate limiter (tower_governor over governor's GCRA: v2.0.1 ``crates/defguard_core/src/lib.rs``,
    ``GovernorConfigBuilder::per_second(n).burst_size(b)``) keeps one bucket per client IP for every ``/api/v1``
    request: after a burst of ``b`` it lets one request through every period ``n`` seconds, a refused request costs
    nothing, and the wait it reports is truncated to whole seconds. So a 429 means every worker must slow down,
    not only the one that got it, and ``Wait for 0s`` means "within a second", not "now".

    The estimate: at each refusal the bucket holds less than one request's worth, so between two refusals ``span``
    seconds apart, with ``accepted`` requests let through, the bucket refilled ``span / period = accepted + (what
    it held at the second) - (what it held at the first)``, which is less than ``accepted + 1`` and more than
    ``accepted - 1``. So ``span / (accepted + 1)`` is a lower bound of the period within ``1 / accepted`` of it;
    over the span from the oldest of the last ``_HISTORY`` refusals to the latest, it gets finer as the run goes
    on. It errs fast on purpose: a rough early estimate brings the next refusal soon, and that one a finer
    estimate. Every answer that is not a 429 counts as let through. A reported wait is honoured as a hold but
    not taken into the estimate (a proxy in front of Defguard may ask for a minute once). A bucket that filled up
    meanwhile, as after an idle minute, breaks the bound upwards: the pace is then too slow until the probe below
    finds the server's.

    The pace: the interval is held at the estimate plus ``_MARGIN`` (the first refusal, with nothing known yet:
    5 ms). After ``_PROBE_AFTER`` successes in a row it is cut by ``_PROBE_STEP``, so a server that got faster
    (another client of the same IP stopped) is found, at the cost of one refusal now and then; an interval under
    1 ms ends the pacing. A refusal holds every worker for the reported wait, or one estimated period when it says
    ``Wait for 0s`` (a floor, not "now": the bucket has a request's worth again by then), and voids every slot
    reserved before it: the workers waiting reserve again at the new pace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.interval = 0.0
        #: The server's period as estimated from the refusals: a lower bound, ``None`` until a second refusal.
        self.period: float | None = None
        self.refusals = 0
        self._next = 0.0  # the next free slot (monotonic time)
        self._accepted = 0  # answers the limiter let through, counted from the first refusal
        self._streak = 0
        self._history: deque[tuple[float, int]] = deque(maxlen=_HISTORY)  # (refused at, accepted by then)

    def delay(self) -> tuple[float, int]:
        """Reserve the next slot of the shared pace: the seconds to sleep before sending (0 when not paced), and
        the refusal count the slot was reserved under (see :meth:`wait`)."""
        with self._lock:
            if self.interval <= 0 and self._next <= 0:
                return 0.0, self.refusals
            now = self._clock()
            at = max(now, self._next)
            self._next = at + self.interval
        return min(at - now, _MAX_PACE_WAIT), self.refusals

    def wait(self) -> None:
        """Sleep until this worker's turn under the shared pace. A refusal while it sleeps voids its slot (it was
        reserved at a pace now known to be too fast): it reserves again, within ``_MAX_PACE_WAIT`` in all."""
        deadline = self._clock() + _MAX_PACE_WAIT
        while True:
            delay, refusals = self.delay()
            delay = min(delay, deadline - self._clock())
            if delay <= 0:
                return
            time.sleep(delay)
            if self.refusals == refusals:
                return

    def refused(self, wait: float | None) -> None:
        """A 429: re-estimate the period, set the interval from it, hold every worker."""
        with self._lock:
            now = self._clock()
            self.refusals += 1
            self._streak = 0
            if not self._history or self._accepted > self._history[-1][1]:
                self._history.append((now, self._accepted))
            since, accepted_then = self._history[0]
            accepted = self._accepted - accepted_then
            at_least = (now - since) / (accepted + 1)  # the period is more than that (see the class docstring)
            if at_least > 0:
                self.period = at_least
                self.interval = min(self.period * (1 + _MARGIN), _MAX_INTERVAL)
            else:  # the first refusal, "Wait for 0s": nothing known yet
                self.interval = max(self.interval, _FIRST_INTERVAL)
            # Every slot reserved so far is void (see wait): the queue starts again after the hold.
            self._next = now + min(wait or self.period or self.interval, _MAX_HOLD)
            log.debug(
                "Defguard refused a request (%d so far, wait %s): period estimate %s ms from %d accepted, pace %.2f ms",
                self.refusals,
                wait,
                f"{self.period * 1000:.2f}" if self.period else "-",
                accepted,
                self.interval * 1000,
            )

    def succeeded(self) -> None:
        """An answer the limiter let through (any status but 429)."""
        if not self._history:  # no refusal yet: nothing to pace, nothing to count (and no lock to take)
            return
        with self._lock:
            self._accepted += 1
            self._streak += 1
            if self.interval > 0 and self._streak >= _PROBE_AFTER:
                self._streak = 0
                self.interval *= 1 - _PROBE_STEP
                if self.interval < _FIRST_INTERVAL / 5:  # a limiter that has gone: no pace at all
                    self.interval = 0.0
                log.debug("Defguard pace probed faster: %.2f ms", self.interval * 1000)


class Gate:
    """How many token requests may be in flight at once: a limit that adapts to the server's answers.

    One per client, shared by every token worker. It starts at :data:`GATE_START` (at most ``ceiling``, which is
    ``--concurrency``) and is judged once a round: every :data:`_ROUND_MIN` answers, or one answer per place,
    whichever is more.

    - The round's median round trip within ``_GROW_WITHIN`` × the fastest answer seen, with every place in use at
      some point of the round: the limit grows by a quarter (a server with room, e.g. one far away whose round
      trip is network time, as in the benchmarks' 20 ms of latency); once it has had to shrink, by one a round
      (the server's room is then known to be near: probing it gently costs fewer refusals).
    - The median beyond ``_SHRINK_BEYOND`` × the fastest: it shrinks by a quarter. A server whose work queues
      answers slower the more is in flight: Defguard 2.0.1 opens its database pool with ``max_connections(5)``
      (``crates/defguard_common/src/db/mod.rs``, ``setup_pool``), and a request that finds the five connections
      in use waits for one; more requests in flight then only lengthen the queue.
    - Overload: an answer of 503 (nginx's ``limit_conn`` refuses with 503 by default, ``limit_conn_status``),
      504 or 408 (a proxy that gave up waiting), or no answer within the timeout: the limit halves, once a round
      (the answers of one burst are one signal).

    In between, it holds. A 429 leaves it alone: Defguard's rate limiter counts requests, not requests in flight,
    and :class:`Pacer` spaces them. Only answers with a status of 2xx are timed: an error can come back faster than
    the work. The wait for a place is bounded (:meth:`enter`); the round trip is measured from the send, not from
    the wait (the pace and the place are not the server's time)."""

    def __init__(self, ceiling: int, *, start: int = GATE_START) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(min(max(1, start), self.ceiling))
        #: The highest and lowest limit reached, and how often it halved (for the log and the tests).
        self.peak = self.low = int(self.limit)
        self.halvings = 0
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._fastest: float | None = None
        self._round: list[float] = []
        self._full = False  # every place was in use at some point of this round
        self._halved = False  # halved in this round already
        self._gently = False  # it has had to shrink: grow by one a round

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self, bound: float = _MAX_PACE_WAIT) -> bool:
        """Take a place, waiting for one at most ``bound`` seconds (then go anyway: a bound, never a hang; the
        places free up as requests end, each within its timeouts). Whether it had to wait."""
        with self._cond:
            waited = self._in_flight >= int(self.limit)
            if waited:
                self._cond.wait_for(lambda: self._in_flight < int(self.limit), bound)
            self._in_flight += 1
            if self._in_flight >= int(self.limit):
                self._full = True
            return waited

    def leave(self, seconds: float | None = None, *, overload: bool = False) -> None:
        """Give the place back: ``seconds`` is the round trip of an answer of 2xx (``None`` for any other end);
        ``overload``: the answer said the server is overloaded (see the class docstring)."""
        with self._cond:
            self._in_flight -= 1
            before = int(self.limit)
            if overload:
                if not self._halved:
                    self._halved = True
                    self.halvings += 1
                    self._set(self.limit / 2, "an answer of overload")
                    self._round.clear()  # the answers to come were sent before the cut: no growth on them
                    self._full = False
            elif seconds is not None:
                self._round.append(seconds)
                if self._fastest is None or seconds < self._fastest:
                    self._fastest = seconds
                if len(self._round) >= max(_ROUND_MIN, before):
                    self._judge()
            if int(self.limit) > before:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def _judge(self) -> None:
        samples = sorted(self._round)
        self._round.clear()
        median = samples[len(samples) // 2]
        full, self._full = self._full, self._in_flight >= int(self.limit)
        self._halved = False
        assert self._fastest is not None
        if median > self._fastest * _SHRINK_BEYOND:
            self._set(self.limit * (1 - _SHRINK), f"the median round trip {median * 1000:.0f} ms")
        elif full and median <= self._fastest * _GROW_WITHIN:
            grown = self.limit + 1 if self._gently else max(self.limit + 1, self.limit * (1 + _GROW))
            self._set(grown, f"the median round trip {median * 1000:.0f} ms")

    def _set(self, limit: float, why: str) -> None:
        old = int(self.limit)
        self._gently = self._gently or limit < self.limit
        self.limit = min(float(self.ceiling), max(1.0, limit))
        new = int(self.limit)
        self.peak, self.low = max(self.peak, new), min(self.low, new)
        if new != old:
            fastest = f"{self._fastest * 1000:.0f} ms" if self._fastest is not None else "-"
            log.debug("Defguard token requests in flight: at most %d, was %d (%s; fastest %s)", new, old, why, fastest)


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
