"""The ``$batch`` engine on its own, fed by a scripted send function (no HTTP, no SDK): items retried alone,
``Retry-After`` honoured, a 424 retried as throttled, failures capped by the retry policy, batches split at 20, and
the adaptive write pace; plus the pure look-up and attribute helpers the Graph adapter hands answers to."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from defguard_entra._attributes import definition_problems, patch_items, values_of, write_results
from defguard_entra._batch import (
    FAILED_DEPENDENCY,
    BatchAnswer,
    BatchEngine,
    RateLimiter,
    SlowStart,
    _throttle_percentage,
)
from defguard_entra._lookup import settle
from defguard_entra._retry import RetryPolicy
from defguard_entra.models import EntraUser, MatchedBy, Secret

FAST = RetryPolicy(attempts=3, timeout=10.0, wait_initial=0.001, wait_max=0.01)


class Script:
    """A send function answering each item from ``plan[id]``: a list of statuses (or 424 for the whole batch)."""

    def __init__(self, plan: dict[str, list[int]], *, retry_after: str = "0", headers: dict[str, str] | None = None):
        self.plan = plan
        self.retry_after = retry_after
        self.headers = headers or {}
        self.posts: list[list[str]] = []

    async def __call__(self, items: list[dict[str, Any]]) -> BatchAnswer:
        self.posts.append([str(item["id"]) for item in items])
        statuses = {str(item["id"]): self.plan[str(item["id"])].pop(0) for item in items}
        if set(statuses.values()) == {FAILED_DEPENDENCY}:
            return BatchAnswer(FAILED_DEPENDENCY, retry_after=self.retry_after)
        responses = [
            {"id": i, "status": s, "headers": {"Retry-After": self.retry_after, **self.headers}, "body": {}}
            for i, s in statuses.items()
        ]
        return BatchAnswer(200, responses)


def _engine(send: Script, *, rate: float = 0.0, policy: RetryPolicy = FAST) -> BatchEngine:
    stats = {"requests": 0, "throttled": 0, "retries": 0}
    return BatchEngine(send, limiter=RateLimiter(rate), retry=policy, stats=stats, parallel=2)


def _get(n: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "method": "GET", "url": f"/users/{i}"} for i in range(n)]


def test_throttled_items_are_retried_alone_and_counted() -> None:
    send = Script({"0": [200], "1": [429, 429, 200], "2": [404]})
    engine = _engine(send)
    answers = asyncio.run(engine.batch(_get(3)))
    assert {i: (a["status"], r) for i, (a, r) in answers.items()} == {"0": (200, 0), "1": (200, 2), "2": (404, 0)}
    assert send.posts == [["0", "1", "2"], ["1"], ["1"]]
    assert engine.stats == {"requests": 0, "throttled": 2, "retries": 2}


def test_a_424_batch_is_retried_as_throttled() -> None:
    send = Script({"0": [FAILED_DEPENDENCY, 201], "1": [FAILED_DEPENDENCY, 204]})
    engine = _engine(send)
    answers = asyncio.run(engine.batch(_get(2)))
    assert {i: a["status"] for i, (a, _) in answers.items()} == {"0": 201, "1": 204}
    assert engine.stats["throttled"] == 2


def test_unavailable_items_fail_after_the_policys_attempts() -> None:
    send = Script({"0": [503, 503, 503, 200]})
    answers = asyncio.run(_engine(send).batch(_get(1)))
    answer, retries = answers["0"]
    assert answer["status"] == 503
    assert retries == 3
    assert len(send.posts) == 3


def test_a_retry_after_past_the_retry_time_fails_now_saying_why() -> None:
    send = Script({"0": [429, 200]}, retry_after="3600")
    started = time.monotonic()
    answers = asyncio.run(_engine(send).batch(_get(1)))
    assert time.monotonic() - started < 5
    answer, _ = answers["0"]
    assert answer["status"] == 429
    assert "Graph asked to wait 3600 s" in answer["body"]["error"]["message"]


def test_a_batch_holds_1_to_20_items_and_batched_splits_them() -> None:
    engine = _engine(Script({}))
    with pytest.raises(ValueError, match="1 to 20"):
        asyncio.run(engine.batch(_get(21)))
    send = Script({str(i): [200] for i in range(45)})
    answers = asyncio.run(_engine(send).batched(_get(45)))
    assert len(answers) == 45
    assert sorted(len(post) for post in send.posts) == [5, 20, 20]


def test_writes_are_paced_after_a_throttle_warning() -> None:
    send = Script({"0": [204]}, headers={"x-ms-throttle-limit-percentage": "0.9"})
    engine = _engine(send)
    item = {"id": "0", "method": "PATCH", "url": "/users/0", "body": {}}
    asyncio.run(engine.write([item]))
    assert engine.limiter.rate == RateLimiter.SUSTAINED
    assert engine.limiter.batch_size == 20


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_slows_on_429s_and_recovers() -> None:
    clock = Clock()
    limiter = RateLimiter(0, clock=clock)
    assert limiter.target == 0
    assert limiter.batch_size == 20
    limiter.throttled(0.0)
    assert limiter.rate == RateLimiter.SUSTAINED
    limiter.throttled(0.0)
    assert limiter.rate == RateLimiter.SUSTAINED  # at most one cut a second
    clock.now += 1.0
    limiter.throttled(0.0)
    assert limiter.rate == RateLimiter.SUSTAINED / 2
    assert limiter.batch_size == 10
    clock.now += RateLimiter.CLEAN
    for _ in range(200):
        limiter.succeeded(20)
    assert limiter.rate is None  # back to full speed
    capped = RateLimiter(5.0)
    assert capped.batch_size == 5
    capped.warned(0.95)
    assert capped.rate == 5.0  # never above the ceiling


def test_after_a_cut_the_pace_grows_back_to_just_under_the_pace_refused_until_a_clean_period() -> None:
    """The 50-writes-per-5-s benchmark: halved from 20/s to the refill rate of 10/s and grown again by one write a
    second per batch, the pace overshot 10/s and was refused again (26 and 11 × 429 for a target of 10). After a cut
    at 10/s it now grows back to 9/s and no further, until 30 s pass with no cut."""
    clock = Clock()
    limiter = RateLimiter(0, clock=clock)
    limiter.throttled(0.0)  # from full speed: the sustainable pace, nothing known of the budget yet
    assert (limiter.rate, limiter.refused_at) == (RateLimiter.SUSTAINED, None)
    clock.now += 1.0
    limiter.throttled(0.0)
    assert (limiter.rate, limiter.refused_at) == (10.0, 20.0)
    for _ in range(50):
        clock.now += 0.5
        limiter.succeeded(10)
    assert limiter.rate == RateLimiter.CAUTION * 20.0  # grew quickly back to 18/s, not past it
    clock.now += 1.0
    limiter.throttled(0.0)  # refused at 18/s: 9/s, and at most 0.9 × 18 = 16.2/s for a while
    assert (limiter.rate, limiter.refused_at) == (9.0, 18.0)
    for _ in range(20):
        clock.now += 1.0
        limiter.succeeded(9)
    assert limiter.rate == pytest.approx(16.2)
    clock.now += RateLimiter.CLEAN
    limiter.succeeded(20)
    assert limiter.refused_at is None  # a clean period: the memory is dropped and the pace grows on
    assert limiter.rate == pytest.approx(17.2)


def test_a_budget_use_rising_fast_halves_the_pace_before_graph_refuses() -> None:
    """At 20/s against a budget refilled at 10/s the header climbs from 81 % to 99 % in a second, and the next
    batch was refused half (the 50/5 benchmark's 10 × 429 of its first second): that rise now halves the pace."""
    clock = Clock()
    limiter = RateLimiter(0, clock=clock)
    limiter.warned(0.81)
    assert limiter.rate == RateLimiter.SUSTAINED
    clock.now += 0.2
    limiter.warned(0.99)  # a batch sent before the first warning: too soon after it to tell a trend
    assert limiter.rate == RateLimiter.SUSTAINED
    clock.now += 0.8
    limiter.warned(0.99)
    assert limiter.rate == RateLimiter.SUSTAINED / 2
    assert limiter.refused_at == RateLimiter.SUSTAINED


def test_a_cut_by_writes_sent_at_full_speed_is_undone_when_the_budget_refills_faster() -> None:
    """The 100/5 benchmark: the first warning (94 %) set 20/s, then the batch already in flight at full speed was
    refused 13 of 20, which halved the new pace to 10/s for the rest of the run (22.6 s for a bound of 16.5 s). The
    cut stays (at 50/5 the budget refills at 10/s), but it is unsure: readings of writes sent at 10/s that fall
    by 10 points restore 20/s. A cut by writes sent at the pace now is not undone so."""
    clock = Clock()
    limiter = RateLimiter(0, clock=clock)
    at_full_speed = limiter.epoch
    limiter.warned(0.94, at_full_speed)
    assert limiter.rate == RateLimiter.SUSTAINED
    clock.now += 0.1
    limiter.throttled(0.05, sent=at_full_speed)
    assert limiter.rate == RateLimiter.SUSTAINED / 2
    halved = limiter.epoch
    limiter.warned(1.0, at_full_speed)  # the level now: 100 %
    clock.now += 1.0
    limiter.warned(0.96, halved)  # falling, but not by 10 points yet
    assert limiter.rate == RateLimiter.SUSTAINED / 2
    clock.now += 1.0
    limiter.warned(0.86, halved)  # 10 points in a second: the budget refills at about 20/s
    assert limiter.rate == RateLimiter.SUSTAINED
    assert limiter.refused_at is None

    sure = RateLimiter(0, clock=clock)
    sure.warned(0.94)
    clock.now += 1.0
    sure.throttled(0.05, sent=sure.epoch)  # refused at 20/s: the budget refills slower than that
    for percentage in (1.0, 0.9, 0.8):
        clock.now += 1.0
        sure.warned(percentage, sure.epoch)
    assert sure.rate == RateLimiter.SUSTAINED / 2


def test_the_engine_tells_the_limiter_which_pace_a_refused_batch_was_sent_at() -> None:
    """Through the engine: a batch sent at full speed, refused all while another batch's warning set the
    sustainable pace, halves that pace, unsure."""
    send = Script({str(i): [429, 204] for i in range(20)}, retry_after="0")
    engine = _engine(send)
    limiter = engine.limiter
    answer = send.__call__

    async def warned_in_flight(items: list[dict[str, Any]]) -> BatchAnswer:
        if len(send.posts) == 0:
            limiter.warned(0.9)  # another batch's answer, while this one is on its way
        return await answer(items)

    engine._send = warned_in_flight
    asyncio.run(engine.write(_patch(20)))
    assert send.posts == [[str(i) for i in range(20)]] * 2
    assert limiter.refused_at == RateLimiter.SUSTAINED
    assert limiter._unsure
    assert limiter.rate == RateLimiter.SUSTAINED / 2 + 1  # the 20 retried writes went through


def test_a_few_refusals_with_the_budget_nearly_spent_cut_the_pace() -> None:
    """The 50/5 benchmark at 20/s, the header at 100 %: 7 of 20 refused, batch after batch, never "most of a
    batch". With the header saying the budget is nearly spent, 3 refusals are enough; without it they are noise."""
    for headers, halved in (({"x-ms-throttle-limit-percentage": "1.00"}, True), ({}, False)):
        send = Script({str(i): [429, 204] if i < 7 else [204] for i in range(20)}, headers=headers)
        engine = _engine(send, rate=0)
        limiter = engine.limiter
        limiter.warned(0.97)  # paced at 20/s
        asyncio.run(engine.write(_patch(20)))
        assert (limiter.refused_at is not None) is halved
        assert limiter.rate is not None
        assert (limiter.rate < RateLimiter.SUSTAINED) is halved


def test_a_steady_budget_use_keeps_the_sustainable_pace() -> None:
    """The 100/5 benchmark: paced at 20/s, the budget's refill rate, the header stays near 97 % (small moves either
    way): no cut, the run keeps its pace."""
    clock = Clock()
    limiter = RateLimiter(0, clock=clock)
    for percentage in (0.97, 0.99, 0.96, 1.0, 0.98, 0.99, 1.0):
        limiter.warned(percentage)
        clock.now += 1.0
    assert limiter.rate == RateLimiter.SUSTAINED
    assert limiter.refused_at is None


def test_throttle_percentage_header() -> None:
    assert _throttle_percentage({"headers": {"X-MS-Throttle-Limit-Percentage": "0.85"}}) == 0.85
    assert _throttle_percentage({"headers": {"x-ms-throttle-limit-percentage": "n/a"}}) == 0.0
    assert _throttle_percentage({}) == 0.0


# -- the pure helpers the adapter hands answers to ---------------------------------------------------------------


def _user(uid: str, upn: str) -> EntraUser:
    return EntraUser.from_api({"id": uid, "userPrincipalName": upn})


def test_settle_matches_one_user_and_reports_several() -> None:
    result: dict[str, Any] = {}
    found = {
        "one@x.com": [_user("1", "one@x.com"), _user("1", "one@x.com")],  # the same user twice: one match
        "two@x.com": [_user("2", "b@x.com"), _user("3", "a@x.com")],
    }
    left = settle(found, MatchedBy.MAIL, result, ["one@x.com", "two@x.com", "none@x.com"])
    assert left == ["none@x.com"]
    assert result["one@x.com"].unique
    assert result["two@x.com"].candidates == ("a@x.com", "b@x.com")
    assert result["two@x.com"].error == "2 Entra users match by mail: a@x.com, b@x.com"


def test_attribute_items_and_answers() -> None:
    items = patch_items("Defguard", {"u/1": {"EnrollmentToken": "t", "EnrollmentUrl": None}})
    assert items[0]["url"] == "/users/u%2F1"
    body = items[0]["body"]["customSecurityAttributes"]["Defguard"]
    assert body == {
        "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
        "EnrollmentToken": "t",
        "EnrollmentUrl": None,
    }
    answers = {"0": ({"status": 204}, 1), "1": ({"status": 403, "body": {"error": {"code": "Forbidden"}}}, 0)}
    results = write_results(["a", "b"], answers)
    assert results["a"].ok
    assert results["a"].retries == 1
    assert results["b"].error == "Graph 403 Forbidden"
    stored = {"customSecurityAttributes": {"Defguard": {"@odata.type": "x", "EnrollmentToken": "tok", "Other": None}}}
    assert values_of(stored, "Defguard") == {"EnrollmentToken": Secret("tok")}
    assert values_of(stored, "Elsewhere") is None


def test_definition_problems() -> None:
    good = {"attributeSet": "Defguard", "type": "String", "status": "Available"}
    definitions = [
        {**good, "name": "EnrollmentToken"},
        {**good, "name": "EnrollmentUrl", "isCollection": True, "usePreDefinedValuesOnly": True, "type": "Integer"},
        {**good, "attributeSet": "Other", "name": "EnrollmentToken"},
    ]
    defined, problems = definition_problems("Defguard", definitions)
    assert defined
    assert problems == (
        "Defguard.EnrollmentUrl has type Integer, it must be String",
        "Defguard.EnrollmentUrl allows multiple values: it must be single-valued",
        "Defguard.EnrollmentUrl only allows predefined values: turn that off",
    )
    assert definition_problems("Missing", definitions) == (
        False,
        ("attribute Missing.EnrollmentToken is not defined", "attribute Missing.EnrollmentUrl is not defined"),
    )


def _patch(n: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "method": "PATCH", "url": f"/users/{i}", "body": {}} for i in range(n)]


