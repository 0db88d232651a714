"""Graph's JSON ``$batch``: many requests in batches of :data:`~defguard_entra.config.BATCH_LIMIT`, sent in
parallel, each item retried on its own, and writes paced by what Graph says about its budget.

Nothing here speaks HTTP: :class:`BatchEngine` is given a :data:`SendBatch` function (the Graph adapter's, in
``_entra.py``) that posts one ``$batch`` body and returns :class:`BatchAnswer`. What the engine adds is Graph's
batching rules ("Combine multiple HTTP requests using JSON batching" and "Microsoft Graph throttling guidance",
Microsoft Learn): items answered 429, 503 or 504 are retried alone, after the longest ``Retry-After`` any of them
asked for; a ``$batch`` answered 424 as a whole is retried as throttled; throttling is waited out until the retry
time is spent, other failures end after the policy's attempts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from ._chunks import chunked
from ._odata import error_of
from ._retry import Activity, RetryPolicy, parse_retry_after
from .config import BATCH_LIMIT

__all__ = [
    "FAILED_DEPENDENCY",
    "RETRYABLE",
    "BatchAnswer",
    "BatchEngine",
    "ItemAnswers",
    "RateLimiter",
    "SendBatch",
    "SlowStart",
]

log = logging.getLogger(__name__)

#: Statuses worth another try, for a whole request and for one item of a ``$batch``.
RETRYABLE = frozenset({429, 503, 504})
#: A ``$batch`` whose items were throttled may be answered 424 as a whole (Graph's throttling guidance).
FAILED_DEPENDENCY = 424
#: ``{item id: (the item's answer, retries it took)}`` for every item sent.
ItemAnswers = dict[str, tuple[dict[str, Any], int]]
#: Called with an item's id and its final answer as soon as it has one (before the rest of its batch).
OnItem = Callable[[str, Mapping[str, Any]], None]


@attrs.frozen
class BatchAnswer:
    """Graph's answer to one ``$batch`` POST: its HTTP status and the items' answers (none for a 424, whose
    ``Retry-After`` header is kept instead)."""

    status: int
    responses: Sequence[dict[str, Any]] = ()
    retry_after: str | None = None


#: Posts one ``$batch`` body's items and returns Graph's answer (raising for a failure of the whole request).
SendBatch = Callable[[list[dict[str, Any]]], Awaitable[BatchAnswer]]


class RateLimiter:
    """Paces Graph writes only when Graph says so: burst first, then the sustainable pace.

    Graph's write budget (3,000 writes per 150 s per app and tenant) is a bucket that a fresh run finds full, so a
    run starts at full speed, capped only by ``ceiling`` (``--graph-write-rate``; 0: none). It slows down when Graph
    signals: ``x-ms-throttle-limit-percentage`` of 0.8 or more (documented as sent above 80 % of a limit, and
    reported missing in practice) sets the documented sustainable pace; a 429 that refuses most of a batch (or 3
    of its writes, when the header says :attr:`NEARLY_SPENT` of the budget is used) sets it
    too or, when already paced, halves the pace (at most once a second, never below one write a second), besides
    the pause for the server's ``Retry-After``. While paced, a budget whose use keeps rising (the percentage up by
    :attr:`RISE` or more from one reading to the next, at least half a second apart, to :attr:`NEARLY_SPENT` or
    more) is the budget refilling slower than the pace: it is halved then too, before Graph refuses.

    Every change of pace starts a new :attr:`epoch`, and the engine tells which epoch a batch was sent in. Writes
    sent before the change (a batch in flight at full speed when the first warning came) and refused say that the
    budget is spent, not how fast it refills: the pace is halved all the same (a budget refilled at 10/s would
    refuse half of the next batch at 20/s), but unsure: when the readings of writes sent at the halved pace then
    fall by :attr:`RISE` or more, the budget refills faster than that, and the pace that was cut is restored (a
    budget refilled at 20/s: the 100/5 benchmark, which such a cut held at 10/s for the rest of the run). Their
    readings are the budget's level, not the trend of the pace now.

    Writes that succeed with no warning raise the pace again, one write a second per batch, back to full speed once
    well above the sustainable pace, but not past :attr:`CAUTION` of the pace Graph last cut (refused or warned
    at) until :attr:`CLEAN` seconds have gone by without a cut: the halved pace grows back only to just under the
    budget's refill rate, instead of overshooting it and being refused again (the 50-per-5-s quota benchmark).
    """

    SUSTAINED = 3000 / 150  # Graph's documented identity write limit per app and tenant
    FLOOR = 1.0
    #: After a cut, the pace grows back to at most this fraction of the pace that was cut ...
    CAUTION = 0.9
    #: ... until this many seconds have gone by without another cut.
    CLEAN = 30.0
    #: A rise of the budget used (``x-ms-throttle-limit-percentage``) between two readings that means "too fast".
    RISE = 0.1
    NEARLY_SPENT = 0.9

    def __init__(self, ceiling: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self.rate: float | None = ceiling if ceiling > 0 else None  # None: not paced
        self._clock = clock
        self._allowance = 0.0
        self._last = clock()
        self._paused_until = 0.0
        self._last_cut = -1.0e9
        #: The pace (writes/s) Graph last cut at, while the run was paced: growth stays below it for a while.
        self.refused_at: float | None = None
        self._reading: tuple[float, float] | None = None  # (when, percentage) of the last warning compared
        #: Counts the changes of pace: a batch sent in an older epoch was not sent at the pace now.
        self.epoch = 0
        self._unsure = False  # the last cut came from writes sent at an older pace
        self._lock = asyncio.Lock()

    @property
    def target(self) -> float:
        """The pace now, in writes per second; 0 while not paced."""
        return self.rate or 0.0

    @property
    def batch_size(self) -> int:
        """How many writes to put in one ``$batch``: below 20 writes/s, smaller batches keep the pace smooth
        instead of one burst of 20 per second or more."""
        rate = self.target
        return BATCH_LIMIT if rate <= 0 else max(1, min(BATCH_LIMIT, int(rate)))

    async def acquire(self, n: int) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                rate = self.rate
                if rate is None:
                    self._last = now
                    return
                capacity = max(float(n), min(rate, float(BATCH_LIMIT)))
                self._allowance = min(capacity, self._allowance + (now - self._last) * rate)
                self._last = now
                if self._allowance >= n:
                    self._allowance -= n
                    return
                await asyncio.sleep((n - self._allowance) / rate)

    def _pace(self, rate: float, why: str) -> None:
        if self.ceiling > 0:
            rate = min(rate, self.ceiling)
        rate = max(self.FLOOR, rate)
        if self.rate != rate:
            log.info("Graph %s: pacing writes at %.1f/s", why, rate)
            self.epoch += 1
        if self.rate is None:
            self._allowance = 0.0
            self._last = self._clock()
        self.rate = rate

    def _cut(self, why: str, *, unsure: bool = False) -> None:
        """Slow down (at most once a second): to the sustainable pace from above it, else by half, remembering
        the pace that was cut (``unsure``: it was not what Graph refused)."""
        now = self._clock()
        if now - self._last_cut < 1.0:
            return
        self._last_cut = now
        self._allowance = 0.0
        if self.rate is None or self.rate > self.SUSTAINED:
            self._unsure = False
            self._pace(self.SUSTAINED, why)
        else:
            self.refused_at = self.rate
            self._unsure = unsure
            self._pace(self.rate * 0.5, why + " again")

    def warned(self, percentage: float, sent: int | None = None) -> None:
        """Graph said the budget is ``percentage`` (0..1) used: from 80 %, no faster than the sustainable pace;
        while paced, a use rising fast towards 100 % (in writes ``sent`` in the epoch now) halves the pace."""
        if percentage < 0.8:
            return
        now = self._clock()
        if self.rate is None or self.rate > self.SUSTAINED:
            self._pace(self.SUSTAINED, f"reports {percentage:.0%} of the write budget used")
            self._reading = (now, percentage)
            return
        if self._reading is None or (sent is not None and sent != self.epoch):  # the level, not the pace's trend
            self._reading = (now, percentage)
            return
        then, before = self._reading
        if now - then < 0.5:  # too close to the last reading to tell a trend
            return
        self._reading = (now, percentage)
        if percentage >= self.NEARLY_SPENT and percentage - before >= self.RISE - 1e-9:
            self._cut(f"write budget used rose from {before:.0%} to {percentage:.0%}")
        elif self._unsure and self.refused_at is not None and before - percentage >= self.RISE - 1e-9:
            restored, self.refused_at, self._unsure = self.refused_at, None, False
            self._pace(restored, f"write budget used fell from {before:.0%} to {percentage:.0%} at the halved pace")

    def throttled(self, wait: float | None, *, cut: bool = True, sent: int | None = None) -> None:
        """Writes were refused with 429: pause for what the server asked and, with ``cut``, slow down (unsure
        when they were ``sent`` in an older epoch than now's, at a pace already given up)."""
        now = self._clock()
        self._paused_until = max(self._paused_until, now + (wait if wait is not None else 1.0))
        self._allowance = 0.0
        if cut:
            self._cut("throttled writes", unsure=sent is not None and sent != self.epoch)

    def succeeded(self, n: int) -> None:
        """``n`` writes went through with no warning: speed up again (additively), up to full speed, but for a
        while after a cut no further than :attr:`CAUTION` of the pace that was cut."""
        if self.rate is None or (self.ceiling > 0 and self.rate >= self.ceiling):
            return
        rate = self.rate + n / BATCH_LIMIT
        if self.refused_at is not None:
            if self._clock() - self._last_cut < self.CLEAN:
                rate = min(rate, max(self.rate, self.CAUTION * self.refused_at))
            else:
                self.refused_at = None
        self.rate = rate
        if self.ceiling <= 0 and self.rate >= 4 * self.SUSTAINED:
            self.rate = None
        elif self.ceiling > 0:
            self.rate = min(self.rate, self.ceiling)


class SlowStart:
    """How many ``$batch``es of writes may be in flight: one at first, one more for every :attr:`WIDEN` writes
    answered with no sign of a spent budget, back to one at the first sign.

    Graph says nothing about its write budget below 80 % of it, and a budget that other apps of the tenant share
    may be nearly spent when a run starts: a bucket of 50 warns at its 40th write, two batches in. A batch sent
    while the one that brings the first warning is on its way is refused whole (the 50-per-5-s benchmark: 11 of
    20 refused whenever that happened). So a run starts with one batch in flight and widens as Graph keeps silent,
    as TCP's slow start does; a large budget (Graph's 3,000 per app) costs the first few batches their overlap.
    Counted in writes, not batches: the write probe's and the first member's one-write batches say little about
    the budget. A batch is "clean" when Graph did not warn about it and the pace did not change because of it; the
    caller's own bounds (the window of unstored tokens, the engine's parallel batches) keep the number in flight finite.
    """

    #: Writes answered clean before one more batch may be in flight. The batches sent after the one that brings
    #: the first warning must fit in what is left of the budget then: 20 %, a quarter of what was used, so one
    #: batch more per 80 writes answered; halved again because a budget refilling while it is spent warns later
    #: than at 80 % of the writes (the 100-per-5-s benchmark: a first warning at 97 %, with 17 writes refused).
    WIDEN = 8 * BATCH_LIMIT

    def __init__(self) -> None:
        self.limit = 1
        self.sending = 0
        self._clean = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self) -> None:
        """Wait until one more batch of writes may be sent; it then counts as in flight until :meth:`leave`."""
        if not self._waiters and self.sending < self.limit:
            self.sending += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave(0, clean=False)  # granted just as it was cancelled: not sent
            else:
                self._waiters.remove(waiter)
            raise

    def leave(self, writes: int, *, clean: bool) -> None:
        """A batch of ``writes`` is answered: ``clean`` counts towards widening, anything else narrows to one."""
        self.sending -= 1
        if clean:
            self._clean += writes
            if self._clean >= self.WIDEN:
                self._clean = 0
                self.limit += 1
        else:
            self._clean = 0
            self.limit = 1
        while self._waiters and self.sending < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.sending += 1
                waiter.set_result(None)


