"""The token states (``provisioning.tokens``): every rule of :func:`judge_token`, its tolerance edges, and the cases
where the records cannot decide."""

from __future__ import annotations

import datetime as dt

import pytest

from defguard_entra.models import ActivityEvent, ActivityKind, ActivityLog, EnrollmentAttributes, Secret, TokenState
from defguard_entra.provisioning.tokens import (
    DEFAULT_LIFETIME,
    TOLERANCE,
    TokenJudge,
    candidate_lifetimes,
    events_of,
    judge_token,
    log_since,
)

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
MINTED = NOW - 6 * H
LIFETIMES = candidate_lifetimes(None, DEFAULT_LIFETIME)
WINDOW = 6 * H


def _pair(expires_at: dt.datetime | None) -> EnrollmentAttributes:
    return EnrollmentAttributes(Secret("tok-alice-1234"), "https://enroll.example.com", expires_at=expires_at)


def _row(
    kind: ActivityKind, at: dt.datetime, *, actor: str | None = "admin", subject: str | None = "alice"
) -> ActivityEvent:
    return ActivityEvent(at, kind, kind.value, actor, subject)


def _judge(
    expires_at: dt.datetime | None,
    events: list[ActivityEvent] | None,
    *,
    expiry_known: bool = True,
    lifetimes: tuple[dt.timedelta, ...] = LIFETIMES,
) -> tuple[TokenState, str]:
    return judge_token(
        _pair(expires_at), events, now=NOW, lifetimes=lifetimes, refresh_before=WINDOW, expiry_known=expiry_known
    )


OURS = _row(ActivityKind.TOKEN_ADDED, MINTED)
EXPIRES = MINTED + DEFAULT_LIFETIME  # 18 h from now


def test_a_token_ours_and_untouched_is_usable_as_far_as_the_records_show() -> None:
    state, why = _judge(EXPIRES, [OURS])
    assert state is TokenState.USABLE
    assert "as far as Defguard's records show" in why


def test_past_its_expiry_a_token_is_expired_whatever_the_log_says() -> None:
    assert _judge(NOW - dt.timedelta(seconds=1), [OURS])[0] is TokenState.EXPIRED
    assert _judge(NOW, None)[0] is TokenState.EXPIRED  # the log not even available: the expiry decides alone
    assert _judge(NOW + dt.timedelta(seconds=1), None)[0] is TokenState.EXPIRING


def test_within_the_refresh_window_a_live_token_is_expiring() -> None:
    minted = NOW - DEFAULT_LIFETIME + WINDOW  # expires exactly at the window's edge
    state, why = _judge(minted + DEFAULT_LIFETIME, [_row(ActivityKind.TOKEN_ADDED, minted)])
    assert state is TokenState.EXPIRING
    assert "refresh window" in why
    later = minted + dt.timedelta(seconds=1)
    assert _judge(later + DEFAULT_LIFETIME, [_row(ActivityKind.TOKEN_ADDED, later)])[0] is TokenState.USABLE


def test_a_later_token_for_the_member_by_anyone_supersedes_the_stored_one() -> None:
    other = _row(ActivityKind.TOKEN_ADDED, MINTED + H, actor="bob-admin")
    state, why = _judge(EXPIRES, [OURS, other])
    assert state is TokenState.SUPERSEDED
    assert "bob-admin" in why


def test_a_token_minted_for_someone_else_supersedes_nothing() -> None:
    events = events_of(ActivityLog((OURS, _row(ActivityKind.TOKEN_ADDED, MINTED + H, subject="bob"))), "alice")
    assert _judge(EXPIRES, list(events or ()))[0] is TokenState.USABLE


def test_an_enrollment_by_the_member_after_ours_means_used() -> None:
    for kind in (ActivityKind.ENROLLMENT_STARTED, ActivityKind.ENROLLMENT_COMPLETED):
        opened = _row(kind, MINTED + H, actor="alice", subject=None)
        log = ActivityLog((OURS, opened))
        state, why = _judge(EXPIRES, list(events_of(log, "alice") or ()))
        assert state is TokenState.USED, kind
        assert kind.value in why