def test_a_random_refusal_of_a_retried_item_does_not_pace_the_run() -> None:
    """One write of 20 refused, and refused again when retried alone: noise, waited out by that item only. (It
    used to set the sustainable pace of 20/s for the whole run, most of the fault benchmark's time.)"""
    send = Script({"0": [429, 429, 204], **{str(i): [204] for i in range(1, 20)}})
    engine = _engine(send)
    answers = asyncio.run(engine.write(_patch(20)))
    assert {a["status"] for a, _ in answers.values()} == {204}
    assert send.posts[1:] == [["0"], ["0"]]
    assert engine.limiter.rate is None  # still at full speed


def test_a_batch_mostly_refused_sets_the_sustainable_pace() -> None:
    """An exhausted budget refuses most of a batch: that is a signal (the counterpart of the test above)."""
    send = Script({str(i): [429, 204] if i < 12 else [204] for i in range(20)})
    engine = _engine(send)
    asyncio.run(engine.write(_patch(20)))
    rate = engine.limiter.rate
    assert rate is not None  # paced: the sustainable pace, raised a little by the 12 retries that went through
    assert RateLimiter.SUSTAINED <= rate <= RateLimiter.SUSTAINED + 1


# -- the slow start: one batch of writes in flight until Graph has kept silent for 160 writes ----------------------