def _throttle_percentage(answer: Mapping[str, Any]) -> float:
    """``x-ms-throttle-limit-percentage`` of a batch item's answer (0.0 when absent or unreadable)."""
    headers = answer.get("headers") or {}
    for key, value in headers.items() if isinstance(headers, Mapping) else ():
        if str(key).lower() == "x-ms-throttle-limit-percentage":
            try:
                return float(value)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


class BatchEngine:
    """Sends ``$batch`` items through ``send``: at most ``parallel`` batches at once, writes (``PATCH`` items)
    paced by ``limiter`` and started slowly (:class:`SlowStart`), every retry counted in ``stats``
    (``"throttled"`` and ``"retries"``)."""

    def __init__(
        self,
        send: SendBatch,
        *,
        limiter: RateLimiter,
        retry: RetryPolicy,
        stats: dict[str, int],
        parallel: int,
        activity: Activity | None = None,
    ) -> None:
        self._send = send
        self.activity = activity if activity is not None else Activity()
        self.limiter = limiter
        self.retry = retry
        self.stats = stats
        self._batches = asyncio.Semaphore(max(1, parallel))
        self.slow_start = SlowStart()

    async def batch(self, requests: Sequence[Mapping[str, Any]], on_item: OnItem | None = None) -> ItemAnswers:
        """Send up to 20 items as one ``$batch``; items answered 429/503/504 are retried on their own.

        Returns ``{id: (item_response, retries)}`` for every item; correlate by id (Graph may reorder them).
        ``on_item`` hears of each item as soon as it is final, while the others may still wait for a retry.
        """
        if not 0 < len(requests) <= BATCH_LIMIT:
            msg = f"a batch holds 1 to {BATCH_LIMIT} requests, not {len(requests)}"
            raise ValueError(msg)
        pending = {str(item["id"]): dict(item) for item in requests}
        done: ItemAnswers = {}

        def finish(item_id: str, answer: dict[str, Any]) -> None:
            done[item_id] = (answer, attempts[item_id])
            del pending[item_id]
            if on_item is not None:
                on_item(item_id, answer)

        attempts: dict[str, int] = dict.fromkeys(pending, 0)  # every retry, for the report
        failures: dict[str, int] = dict.fromkeys(pending, 0)  # 503/504/no answer: capped by --retries
        policy = self.retry
        deadline = time.monotonic() + policy.timeout
        delay = policy.wait_initial
        while pending:
            writes = sum(1 for item in pending.values() if item["method"] == "PATCH")
            epoch = self.limiter.epoch
            clean = False  # for the slow start: Graph answered, did not warn, and the pace did not change
            if writes:
                # Its turn first, then the pace: a batch that waited for the one before it is sent at the pace
                # that one's answer set, not at the pace it found when it started to wait.
                await self.slow_start.enter()
            try:
                if writes:
                    await self.limiter.acquire(writes)
                    epoch = self.limiter.epoch  # the pace these writes are sent at
                async with self._batches:
                    reply = await self._send(list(pending.values()))
                answered: dict[str, dict[str, Any]]
                if reply.status == FAILED_DEPENDENCY:  # every item is retried as throttled
                    retry_after = {"Retry-After": reply.retry_after or ""}
                    answered = {i: {"id": i, "status": 429, "headers": retry_after} for i in pending}
                else:
                    answered = {str(r.get("id")): r for r in reply.responses}
                waits: list[float] = []
                retry_ids = []
                throttled_writes = 0
                for item_id, item in list(pending.items()):
                    answer = answered.get(item_id)
                    status = int(answer.get("status", 0)) if answer else 0
                    if answer is not None and status not in RETRYABLE:
                        finish(item_id, answer)
                        continue
                    attempts[item_id] += 1
                    headers = {str(k).lower(): str(v) for k, v in ((answer or {}).get("headers") or {}).items()}
                    wait = parse_retry_after(headers.get("retry-after"))
                    if wait is not None:
                        waits.append(wait)
                    if status == 429:
                        self.stats["throttled"] += 1
                        throttled_writes += item["method"] == "PATCH"
                    else:
                        failures[item_id] += 1
                    retry_ids.append(item_id)
                    # Throttling is waited out until the time budget (--max-retry-time) is spent; failures also end
                    # after --retries. A 429 says "not now", not "broken".
                    if failures[item_id] >= policy.attempts or time.monotonic() >= deadline:
                        code, message = error_of((answer or {}).get("body"), status)
                        error = {"error": {"code": code, "message": message or "no answer"}}
                        finish(item_id, {"id": item_id, "status": status or 599, "body": error})
                warning = max((_throttle_percentage(a) for a in answered.values()), default=0.0)
                clean = warning < 0.8 and reply.status != FAILED_DEPENDENCY
                if warning >= 0.8:
                    self.limiter.warned(warning, epoch)
                elif writes and len(retry_ids) < writes:
                    self.limiter.succeeded(writes - len(retry_ids))
                if not pending:
                    break
                wait = max(waits) if waits else delay
                left = deadline - time.monotonic()
                if wait > left:  # a wait past the retry budget is not waited out: those members fail now, saying why
                    why = (
                        f"Graph asked to wait {wait:g} s, more than the {max(0.0, left):.0f} s left of the retry time "
                        "(--max-retry-time)"
                    )
                    for item_id in list(pending):
                        finish(
                            item_id,
                            {
                                "id": item_id,
                                "status": 429,
                                "body": {"error": {"code": "TooManyRequests", "message": why}},
                            },
                        )
                    break
                if throttled_writes:
                    # An exhausted budget refuses most of a batch; a few refusals among many successes are noise
                    # that a pause (Retry-After) handles without slowing the whole run.
                    # (Retries of a few leftover items say little either way: they need at least 3 refusals, fewer
                    # only when the pace itself makes batches that small. A lone retried item refused again used
                    # to count as an exhausted budget and set 20/s for the whole run: most of the fault run's time.)
                    # Only then are all writes paused: a random refusal is waited out by its own items (below), not by
                    # every batch in flight (the fault run's 10 % of 429s paused the whole run ~270 times).
                    # With Graph's header saying the budget is nearly spent, a few refusals are not noise either: the
                    # budget refills slower than the pace (the 50/5 benchmark at 20/s: 7 of 20 refused, batch after
                    # batch, none "most of a batch").
                    enough = min(3, self.limiter.batch_size)
                    spent = warning >= self.limiter.NEARLY_SPENT
                    if throttled_writes >= enough and (spent or 2 * throttled_writes >= writes):
                        self.limiter.throttled(wait, sent=epoch)
                self.stats["retries"] += len(pending)
                self.activity.beat(wait)  # waiting out what Graph asked for is not silence
                log.info("Graph $batch: %d item(s) throttled or unavailable; retrying in %.2fs", len(pending), wait)
            finally:
                if writes:
                    self.slow_start.leave(writes, clean=clean and self.limiter.epoch == epoch)
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            delay = min(policy.wait_max, delay * 2)
        return done

    async def batched(
        self, requests: Sequence[Mapping[str, Any]], size: int = BATCH_LIMIT, on_item: OnItem | None = None
    ) -> ItemAnswers:
        """Any number of items, in batches of ``size`` (≤ 20) sent in parallel (bounded by ``parallel``)."""
        results = await asyncio.gather(*(self.batch(chunk, on_item) for chunk in chunked(requests, size)))
        merged: ItemAnswers = {}
        for result in results:
            merged.update(result)
        return merged

    async def write(self, requests: Sequence[Mapping[str, Any]], on_item: OnItem | None = None) -> ItemAnswers:
        """``PATCH`` items in batches sized to the pace now (:attr:`RateLimiter.batch_size`)."""
        return await self.batched(requests, self.limiter.batch_size, on_item)