def test_an_enrollment_before_ours_opened_an_older_token() -> None:
    before = _row(ActivityKind.ENROLLMENT_STARTED, MINTED - H, actor="alice", subject="alice")
    assert _judge(EXPIRES, [before, OURS])[0] is TokenState.USABLE


@pytest.mark.parametrize(
    ("offset", "found"),
    [(TOLERANCE, True), (-TOLERANCE, True), (TOLERANCE + dt.timedelta(seconds=1), False)],
)
def test_ours_is_the_row_within_the_tolerance_of_the_stored_expiry(offset: dt.timedelta, found: bool) -> None:
    later = _row(ActivityKind.TOKEN_ADDED, MINTED + H)
    state, _ = _judge(EXPIRES + offset, [OURS, later])
    # Found: ours is OURS and the later row supersedes it; not found: nothing identifies the stored token.
    assert state is (TokenState.SUPERSEDED if found else TokenState.UNKNOWN)


def test_ours_is_the_nearest_matching_row_so_a_token_minted_a_minute_later_supersedes_it() -> None:
    later = _row(ActivityKind.TOKEN_ADDED, MINTED + dt.timedelta(minutes=1))  # both within the tolerance
    assert _judge(EXPIRES, [OURS, later])[0] is TokenState.SUPERSEDED
    earlier = _row(ActivityKind.TOKEN_ADDED, MINTED - dt.timedelta(minutes=1))
    assert _judge(EXPIRES, [earlier, OURS])[0] is TokenState.USABLE


def test_a_row_under_the_tools_own_user_is_ours_before_a_nearer_one_by_another_admin() -> None:
    """Another admin mints in the UI a second after the tool: the rows are seconds apart, both within the
    tolerance; the tool's own row is the stored token's, so the other admin's supersedes it."""
    ours = _row(ActivityKind.TOKEN_ADDED, MINTED - dt.timedelta(seconds=2), actor="dg-api")
    other = _row(ActivityKind.TOKEN_ADDED, MINTED, actor="helpdesk")
    log = ActivityLog((ours, other))
    judge = TokenJudge(log, NOW, LIFETIMES, WINDOW, expiry_known=True, minter="dg-api")
    assert judge(_pair(EXPIRES), "alice")[0] is TokenState.SUPERSEDED
    blind = TokenJudge(log, NOW, LIFETIMES, WINDOW, expiry_known=True)  # without the minter: the nearest row
    assert blind(_pair(EXPIRES), "alice")[0] is TokenState.USABLE


def test_a_changed_lifetime_leaves_the_token_unknown() -> None:
    """A token minted with a 2-day lifetime the run no longer knows: no row matches, so no verdict."""
    minted = NOW - 6 * H
    rows = [_row(ActivityKind.TOKEN_ADDED, minted), _row(ActivityKind.TOKEN_ADDED, minted + H)]
    state, why = _judge(minted + 2 * DEFAULT_LIFETIME, rows)
    assert state is TokenState.UNKNOWN
    assert "no row for the stored token" in why
    known = candidate_lifetimes(2 * DEFAULT_LIFETIME)
    assert _judge(minted + 2 * DEFAULT_LIFETIME, rows, lifetimes=known)[0] is TokenState.SUPERSEDED


def test_without_the_log_the_state_is_unknown_unless_the_expiry_decides() -> None:
    state, why = _judge(EXPIRES, None)
    assert state is TokenState.UNKNOWN
    assert "activity log is not available" in why
    assert events_of(ActivityLog(available=False, problem="license"), "alice") is None


