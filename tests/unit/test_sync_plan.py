"""The pure ``sync`` plan (``provisioning.sync_plan``): one action per kind of member, and the threshold on
destructive changes (``max_changes``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from defguard_entra.exceptions import ConfigurationError
from defguard_entra.models import (
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    DefguardUser,
    EnrolledPolicy,
    EnrollmentAttributes,
    EntraUser,
    Status,
    TokenKind,
    TokenState,
)
from defguard_entra.provisioning.plan import Member
from defguard_entra.provisioning.roster import checked_sync_arguments
from defguard_entra.provisioning.sync_plan import ChangeLimit, SyncPlan, plan_sync

URL = "https://enroll.example.com"
PAIR = {ATTRIBUTE_TOKEN: "tok-12345678", ATTRIBUTE_URL: URL}


def _member(
    name: str,
    *,
    values: dict[str, Any] | None = None,
    devices: int = 0,
    active: bool = True,
    enrolled: bool = False,
    entra_enabled: bool = True,
) -> Member:
    user = DefguardUser(name, f"{name}@example.com", active=active, enrolled=enrolled, devices=devices)
    entra = EntraUser(f"id-{name}", f"{name}@example.com", mail=f"{name}@example.com", account_enabled=entra_enabled)
    return Member(name, user, entra, read=True, values=values)


def _states(**states: TokenState) -> Any:
    def judge(pair: EnrollmentAttributes, username: str | None) -> tuple[TokenState, str]:
        assert pair.complete
        return states[username or ""], f"judged {username}"

    return judge


def _plan(
    members: list[Member],
    *,
    outsiders: tuple[Member, ...] = (),
    judge: Any = None,
    limit: ChangeLimit | None = None,
    enrolled: EnrolledPolicy = "auto",
    stale: frozenset[str] = frozenset(),
) -> SyncPlan:
    return plan_sync(
        members,
        outsiders,
        enrolled=enrolled,
        line=2,
        judge=judge or _states(),
        stale=stale,
        limit=limit or ChangeLimit(),
    )


def _actions(plan: SyncPlan, members: list[Member]) -> dict[str | None, str | None]:
    del plan
    return {m.username: m.action for m in members}


def test_each_kind_of_member_gets_its_action() -> None:
    members = [
        _member("new"),  # nothing stored, no device: a first token
        _member("fine", values=dict(PAIR)),
        _member("unsure", values=dict(PAIR)),
        _member("soon", values=dict(PAIR)),
        _member("old", values=dict(PAIR)),
        _member("replaced", values=dict(PAIR)),
        _member("opened", values=dict(PAIR)),
        _member("half", values={ATTRIBUTE_URL: URL}),
        _member("device", values=dict(PAIR), devices=1, enrolled=True),
        _member("device-empty", devices=1, enrolled=True),
        _member("gone", values=dict(PAIR), active=False),
        _member("entra-off", values=dict(PAIR), entra_enabled=False),
        _member("entra-off-empty", entra_enabled=False),
    ]
    settled = _member("lost")
    settled.settle(Status.NOT_FOUND, "no Entra user")
    judge = _states(
        fine=TokenState.USABLE,
        unsure=TokenState.UNKNOWN,
        soon=TokenState.EXPIRING,
        old=TokenState.EXPIRED,
        replaced=TokenState.SUPERSEDED,
        opened=TokenState.USED,
    )
    plan = _plan([*members, settled], judge=judge)
    assert _actions(plan, [*members, settled]) == {
        "new": "mint",
        "fine": "keep",
        "unsure": "keep",
        "soon": "refresh",
        "old": "refresh",
        "replaced": "refresh",
        "opened": "refresh",
        "half": "refresh",
        "device": "clear",
        "device-empty": "none",
        "gone": "clear",
        "entra-off": "clear",
        "entra-off-empty": "none",
        "lost": "none",
    }
    assert plan.counts == {"mint": 1, "refresh": 5, "clear": 3, "keep": 2, "none": 3}
    assert {m.username: m.state for m in members if m.state} == {
        "fine": TokenState.USABLE,
        "unsure": TokenState.UNKNOWN,
        "soon": TokenState.EXPIRING,
        "old": TokenState.EXPIRED,
        "replaced": TokenState.SUPERSEDED,
        "opened": TokenState.USED,
    }
    assert plan.destructive == 7  # 3 clears, 4 tokens replaced; half a pair with no token destroys no token
    assert plan.reason(members[1]) == "judged fine"
    assert "did its job" in (plan.reason(members[8]) or "")
    assert members[0].kind is TokenKind.ENROLLMENT


def test_the_enrolled_policy_decides_as_provision_does() -> None:
    """``--enrolled desktop``: a member with a device still needs a (desktop-activation) token, so what it holds
    is judged rather than cleared."""
    device = _member("device", values=dict(PAIR), devices=1, enrolled=True)
    plan = _plan([device], judge=_states(device=TokenState.USABLE), enrolled="desktop")
    assert device.action == "keep"
    assert plan.clear == ()
    fresh = _member("fresh", devices=1, enrolled=True)
    _plan([fresh], enrolled="desktop")
    assert fresh.action == "mint"
    assert fresh.kind is TokenKind.DESKTOP


def test_a_stale_member_is_refreshed_whatever_its_state_and_goes_first() -> None:
    members = [_member("a", values=dict(PAIR)), _member("b", values=dict(PAIR))]
    plan = _plan(members, judge=_states(a=TokenState.EXPIRED, b=TokenState.USABLE), stale=frozenset({"b"}))
    assert [m.username for m in plan.refresh] == ["b", "a"]


def test_outsiders_are_cleared_and_counted() -> None:
    outsider = Member(None, entra=EntraUser("id-x", "x@example.com"))
    outsider.error = "not a member of group 'Staff'"
    plan = _plan([_member("new")], outsiders=(outsider,))
    assert plan.clear == (outsider,)
    assert outsider.action == "clear"
    assert plan.destructive == 1
    assert plan.reason(outsider) == "not a member of group 'Staff'"


def test_held_and_settled_plans() -> None:
    members = [_member(f"u{n}", values=dict(PAIR), devices=1) for n in range(3)]
    plan = _plan(members, limit=ChangeLimit(count=2))
    assert plan.held is not None
    assert "3 destructive changes" in plan.held
    assert "--max-changes 3" in plan.held
    assert "--dry-run" in plan.held
    plan.settle_planned()
    assert {m.status for m in members} == {Status.PLANNED}


# -- the threshold ------------------------------------------------------------------------------------------------


def _clears(n: int) -> list[Member]:
    return [_member(f"c{i}", values=dict(PAIR), devices=1) for i in range(n)]


def test_exactly_at_the_threshold_passes_and_one_more_is_held() -> None:
    assert _plan(_clears(5), limit=ChangeLimit(count=5)).held is None
    assert _plan(_clears(6), limit=ChangeLimit(count=5)).held is not None


def test_first_mints_do_not_count() -> None:
    members = [_member(f"n{i}") for i in range(40)] + _clears(1)
    plan = _plan(members, limit=ChangeLimit(count=1))
    assert plan.destructive == 1
    assert plan.held is None


def test_the_default_is_ten_percent_of_the_group_or_25() -> None:
    assert ChangeLimit().of(10) == 25
    assert ChangeLimit().of(250) == 25
    assert ChangeLimit().of(251) == 26
    assert ChangeLimit().of(1000) == 100
    assert _plan(_clears(25)).held is None
    assert _plan(_clears(26)).held is not None


def test_a_share_of_the_group_rounds_up() -> None:
    assert ChangeLimit.parse("20%").of(12) == 3
    assert ChangeLimit.parse("10%").of(250) == 25  # exactly: no float rounding up to 26
    assert ChangeLimit.parse("0%").of(100) == 0
    assert ChangeLimit.parse(" 2.5 % ").of(100) == 3
    assert ChangeLimit.parse("100%").of(7) == 7
    members = _clears(3) + [_member(f"k{i}") for i in range(7)]  # 10 members, 3 clears
    assert _plan(members, limit=ChangeLimit.parse("30%")).held is None
    assert _plan(members, limit=ChangeLimit.parse("21%")).held is None  # 2.1 rounds up to 3
    assert _plan(members, limit=ChangeLimit.parse("20%")).held is not None


def test_max_changes_is_parsed_once() -> None:
    assert ChangeLimit.parse(None) == ChangeLimit()
    assert ChangeLimit.parse(7) == ChangeLimit(count=7)
    assert ChangeLimit.parse("7") == ChangeLimit(count=7)
    assert ChangeLimit.parse("15%") == ChangeLimit(percent=Decimal(15))
    assert str(ChangeLimit.parse("15%")) == "15%"


@pytest.mark.parametrize("bad", [-1, "-1", "ten", "101%", "5%%", 2.5, True, "", [3]])
def test_a_bad_max_changes_is_one_line_naming_the_option_and_the_fix(bad: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ChangeLimit.parse(bad)
    message = str(caught.value)
    assert message.startswith("max_changes ")
    assert "e.g. 20%" in message
    assert "\n" not in message


def test_sync_arguments_are_checked_before_any_request() -> None:
    with pytest.raises(ConfigurationError, match="max_changes"):
        checked_sync_arguments(
            "Staff", "defguard", enrolled="auto", lifetime=None, group_id=None, refresh_before=None, max_changes="x"
        )
    with pytest.raises(ConfigurationError, match="refresh_before"):
        checked_sync_arguments(
            "Staff",
            "defguard",
            enrolled="auto",
            lifetime=None,
            group_id=None,
            refresh_before="6 parsecs",
            max_changes=1,
        )
    lifetime, window, limit = checked_sync_arguments(
        "Staff", "defguard", enrolled="auto", lifetime="2d", group_id=None, refresh_before="6h", max_changes="5%"
    )
    assert (lifetime, window, limit) == (dt.timedelta(days=2), dt.timedelta(hours=6), ChangeLimit(percent=Decimal(5)))
