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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from ._chunks import chunked
from ._odata import error_of
from ._retry import Activity, RetryPolicy, parse_retry_after
from .config import BATCH_LIMIT

__all__ = ["FAILED_DEPENDENCY", "RETRYABLE", "BatchAnswer", "BatchEngine", "ItemAnswers", "RateLimiter", "SendBatch"]

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
    reported missing in practice) sets the documented sustainable pace; a 429 that refuses most of a batch sets it
    too or, when already paced, halves the pace (at most once a second, never below one write a second), besides
    the pause for the server's ``Retry-After``. Writes that succeed with no warning raise the pace again, one write
    a second per batch, back to full speed once well above the sustainable pace.
    """

    SUSTAINED = 3000 / 150  # Graph's documented identity write limit per app and tenant
    FLOOR = 1.0

    def __init__(self, ceiling: float) -> None:
        self.ceiling = ceiling
        self.rate: float | None = ceiling if ceiling > 0 else None  # None: not paced
        self._allowance = 0.0
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._last_cut = 0.0
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
                now = time.monotonic()
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
        if self.rate is None:
            self._allowance = 0.0
            self._last = time.monotonic()
        self.rate = rate

    def warned(self, percentage: float) -> None:
        """Graph said the budget is ``percentage`` (0..1) used: from 80 %, no faster than the sustainable pace."""
        if percentage >= 0.8 and (self.rate is None or self.rate > self.SUSTAINED):
            self._pace(self.SUSTAINED, f"reports {percentage:.0%} of the write budget used")

    def throttled(self, wait: float | None, *, cut: bool = True) -> None:
        """Writes were refused with 429: pause for what the server asked and, with ``cut``, slow down."""
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + (wait if wait is not None else 1.0))
        self._allowance = 0.0
        if cut and now - self._last_cut >= 1.0:
            self._last_cut = now
            if self.rate is None or self.rate > self.SUSTAINED:
                self._pace(self.SUSTAINED, "throttled writes")
            else:
                self._pace(self.rate * 0.5, "throttled writes again")

    def succeeded(self, n: int) -> None:
        """``n`` writes went through with no warning: speed up again (additively), up to full speed."""
        if self.rate is None or (self.ceiling > 0 and self.rate >= self.ceiling):
            return
        self.rate += n / BATCH_LIMIT
        if self.ceiling <= 0 and self.rate >= 4 * self.SUSTAINED:
            self.rate = None
        elif self.ceiling > 0:
            self.rate = min(self.rate, self.ceiling)


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
    paced by ``limiter``, every retry counted in ``stats`` (``"throttled"`` and ``"retries"``)."""

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
            if writes:
                await self.limiter.acquire(writes)
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
            if warning >= 0.8:
                self.limiter.warned(warning)
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
                        {"id": item_id, "status": 429, "body": {"error": {"code": "TooManyRequests", "message": why}}},
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
                enough = min(3, self.limiter.batch_size)
                if throttled_writes >= enough and 2 * throttled_writes >= writes:
                    self.limiter.throttled(wait)
            self.stats["retries"] += len(pending)
            self.activity.beat(wait)  # waiting out what Graph asked for is not silence
            log.info("Graph $batch: %d item(s) throttled or unavailable; retrying in %.2fs", len(pending), wait)
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