class Overlap:
    """A send function that answers each batch after a short wait, with the ``warn`` percentage from its
    ``warn_from``-th batch on, and records how many batches were in flight at each send and the pace then."""

    def __init__(self, engine_box: list[BatchEngine], *, warn_from: int | None = None) -> None:
        self.box = engine_box
        self.warn_from = warn_from
        self.in_flight = 0
        self.answered = 0  # writes answered so far
        self.sends: list[tuple[int, float]] = []  # (batches in flight, with this one; the pace it was sent at)
        self.answered_at_send: list[int] = []
        self.sent_at: list[float] = []
        self.answered_at: list[float] = []

    async def __call__(self, items: list[dict[str, Any]]) -> BatchAnswer:
        self.in_flight += 1
        self.sends.append((self.in_flight, self.box[0].limiter.target))
        self.answered_at_send.append(self.answered)
        self.sent_at.append(time.monotonic())
        number = len(self.sends)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        self.answered += len(items)
        self.answered_at.append(time.monotonic())
        warn = self.warn_from is not None and number >= self.warn_from
        headers = {"x-ms-throttle-limit-percentage": "0.81"} if warn else {}
        return BatchAnswer(200, [{"id": str(i["id"]), "status": 204, "headers": headers} for i in items])


def _overlapping(warn_from: int | None = None) -> tuple[BatchEngine, Overlap]:
    box: list[BatchEngine] = []
    send = Overlap(box, warn_from=warn_from)
    engine = BatchEngine(
        send, limiter=RateLimiter(0), retry=FAST, stats={"requests": 0, "throttled": 0, "retries": 0}, parallel=4
    )
    box.append(engine)
    return engine, send


