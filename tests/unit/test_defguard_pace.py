"""The shared Defguard pace on a simulated clock: 16 workers against the emulator's tower_governor limiter.

The simulation is event by event (no threads, no sleeping): each worker reserves a slot with
:meth:`Pacer.delay`, sends at that time (reserving again when a refusal came meanwhile, as :meth:`Pacer.wait`
does), the limiter (:class:`defguard_entra.testing.RateLimit`, the emulator's own) answers after the latency, and a
refused request is retried after the client's first back-off (0.2 s). The threaded run against the emulator over
HTTP is ``tests/adapters/test_resilience.py``. The adaptive limit of token requests in flight (:class:`Gate`) is
driven answer by answer at the end; over HTTP, ``tests/adapters/test_defguard_gate.py``.
"""

from __future__ import annotations

import heapq
import threading
import time

import pytest

from defguard_entra._defguard_pace import GATE_START, Gate, Pacer
from defguard_entra._retry import RetryPolicy
from defguard_entra.testing import RateLimit

WORKERS = 16
LATENCY = 0.02


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(n: int, period: float, burst: int) -> tuple[float, int, Pacer]:
    """Mint ``n`` tokens with ``WORKERS`` workers: the simulated seconds it took, the refusals, the pacer."""
    clock = Clock()
    pacer = Pacer(clock)
    limit = RateLimit(period, burst)
    backoff = RetryPolicy().wait_initial
    events: list[tuple[float, int, int, str, int]] = []  # (time, order, worker, what, refusals at reservation)
    order = 0

    def at(time: float, worker: int, what: str, ticket: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (time, order, worker, what, ticket))

    def reserve(worker: int) -> None:
        delay, ticket = pacer.delay()
        at(clock.now + delay, worker, "send", ticket)

    started = min(WORKERS, n)
    done = 0
    for worker in range(started):
        at(0.0, worker, "ready")
    while done < n:
        clock.now, _, worker, what, ticket = heapq.heappop(events)
        if what == "ready":
            reserve(worker)
        elif what == "send":
            if ticket != pacer.refusals:  # a refusal voided the slot: reserve again
                reserve(worker)
                continue
            wait = limit.take("127.0.0.1", clock.now)
            at(clock.now + LATENCY, worker, "refused" if wait is not None else "accepted", int(wait or 0))
        elif what == "refused":
            pacer.refused(float(ticket) or None)  # "Wait for 0s" carries no wait (see _defguard_wire.decode)
            at(clock.now + (ticket or backoff), worker, "ready")  # the server's wait, else the back-off
        else:
            pacer.succeeded()
            done += 1
            if started < n:
                started += 1
                at(clock.now, worker, "ready")
    return clock.now, limit.refused, pacer


@pytest.mark.parametrize(
    ("n", "period", "burst"),
    [
        (500, 0.05, 10),  # the benchmark's limiter (docs/performance.md)
        (300, 1.0, 10),  # the real server's shortest period: every 429 says "Wait for 0s"
        (120, 2.5, 5),  # waits of 1 s and 2 s: the floor under the estimate
    ],
)
def test_the_pace_settles_at_the_servers_period(n: int, period: float, burst: int) -> None:
    """tower_governor's GCRA lets one request through per period after the burst, so no client can finish
    before (n - burst) x period: the pace comes within 5 % of it, and the estimate is a lower bound of the
    period within 5 % of it.
    The 16 workers' first requests go together, before any refusal: those beyond the burst are refused whatever
    the pacer does, and so are a few of their retries, sent together after the hold; after them, at most 6 + 1 %
    of the requests are (the pacer before the estimate: 8 % in all at n = 500, 39 beyond the first 6)."""
    elapsed, refused, pacer = simulate(n, period, burst)
    bound = (n - burst) * period
    assert bound <= elapsed <= 1.05 * bound + LATENCY
    assert refused - (WORKERS - burst) <= 6 + n // 100
    assert refused <= 0.05 * (n + refused) or n < 500  # the benchmark's target (docs/performance.md)
    assert pacer.period is not None
    assert 0.95 * period <= pacer.period <= period  # a lower bound, and a fine one


def test_wait_for_0s_holds_everyone_for_one_estimated_period() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.refused(None)
    for _ in range(9):  # 9 let through in 0.5 s between two refusals: the period is more than 0.5 / (9 + 1)
        clock.now += 0.05
        pacer.succeeded()
    clock.now = 0.5
    pacer.refused(None)
    assert pacer.period == pytest.approx(0.05)
    assert pacer.interval == pytest.approx(0.05 * 1.03)
    first, _ = pacer.delay()
    second, _ = pacer.delay()
    assert first == pytest.approx(0.05)  # "soon", not "now"
    assert second == pytest.approx(0.05 + pacer.interval)


