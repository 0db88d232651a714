"""The ``$batch`` engine on its own, fed by a scripted send function (no HTTP, no SDK): items retried alone,
``Retry-After`` honoured, a 424 retried as throttled, failures capped by the retry policy, batches split at 20, and
the adaptive write pace; plus the pure look-up and attribute helpers the Graph adapter hands answers to."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from defguard_entra._attributes import definition_problems, patch_items, values_of, write_results
from defguard_entra._batch import FAILED_DEPENDENCY, BatchAnswer, BatchEngine, RateLimiter, _throttle_percentage
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


def test_rate_limiter_slows_on_429s_and_recovers() -> None:
    limiter = RateLimiter(0)
    assert limiter.target == 0
    assert limiter.batch_size == 20
    limiter.throttled(0.0)
    assert limiter.rate == RateLimiter.SUSTAINED
    limiter._last_cut = 0.0  # a second later
    limiter.throttled(0.0)
    assert limiter.rate == RateLimiter.SUSTAINED / 2
    assert limiter.batch_size == 10
    for _ in range(200):
        limiter.succeeded(20)
    assert limiter.rate is None  # back to full speed
    capped = RateLimiter(5.0)
    assert capped.batch_size == 5
    capped.warned(0.95)
    assert capped.rate == 5.0  # never above the ceiling


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
