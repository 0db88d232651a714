"""``DefguardClient.activity_log`` and ``DefguardClient(clock=)`` against the Defguard emulator over real HTTP, both
API lines: server-side filters, every page, a missing Content-Type, "not available", real failures, the page cap."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
import requests

from defguard_entra import (
    ActivityKind,
    ConfigurationError,
    DefguardAPIError,
    DefguardClient,
    DefguardUnreachableError,
    RetryPolicy,
)
from defguard_entra.testing import Clock, DefguardEmulator, Faults

T0 = dt.datetime(2026, 5, 4, 8, 0, tzinfo=dt.UTC)
FAST = RetryPolicy(attempts=2, timeout=5.0, wait_initial=0.001, wait_max=0.01)
TOKEN_KINDS = {ActivityKind.TOKEN_ADDED}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=["1.6", "2.0"])
def emu(request: pytest.FixtureRequest, clock: Clock) -> Iterator[DefguardEmulator]:
    with DefguardEmulator(request.param, clock=clock) as emulator:
        for name in ("alice", "bob"):
            emulator.add_user(name, groups=["VPN"])
        emulator.add_user("carol", is_admin=True, enrolled=True)
        yield emulator


@pytest.fixture
def client(emu: DefguardEmulator, clock: Clock) -> Iterator[DefguardClient]:
    with DefguardClient(emu.url, emu.admin_token, retry=FAST, clock=clock) as defguard:
        yield defguard


def _queries(emu: DefguardEmulator) -> list[list[tuple[str, str]]]:
    return [parse_qsl(r.query) for r in emu.requests_to("activity_log")]


def test_reads_who_minted_what_for_whom_and_the_enrollment_rows(
    emu: DefguardEmulator, client: DefguardClient, clock: Clock
) -> None:
    client.start_enrollment("alice")
    clock.advance(hours=1)
    token = emu.mint_as("carol", "alice")
    emu.open_enrollment(token)
    emu.redeem(token, device=False)
    client.start_desktop("bob")
    emu.sso_activate("bob")  # writes nothing

    log = client.activity_log(since=T0 - dt.timedelta(minutes=1))

    assert log.available
    assert log.problem is None
    summary = [(e.kind, e.event, e.actor, e.subject) for e in log.events]
    assert summary == [
        (ActivityKind.TOKEN_ADDED, "enrollment_token_added", "admin", "alice"),
        (ActivityKind.TOKEN_ADDED, "enrollment_token_added", "carol", "alice"),
        (ActivityKind.ENROLLMENT_STARTED, "enrollment_started", "alice", "alice"),
        (ActivityKind.ENROLLMENT_COMPLETED, "enrollment_completed", "alice", "alice"),
        (ActivityKind.TOKEN_ADDED, "client_configuration_token_added", "admin", "bob"),
    ]
    stored = emu.activity_log()
    assert [e.id for e in log.events] == [row["id"] for row in stored]
    for event, row in zip(log.events, stored, strict=True):
        assert event.at.tzinfo is dt.UTC
        assert abs(event.at - row["timestamp"]) < dt.timedelta(milliseconds=1)  # chrono keeps microseconds


def test_filters_by_time_and_event_on_the_server(emu: DefguardEmulator, client: DefguardClient, clock: Clock) -> None:
    emu.mint_as("carol", "alice")
    clock.advance(days=1)
    since = clock()
    token = emu.mint_as("carol", "bob")
    emu.open_enrollment(token)

    log = client.activity_log(since=since, kinds=TOKEN_KINDS)

    assert [(e.actor, e.subject) for e in log.events] == [("carol", "bob")]
    (query,) = _queries(emu)
    assert ("event", "enrollment_token_added") in query
    assert ("event", "client_configuration_token_added") in query
    assert ("event", "enrollment_started") not in query
    (sent,) = [value for key, value in query if key == "from"]
    assert dt.datetime.fromisoformat(sent) == since
    everything = client.activity_log(since=since, kinds=None)
    assert [e.kind for e in everything.events] == [ActivityKind.TOKEN_ADDED, ActivityKind.ENROLLMENT_STARTED]
    assert not any(key == "event" for key, _ in _queries(emu)[-1])


def test_reads_every_page(emu: DefguardEmulator, client: DefguardClient) -> None:
    for _ in range(130):
        emu.mint_as("carol", "alice")
    log = client.activity_log(since=T0 - dt.timedelta(hours=1), kinds=TOKEN_KINDS)
    assert log.available
    assert [e.id for e in log.events] == list(range(1, 131))
    pages = {"1.6": 3, "2.0": 2}[emu.version]  # 1.6: 50 a page whatever is asked; 2.x: 100
    assert len(_queries(emu)) == pages


def test_a_2x_page_without_content_type_is_read(clock: Clock) -> None:
    """v2.0.0's paginated answers carry no Content-Type (and 1.6's never do: the other tests cover it)."""
    with DefguardEmulator("2.0", clock=clock, paginated_content_type=None) as emu:
        emu.add_user("alice")
        emu.mint_as("admin", "alice")
        raw = requests.get(
            f"{emu.url}/api/v1/activity_log", headers={"Authorization": f"Bearer {emu.admin_token}"}, timeout=10
        )
        assert "Content-Type" not in raw.headers  # the case under test really is served
        with DefguardClient(emu.url, emu.admin_token, retry=FAST) as client:
            log = client.activity_log(since=T0 - dt.timedelta(hours=1))
    assert [e.subject for e in log.events] == ["alice"]


def test_page_cap_keeps_the_newest_and_says_so(emu: DefguardEmulator, client: DefguardClient) -> None:
    for _ in range(120):
        emu.mint_as("carol", "alice")
    client.activity_page_cap = 1
    log = client.activity_log(since=T0 - dt.timedelta(hours=1))
    assert not log.available
    assert log.problem is not None
    assert "1 pages" in log.problem
    per_page = {"1.6": 50, "2.0": 100}[emu.version]
    assert [e.id for e in log.events] == list(range(121 - per_page, 121))  # the newest page, oldest first
    assert len(_queries(emu)) == 1


def test_not_available_for_a_non_admin_token(emu: DefguardEmulator) -> None:
    emu.add_user("dave", enrolled=True)
    with DefguardClient(emu.url, emu.add_api_token("dave"), retry=FAST) as client:
        log = client.activity_log(since=T0)
    assert not log.available
    assert log.events == ()
    assert log.problem is not None
    assert "403" in log.problem
    assert "Token authentication is not allowed for normal users" in log.problem


def test_not_available_past_the_licence_grace(clock: Clock) -> None:
    with (
        DefguardEmulator("2.0", clock=clock, license_overdue_days=20) as emu,
        DefguardClient(emu.url, emu.admin_token, retry=FAST) as client,
    ):
        log = client.activity_log(since=T0)
    assert not log.available
    assert log.problem is not None
    assert "401 Session is required" in log.problem


@pytest.mark.parametrize("version", ["1.6", "2.0"])
def test_not_available_on_a_server_without_the_endpoint(version: str) -> None:
    with (
        DefguardEmulator(version, activity_log_endpoint=False) as emu,
        DefguardClient(emu.url, emu.admin_token, retry=FAST) as client,
    ):
        log = client.activity_log(since=T0)
    assert not log.available
    assert log.problem == (
        "the activity log cannot be read: this Defguard serves no activity log (its web UI answered: a version "
        "without one?)"
    )


def test_a_failing_server_raises_after_the_retries(emu: DefguardEmulator, client: DefguardClient) -> None:
    emu.faults = Faults(rates={500: 1.0}, endpoints={"activity_log"})
    with pytest.raises(DefguardAPIError) as caught:
        client.activity_log(since=T0)
    assert caught.value.status == 500
    assert len(emu.requests_to("activity_log")) == FAST.attempts


def test_a_naive_since_is_refused_before_any_request(emu: DefguardEmulator, client: DefguardClient) -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        client.activity_log(since=dt.datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    assert emu.requests_to("activity_log") == []


def test_the_clock_sets_expires_at(emu: DefguardEmulator, client: DefguardClient, clock: Clock) -> None:
    clock.advance(days=3)
    issued = client.start_enrollment("alice", dt.timedelta(hours=2))
    assert issued.expires_at is not None
    expected = T0 + dt.timedelta(days=3, hours=2)
    assert abs(issued.expires_at - expected) < dt.timedelta(seconds=5)
    server_side = emu.token_expiry(issued.token.value)
    assert server_side is not None
    assert abs(issued.expires_at - server_side) < dt.timedelta(seconds=1)


def test_an_unreachable_server_raises() -> None:
    emu = DefguardEmulator("2.0").start()
    url, token = emu.url, emu.admin_token
    emu.stop()
    with DefguardClient(url, token, retry=FAST) as client, pytest.raises(DefguardUnreachableError):
        client.activity_log(since=T0)