def test_without_the_expiry_attribute_nothing_identifies_the_token() -> None:
    later = _row(ActivityKind.TOKEN_ADDED, MINTED + H)
    state, why = _judge(EXPIRES, [OURS, later], expiry_known=False)  # a value stored, but not to be trusted
    assert state is TokenState.UNKNOWN
    assert "EnrollmentTokenExpiresAt is not defined" in why
    state, why = _judge(None, [OURS, later])
    assert state is TokenState.UNKNOWN
    assert "no expiry is stored" in why


def test_aged_out_rows_leave_the_token_unknown() -> None:
    assert _judge(EXPIRES, [])[0] is TokenState.UNKNOWN


def test_candidate_lifetimes_and_the_log_window() -> None:
    assert candidate_lifetimes(2 * H, None, 2 * H) == (2 * H, DEFAULT_LIFETIME)
    assert candidate_lifetimes() == (DEFAULT_LIFETIME,)
    assert log_since(NOW, (2 * H, 3 * DEFAULT_LIFETIME)) == NOW - 4 * DEFAULT_LIFETIME


def test_events_of_keeps_the_member_s_tokens_and_own_enrollments_oldest_first() -> None:
    rows = (
        _row(ActivityKind.ENROLLMENT_STARTED, MINTED + H, actor="alice", subject=None),
        _row(ActivityKind.TOKEN_ADDED, MINTED, actor="admin", subject="alice"),
        _row(ActivityKind.TOKEN_ADDED, MINTED, actor="alice", subject="bob"),  # alice (an admin) minted for bob
        _row(ActivityKind.ENROLLMENT_STARTED, MINTED, actor="bob", subject="bob"),
        _row(ActivityKind.OTHER, MINTED, actor="alice", subject="alice"),
    )
    mine = events_of(ActivityLog(rows), "alice")
    assert mine is not None
    assert [(e.kind, e.actor) for e in mine] == [
        (ActivityKind.TOKEN_ADDED, "admin"),
        (ActivityKind.ENROLLMENT_STARTED, "alice"),
    ]


def test_the_run_s_judge_reads_the_member_s_rows() -> None:
    judge = TokenJudge(
        ActivityLog((OURS, _row(ActivityKind.TOKEN_ADDED, MINTED + H, subject="bob"))), NOW, LIFETIMES, WINDOW, True
    )
    assert judge(_pair(EXPIRES), "alice")[0] is TokenState.USABLE
    assert judge(_pair(EXPIRES), "bob")[0] is TokenState.UNKNOWN  # alice's row is not bob's token


def test_the_default_window_is_a_quarter_of_the_token_s_own_lifetime() -> None:
    """A run asking for 7 days still judges a desktop-activation token (always the server's 24 h) by 6 h."""
    week = dt.timedelta(days=7)
    lifetimes = candidate_lifetimes(week, DEFAULT_LIFETIME)

    def judge(minted: dt.datetime, lifetime: dt.timedelta) -> TokenState:
        row = _row(ActivityKind.TOKEN_ADDED, minted)
        pair = _pair(minted + lifetime)
        return judge_token(pair, [row], now=NOW, lifetimes=lifetimes, refresh_before=None, expiry_known=True)[0]

    assert judge(NOW, DEFAULT_LIFETIME) is TokenState.USABLE  # fresh desktop token: 24 h left, window 6 h
    assert judge(NOW - 18 * H, DEFAULT_LIFETIME) is TokenState.EXPIRING  # exactly 6 h left
    assert judge(NOW - 4 * DEFAULT_LIFETIME, week) is TokenState.USABLE  # 3 days left, window 42 h
    assert judge(NOW - 5 * DEFAULT_LIFETIME - 7 * H, week) is TokenState.EXPIRING  # 41 h left
    lost = judge_token(  # no row: the shortest candidate's quarter
        _pair(NOW + 5 * H), [], now=NOW, lifetimes=lifetimes, refresh_before=None, expiry_known=True
    )
    assert lost[0] is TokenState.EXPIRING
    assert "6:00:00" in lost[1]