def _patches(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "method": "PATCH", "url": f"/users/{i}", "body": {}} for i in range(start, start + n)]


async def _write_all(engine: BatchEngine, batches: int) -> None:
    await asyncio.gather(*(engine.batch(_patches(20 * b, 20)) for b in range(batches)))


def test_writes_start_one_batch_at_a_time_and_widen_while_graph_keeps_silent() -> None:
    """Thirty batches offered at once: the first eight go one at a time; every 160 writes answered without a
    warning allow one more batch in flight (the engine's ``parallel`` and the caller's window bound it further)."""
    engine, send = _overlapping()
    asyncio.run(_write_all(engine, 30))
    in_flight = [n for n, _ in send.sends]
    assert SlowStart.WIDEN == 160
    assert in_flight[:8] == [1] * 8
    for n, answered in zip(in_flight, send.answered_at_send, strict=True):
        assert n <= 1 + answered // SlowStart.WIDEN
    assert max(in_flight) >= 3  # it did widen
    assert engine.slow_start.sending == 0


def test_reads_are_not_held_back_by_the_slow_start() -> None:
    engine, send = _overlapping()

    async def reads() -> None:
        await asyncio.gather(*(engine.batch(_get(20)) for _ in range(4)))

    asyncio.run(reads())
    assert max(n for n, _ in send.sends) == 4  # the engine's parallel batches, no slow start