def test_a_reported_wait_holds_everyone_without_setting_the_pace() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.refused(30.0)  # say, a proxy in front of Defguard, once
    assert pacer.delay()[0] == 10.0  # held, but for 10 s at most
    clock.now = 12.0
    for _ in range(119):
        pacer.succeeded()
    pacer.refused(None)
    assert pacer.period == pytest.approx(0.1)  # from the spacing alone: 119 let through in 12 s


def test_refusals_with_nothing_let_through_bound_the_period_from_below() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    assert pacer.delay() == (0.0, 0)  # no refusal yet: no pace
    pacer.refused(None)
    assert (pacer.interval, pacer.period) == (0.005, None)  # nothing known yet
    clock.now = 0.5
    pacer.refused(None)  # nothing let through in 0.5 s: the period is more than 0.5 s
    assert (pacer.interval, pacer.period) == (pytest.approx(0.5 * 1.03), 0.5)


def test_successes_in_a_row_probe_faster_and_a_gone_limiter_ends_the_pace() -> None:
    pacer = Pacer(Clock())
    pacer.refused(None)
    for _ in range(49):
        pacer.succeeded()
    assert pacer.interval == 0.005
    pacer.succeeded()
    assert pacer.interval == pytest.approx(0.005 * 0.98)
    for _ in range(50 * 80):
        pacer.succeeded()
    assert pacer.interval == 0.0


# -- the adaptive limit of token requests in flight (Gate) -----------------------------------------------------------


def _round(gate: Gate, seconds: float, *, places: int | None = None) -> None:
    """One round: ``places`` requests (default: the limit) taken together, then all answered in ``seconds``."""
    n = int(gate.limit) if places is None else places
    for _ in range(n):
        gate.enter()
    for _ in range(n):
        gate.leave(seconds)


def test_the_gate_grows_while_every_place_is_used_and_the_round_trip_holds() -> None:
    gate = Gate(64)
    assert gate.limit == GATE_START == 16
    limits = []
    for _ in range(12):
        _round(gate, 0.02)
        limits.append(int(gate.limit))
    assert limits[:4] == [20, 25, 31, 39]
    assert limits[-1] == gate.peak == 64  # the ceiling, never beyond
    assert gate.in_flight == 0


def test_the_gate_does_not_grow_with_places_left_unused() -> None:
    gate = Gate(64)
    for _ in range(10):
        _round(gate, 0.02, places=8)
    assert gate.limit == 16


def test_the_gate_shrinks_when_the_server_queues_and_holds_in_between() -> None:
    gate = Gate(64)
    _round(gate, 0.01)  # the fastest answer: 10 ms
    assert int(gate.limit) == 20
    _round(gate, 0.02)  # 2x: within the band, held
    assert int(gate.limit) == 20
    _round(gate, 0.03)  # 3x: the server queues
    assert int(gate.limit) == 15
    for _ in range(60):
        _round(gate, 0.05)
    assert int(gate.limit) == 1  # never below one
    assert gate.limit >= 1.0
    assert gate.low == 1


def test_an_overload_answer_halves_the_gate_once_a_round() -> None:
    gate = Gate(64)
    for _ in range(16):
        gate.enter()
    for _ in range(5):  # a burst of 503s from one round is one signal
        gate.leave(overload=True)
    assert gate.limit == 8
    assert gate.halvings == 1
    for _ in range(11):
        gate.leave(0.02)  # the round ends: the next overload halves again
    gate.enter()
    gate.leave(overload=True)
    assert gate.limit == 4
    assert gate.halvings == 2
    for expected in (5, 6, 7):  # once it has had to shrink, by one a round (of 8 answers): the room is near
        _round(gate, 0.02)
        _round(gate, 0.02)
        assert gate.limit == expected


def test_the_gate_ceiling_bounds_the_start() -> None:
    assert Gate(4).limit == 4
    assert Gate(0).limit == 1


def test_a_full_gate_waits_for_a_place_within_its_bound() -> None:
    gate = Gate(2)
    gate.enter()
    gate.enter()
    entered = threading.Event()

    def worker() -> None:
        gate.enter(bound=10)
        entered.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert not entered.wait(0.1)  # every place taken: it waits
    gate.leave(0.01)
    assert entered.wait(2)  # a place given back lets it in
    thread.join()
    started = time.monotonic()
    assert gate.enter(bound=0.05) is True  # full again: it waits its bound, then goes anyway (never a hang)
    assert time.monotonic() - started >= 0.05
    assert gate.in_flight == 3
