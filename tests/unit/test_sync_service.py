"""``ProvisioningService.sync`` (and the token states in ``status`` and ``provision --only-missing``) against the
in-memory fakes of the ports, over simulated days: one clock shared by the fakes and the service."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from test_service_fakes import ENROLL, GROUP, FakeDefguard, FakeGraph, _entra, _user

from defguard_entra import ProvisioningService
from defguard_entra.models import (
    ATTRIBUTE_EXPIRES,
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    ActivityKind,
    EntraUser,
    Report,
    Status,
    TokenKind,
    TokenState,
)

START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


class Clock:
    """Simulated time: ``advance`` moves it; nothing else does."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fakes(clock: Clock) -> tuple[FakeDefguard, FakeGraph]:
    names = ["alice", "bob", "carol"]
    defguard = FakeDefguard(
        [_user("alice"), _user("bob", enrolled=True), _user("carol", devices=1, enrolled=True), _user("dave")]
    )
    defguard.clock = clock
    graph = FakeGraph([_entra(n) for n in names])  # dave has no Entra user
    graph.defines_expiry = True
    return defguard, graph


@pytest.fixture
def service(fakes: tuple[FakeDefguard, FakeGraph], clock: Clock) -> Iterator[ProvisioningService]:
    with ProvisioningService(*fakes, clock=clock) as svc:
        yield svc


def _statuses(report: Report) -> dict[str | None, Status]:
    return {o.username or o.entra_id: o.status for o in report.outcomes}


def _first_sync(fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService) -> Report:
    report = service.sync(GROUP)
    assert _statuses(report) == {
        "alice": Status.PROVISIONED,
        "bob": Status.PROVISIONED,  # a desktop-activation token, as provision gives
        "carol": Status.NOT_SET,  # has a device, nothing stored: nothing to do
        "dave": Status.NOT_FOUND,
    }
    return report