def test_the_batch_after_the_first_warning_is_sent_at_the_pace_the_warning_set() -> None:
    """The 50-per-5-s benchmark's burst: the second batch's answer brings the first warning (81 %). The third
    batch, already waiting its turn, goes out at the sustainable pace the warning set, never at full speed next to
    the batch that warned (which had 11 of its 20 writes refused, run after run)."""
    engine, send = _overlapping(warn_from=2)

    async def three() -> None:  # the third of 4 writes: at 20/s, 0.2 s after the warning
        await asyncio.gather(
            engine.batch(_patches(0, 20)), engine.batch(_patches(20, 20)), engine.batch(_patches(40, 4))
        )

    asyncio.run(three())
    assert [n for n, _ in send.sends] == [1, 1, 1]
    assert [pace for _, pace in send.sends] == [0.0, 0.0, RateLimiter.SUSTAINED]  # 0: not paced
    assert send.sent_at[2] - send.answered_at[1] >= 0.15  # paced, not sent the moment its turn came
    assert engine.slow_start.limit == 1  # a warning narrows to one


def test_a_batch_that_is_not_answered_narrows_the_slow_start() -> None:
    engine, _ = _overlapping()
    slow = engine.slow_start

    async def failing(items: list[dict[str, Any]]) -> BatchAnswer:
        raise OSError("connection reset")

    async def run() -> None:
        await _write_all(engine, 8)  # 160 clean writes: two in flight allowed
        assert slow.limit == 2
        engine._send = failing
        with pytest.raises(OSError):
            await engine.batch(_patches(100, 20))

    asyncio.run(run())
    assert (slow.limit, slow.sending) == (1, 0)


def test_a_batch_cancelled_while_waiting_its_turn_gives_nothing_back_twice() -> None:
    engine, _ = _overlapping()
    slow = engine.slow_start

    async def run() -> None:
        first = asyncio.ensure_future(engine.batch(_patches(0, 20)))
        second = asyncio.ensure_future(engine.batch(_patches(20, 20)))
        await asyncio.sleep(0.005)  # the first in flight, the second waiting its turn
        assert slow.sending == 1
        second.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second

    asyncio.run(run())
    assert slow.sending == 0