def test_a_first_sync_mints_and_a_second_one_changes_nothing(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, graph = fakes
    report = _first_sync(fakes, service)
    assert report.command == "sync"
    assert report.plan == {"mint": 2, "refresh": 0, "clear": 0, "keep": 0, "none": 2}
    assert report.held is None
    assert {o.username: o.action for o in report.outcomes} == {
        "alice": "mint",
        "bob": "mint",
        "carol": "none",
        "dave": "none",
    }
    alice = graph.values["id-alice"]
    assert alice[ATTRIBUTE_URL] == ENROLL
    assert alice[ATTRIBUTE_EXPIRES] == "2026-03-03T08:00:00Z"  # minted now, the server's 24 h
    assert report.outcome("alice").to_dict()["action"] == "mint"
    writes, minted = len(graph.writes), list(defguard.minted)

    clock.advance(dt.timedelta(hours=1))
    again = service.sync(GROUP)
    assert _statuses(again)["alice"] is Status.EXISTING
    assert _statuses(again)["bob"] is Status.EXISTING
    assert again.outcome("alice").token_state is TokenState.USABLE
    assert "as far as Defguard's records show" in (again.outcome("alice").error or "")
    assert again.plan == {"mint": 0, "refresh": 0, "clear": 0, "keep": 2, "none": 2}
    assert defguard.minted == minted
    assert len(graph.writes) == writes  # not even the write probe: the plan mints nothing
    assert again.summary == {"not_found": 1, "existing": 2, "not_set": 1}


def test_a_token_another_admin_replaced_is_refreshed(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, graph = fakes
    _first_sync(fakes, service)
    old = graph.values["id-alice"][ATTRIBUTE_TOKEN]
    clock.advance(dt.timedelta(hours=2))
    defguard.add_row(ActivityKind.TOKEN_ADDED, "other-admin", "alice")  # minted in the UI: ours is deleted
    report = service.sync(GROUP)
    alice = report.outcome("alice")
    assert alice.status is Status.REFRESHED
    assert alice.token_state is TokenState.SUPERSEDED
    assert alice.action == "refresh"
    assert "other-admin" in (alice.error or "")
    assert graph.values["id-alice"][ATTRIBUTE_TOKEN] != old
    assert graph.values["id-alice"][ATTRIBUTE_EXPIRES] == "2026-03-03T10:00:00Z"
    assert alice.enrollment_token is not None
    assert alice.enrollment_token.value == graph.values["id-alice"][ATTRIBUTE_TOKEN]
    assert report.plan["refresh"] == 1
    assert report.outcome("bob").status is Status.EXISTING
    assert service.sync(GROUP).outcome("alice").status is Status.EXISTING  # and the fresh one is ours


def test_expired_expiring_and_used_tokens_are_refreshed(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    _first_sync(fakes, service)
    clock.advance(dt.timedelta(hours=19))  # 5 h left: within a quarter of 24 h
    assert service.sync(GROUP, dry_run=True).outcome("alice").token_state is TokenState.EXPIRING
    clock.advance(dt.timedelta(hours=6))
    defguard.add_row(ActivityKind.ENROLLMENT_STARTED, "bob", None)
    report = service.sync(GROUP)
    assert report.outcome("alice").token_state is TokenState.EXPIRED
    assert report.outcome("bob").token_state is TokenState.EXPIRED  # the expiry decides first
    assert _statuses(report)["alice"] is Status.REFRESHED

    clock.advance(dt.timedelta(hours=1))
    defguard.add_row(ActivityKind.ENROLLMENT_STARTED, "bob", None)  # bob opens the fresh token in the client
    report = service.sync(GROUP)
    assert report.outcome("bob").token_state is TokenState.USED
    assert report.outcome("bob").status is Status.REFRESHED
    assert report.outcome("alice").status is Status.EXISTING


def test_a_refresh_window_can_be_given(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    _first_sync(fakes, service)
    clock.advance(dt.timedelta(hours=10))  # 14 h left
    assert service.sync(GROUP, dry_run=True).outcome("alice").token_state is TokenState.USABLE
    report = service.sync(GROUP, refresh_before=dt.timedelta(hours=15))
    assert report.outcome("alice").status is Status.REFRESHED
    assert report.outcome("alice").token_state is TokenState.EXPIRING


def test_an_enrolled_member_is_cleared(fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService) -> None:
    defguard, graph = fakes
    _first_sync(fakes, service)
    defguard.users_by_name["alice"] = attrs.evolve(defguard.users_by_name["alice"], devices=1, enrolled=True)
    report = service.sync(GROUP)
    alice = report.outcome("alice")
    assert alice.status is Status.CLEARED
    assert alice.action == "clear"
    assert "did its job" in (alice.error or "")
    assert graph.values["id-alice"] == {}  # token, URL and expiry nulled
    assert graph.writes[-1] == ("id-alice", {ATTRIBUTE_TOKEN: None, ATTRIBUTE_URL: None, ATTRIBUTE_EXPIRES: None})
    assert _statuses(service.sync(GROUP))["alice"] is Status.NOT_SET


def test_disabled_members_in_either_directory_are_cleared(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    _first_sync(fakes, service)
    defguard.users_by_name["alice"] = attrs.evolve(defguard.users_by_name["alice"], active=False)
    graph.users = [attrs.evolve(u, account_enabled=False) if u.id == "id-bob" else u for u in graph.users]
    report = service.sync(GROUP)
    assert _statuses(report)["alice"] is Status.CLEARED
    assert _statuses(report)["bob"] is Status.CLEARED
    assert "disabled in Defguard" in (report.outcome("alice").error or "")
    assert "Entra account is disabled" in (report.outcome("bob").error or "")


def test_an_outsider_holding_this_instance_s_attributes_is_cleared(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    leaver = EntraUser("id-eve", "eve@example.com", mail="eve@example.com", account_enabled=True)
    elsewhere = EntraUser("id-olga", "olga@example.com", mail="olga@example.com")
    slash = EntraUser("id-sam", "sam@example.com", mail="sam@example.com")
    graph.outside = [leaver, elsewhere, slash]
    graph.values["id-eve"] = {ATTRIBUTE_TOKEN: "eve-token-1234", ATTRIBUTE_URL: ENROLL}
    graph.values["id-sam"] = {ATTRIBUTE_TOKEN: "sam-token-1234", ATTRIBUTE_URL: ENROLL + "/"}  # the same URL
    graph.values["id-olga"] = {ATTRIBUTE_TOKEN: "olga-token-1234", ATTRIBUTE_URL: "https://other.example.com"}
    report = service.sync(GROUP)
    eve = next(o for o in report.outcomes if o.entra_id == "id-eve")
    assert eve.status is Status.CLEARED
    assert eve.username is None
    assert eve.user_principal_name == "eve@example.com"
    assert eve.action == "clear"
    assert f"not a member of group {GROUP!r}" in (eve.error or "")
    assert graph.values["id-eve"] == {}
    assert graph.values["id-olga"][ATTRIBUTE_TOKEN] == "olga-token-1234"  # another instance's: not ours
    assert graph.values["id-sam"] == {}
    assert len(report.outcomes) == 6  # every member and each outsider, once each
    assert report.plan["clear"] == 2


def test_a_plan_over_the_threshold_changes_nothing(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    _first_sync(fakes, service)
    for name in ("alice", "bob"):
        defguard.users_by_name[name] = attrs.evolve(defguard.users_by_name[name], active=False)
    writes, minted = len(graph.writes), len(defguard.minted)
    report = service.sync(GROUP, max_changes=1)
    assert report.held is not None
    assert "2 destructive changes" in report.held
    assert "--max-changes 2" in report.held
    assert _statuses(report)["alice"] is Status.PLANNED
    assert report.outcome("alice").action == "clear"
    assert report.to_dict()["held"] == report.held
    assert (len(graph.writes), len(defguard.minted)) == (writes, minted)
    assert service.sync(GROUP, max_changes="100%").held is None  # exactly the plan: it goes through
    assert graph.values["id-alice"] == {}


def test_first_tokens_do_not_count_against_the_threshold(service: ProvisioningService) -> None:
    report = service.sync(GROUP, max_changes=0)
    assert report.held is None
    assert _statuses(report)["alice"] is Status.PROVISIONED


def test_a_dry_run_changes_nothing_and_says_a_real_run_would_be_held(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    report = service.sync(GROUP, dry_run=True)
    assert report.dry_run
    assert _statuses(report)["alice"] is Status.PLANNED
    assert report.outcome("alice").token_kind is TokenKind.ENROLLMENT
    assert (defguard.minted, graph.writes) == ([], [])
    _first_sync(fakes, service)
    defguard.users_by_name["alice"] = attrs.evolve(defguard.users_by_name["alice"], active=False)
    writes = len(graph.writes)
    report = service.sync(GROUP, dry_run=True, max_changes=0)
    assert report.held is None
    assert any(n.startswith("a real run would be held") for n in report.notes)
    assert len(graph.writes) == writes


def test_without_the_expiry_attribute_tokens_are_kept_as_unknown(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, graph = fakes
    graph.defines_expiry = False
    report = _first_sync(fakes, service)
    assert ATTRIBUTE_EXPIRES not in graph.values["id-alice"]
    clock.advance(dt.timedelta(hours=30))  # expired in truth, but nothing says so
    report = service.sync(GROUP)
    assert report.outcome("alice").status is Status.EXISTING
    assert report.outcome("alice").token_state is TokenState.UNKNOWN
    notes = [n for n in report.notes if "EnrollmentTokenExpiresAt" in n]
    assert notes == [
        (
            "EnrollmentTokenExpiresAt is not defined in attribute set 'Defguard': expiry cannot be known: define it, "
            "see docs/entra-setup.md"
        )
    ]
    assert defguard.minted == [("alice", TokenKind.ENROLLMENT), ("bob", TokenKind.DESKTOP)]


def test_without_the_log_tokens_are_unknown_unless_the_expiry_decides(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    _first_sync(fakes, service)
    defguard.log_problem = "the API token may not read the activity log (403)"
    report = service.sync(GROUP)
    assert report.outcome("alice").token_state is TokenState.UNKNOWN
    assert report.outcome("alice").status is Status.EXISTING
    assert [n for n in report.notes if "activity log" in n] == [
        (
            "Defguard's activity log is not available (the API token may not read the activity log (403)): whether a "
            "stored token was replaced or used cannot be known"
        )
    ]
    clock.advance(dt.timedelta(days=2))
    assert service.sync(GROUP).outcome("alice").status is Status.REFRESHED  # expired: no log needed


def test_the_log_is_read_once_since_the_longest_lifetime_and_a_day(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    _first_sync(fakes, service)
    assert defguard.log_reads == []  # nothing stored yet: nothing to judge
    service.sync(GROUP, lifetime=dt.timedelta(days=3))
    assert defguard.log_reads == [clock() - dt.timedelta(days=4)]


def test_status_names_each_member_s_token_state(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    _first_sync(fakes, service)
    clock.advance(dt.timedelta(hours=1))
    defguard.add_row(ActivityKind.TOKEN_ADDED, "other-admin", "bob")
    report = service.status(GROUP)
    assert _statuses(report)["alice"] is Status.SET
    assert report.outcome("alice").token_state is TokenState.USABLE
    assert report.outcome("bob").token_state is TokenState.SUPERSEDED
    assert (report.outcome("bob").error or "").startswith("token superseded: Defguard minted another token")
    assert report.outcome("carol").token_state is None  # nothing stored


def test_only_missing_replaces_dead_tokens_and_keeps_the_rest(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    _first_sync(fakes, service)
    clock.advance(dt.timedelta(hours=1))
    defguard.add_row(ActivityKind.TOKEN_ADDED, "other-admin", "bob")
    report = service.provision(GROUP, only_missing=True)
    assert _statuses(report)["alice"] is Status.EXISTING
    assert report.outcome("alice").token_state is TokenState.USABLE
    assert _statuses(report)["bob"] is Status.PROVISIONED
    assert [name for name, _ in defguard.minted] == ["alice", "bob", "bob"]


def test_the_journal_applies_a_member_left_stale_is_refreshed_first(
    fakes: tuple[FakeDefguard, FakeGraph], clock: Clock, tmp_path: Path
) -> None:
    from defguard_entra.provisioning.journal import Journal, run_key

    defguard, graph = fakes
    with ProvisioningService(defguard, graph, clock=clock, state_dir=tmp_path) as service:
        _first_sync(fakes, service)
        key = run_key(defguard.url, "defguard", GROUP)
        with Journal(tmp_path, key, group_name=GROUP, defguard_url=defguard.url) as journal:
            journal.minting(["bob"])  # a run that died after minting for bob
        report = service.sync(GROUP)
    assert report.outcome("bob").status is Status.REFRESHED
    assert report.outcome("bob").token_state is TokenState.USABLE  # as judged: the journal knows better
    assert "did not finish" in (report.outcome("bob").error or "")
    assert report.outcome("alice").status is Status.EXISTING
    assert Journal.peek(tmp_path, key) == frozenset()


def test_a_stop_mid_sync_interrupts_the_rest_and_clears_nothing(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    graph.outside = [EntraUser("id-eve", "eve@example.com", mail="eve@example.com")]
    graph.values["id-eve"] = {ATTRIBUTE_TOKEN: "eve-token-1234", ATTRIBUTE_URL: ENROLL}
    stop = threading.Event()
    defguard.on_mint = lambda _name: stop.set()
    report = service.sync(GROUP, stop=stop)
    assert report.interrupted
    assert _statuses(report)["alice"] is Status.PROVISIONED
    assert _statuses(report)["bob"] is Status.INTERRUPTED
    assert _statuses(report)["id-eve"] is Status.INTERRUPTED
    assert graph.values["id-eve"][ATTRIBUTE_TOKEN] == "eve-token-1234"


def test_progress_counts_mints_then_clears(fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService) -> None:
    _, graph = fakes
    graph.outside = [EntraUser("id-eve", "eve@example.com", mail="eve@example.com")]
    graph.values["id-eve"] = {ATTRIBUTE_TOKEN: "eve-token-1234", ATTRIBUTE_URL: ENROLL}
    seen: list[tuple[int, int]] = []
    service.sync(GROUP, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3)
    assert all(total == 3 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_long_lifetime_does_not_make_desktop_tokens_look_expiring(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, clock: Clock
) -> None:
    defguard, _ = fakes
    week = dt.timedelta(days=7)
    service.sync(GROUP, lifetime=week)
    clock.advance(dt.timedelta(hours=1))
    again = service.sync(GROUP, lifetime=week)
    assert again.outcome("bob").token_state is TokenState.USABLE  # its 24 h, judged by a quarter of 24 h
    assert again.outcome("alice").token_state is TokenState.USABLE
    assert len(defguard.minted) == 2
