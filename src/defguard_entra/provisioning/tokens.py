"""Pure: what a stored token is worth now, judged from the services' own records (nothing kept between runs).

For a member whose attribute set holds a complete pair, :func:`judge_token` gives a :class:`TokenState` and the
reason in words:

1. **Expiry** (the third attribute, ``EnrollmentTokenExpiresAt``, when the set defines it): past → ``expired``.
   Without it the expiry cannot be known.
2. **Which log row is ours**: in Defguard's activity log, the ``TOKEN_ADDED`` row for the member whose time plus
   one of the candidate lifetimes (the run's, the server's default, 24 h) lies within :data:`TOLERANCE` of the
   stored expiry: one under the tool's own Defguard user first, then the nearest. Nothing else identifies a token
   in the log; a token the same admin account mints by hand within two minutes of the tool's cannot be told apart.
3. Ours found: a later ``TOKEN_ADDED`` for the member, by anyone → ``superseded`` (Defguard deletes a user's unused
   tokens whenever it mints one); an ``ENROLLMENT_STARTED``/``ENROLLMENT_COMPLETED`` by the member after ours →
   ``used`` (this token, or a newer one, was opened in the client).
4. Alive by the records and expiring within ``refresh_before`` (default a quarter of the token's lifetime) →
   ``expiring``; otherwise ``usable``, "as far as
   Defguard's records show": an SSO self-activation on the enrollment page mints a token and deletes the unused
   ones without any log row, so a token it killed cannot be seen.
5. Ours not found (no expiry stored, the log not available, its rows aged out, the lifetime changed since) →
   ``unknown`` with the reason, unless the expiry alone decides (``expired``, ``expiring``). A token is never
   called dead from an estimate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence

import attrs

from ..models import ActivityEvent, ActivityKind, ActivityLog, EnrollmentAttributes, TokenState

__all__ = [
    "DEFAULT_LIFETIME",
    "LOG_KINDS",
    "TOLERANCE",
    "Judge",
    "TokenJudge",
    "candidate_lifetimes",
    "events_of",
    "index_events",
    "judge_token",
    "log_since",
]

#: How far a log row's time plus a lifetime may be from the stored expiry and still be the row of that token:
#: the client computes the expiry from its own clock before the request; Defguard logs the row when it mints.
TOLERANCE = dt.timedelta(minutes=2)
#: Defguard's default token lifetime (both lines), the last candidate when nothing else is known.
DEFAULT_LIFETIME = dt.timedelta(hours=24)
#: The rows of the activity log the judgement reads.
LOG_KINDS = frozenset({ActivityKind.TOKEN_ADDED, ActivityKind.ENROLLMENT_STARTED, ActivityKind.ENROLLMENT_COMPLETED})
#: A run's judgement of one stored pair: ``judge(pair, username) -> (state, reason)`` (:class:`TokenJudge`).
Judge = Callable[[EnrollmentAttributes, str | None], tuple[TokenState, str]]

_ENROLLMENT = frozenset({ActivityKind.ENROLLMENT_STARTED, ActivityKind.ENROLLMENT_COMPLETED})


def candidate_lifetimes(*lifetimes: dt.timedelta | None) -> tuple[dt.timedelta, ...]:
    """The lifetimes a stored token may have been minted with, in order, without repeats: those given (the run's,
    the server's default) and :data:`DEFAULT_LIFETIME`."""
    return tuple(dict.fromkeys(x for x in (*lifetimes, DEFAULT_LIFETIME) if x is not None))


def log_since(now: dt.datetime, lifetimes: Iterable[dt.timedelta]) -> dt.datetime:
    """From when the log is read: the longest candidate lifetime and a day before ``now`` (a token older than
    its lifetime has expired, whatever the log says)."""
    return now - max(lifetimes, default=DEFAULT_LIFETIME) - dt.timedelta(days=1)


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def index_events(log: ActivityLog) -> dict[str, tuple[ActivityEvent, ...]] | None:
    """Per username, the rows of ``log`` that concern its tokens, oldest first: tokens minted for it (by anyone),
    and its own enrollments; ``None`` when the log is not available. Built once per run (one pass over the log)."""
    if not log.available:
        return None
    by_user: dict[str, list[ActivityEvent]] = {}
    for event in sorted(log.events, key=lambda e: (e.at, e.id if e.id is not None else 0)):
        if event.kind is ActivityKind.TOKEN_ADDED:
            names = {event.subject}
        elif event.kind in _ENROLLMENT:
            names = {event.actor, event.subject}
        else:
            continue
        for name in names - {None}:
            by_user.setdefault(str(name), []).append(event)
    return {name: tuple(rows) for name, rows in by_user.items()}


def events_of(log: ActivityLog, username: str | None) -> tuple[ActivityEvent, ...] | None:
    """The rows of ``log`` that concern ``username``'s tokens (:func:`index_events`); ``None`` when the log is not
    available."""
    index = index_events(log)
    if index is None:
        return None
    return index.get(username, ()) if username is not None else ()


def _after(event: ActivityEvent, ours: ActivityEvent) -> bool:
    if event.at != ours.at:
        return event.at > ours.at
    return event.id is not None and ours.id is not None and event.id > ours.id


def _ours(
    events: Sequence[ActivityEvent],
    expires_at: dt.datetime,
    lifetimes: Sequence[dt.timedelta],
    minter: str | None = None,
) -> tuple[ActivityEvent, dt.timedelta] | None:
    """The ``TOKEN_ADDED`` row that minted the stored token, and its lifetime: of the rows whose time plus a
    candidate lifetime is within :data:`TOLERANCE` of the stored expiry, one under ``minter`` (the Defguard user
    whose API token the tool mints with) before any other, then the one nearest to the expiry (another admin's
    token minted a minute after ours is not taken for ours), the later on a tie."""
    best: tuple[tuple[bool, dt.timedelta, int], ActivityEvent, dt.timedelta] | None = None
    for index, event in enumerate(events):
        if event.kind is not ActivityKind.TOKEN_ADDED:
            continue
        for lifetime in lifetimes:
            gap = abs(event.at + lifetime - expires_at)
            if gap > TOLERANCE:
                continue
            score = (minter is not None and event.actor != minter, gap, -index)
            if best is None or score < best[0]:
                best = score, event, lifetime
    return (best[1], best[2]) if best is not None else None


def _dead(events: Sequence[ActivityEvent], ours: ActivityEvent) -> tuple[TokenState, str] | None:
    """``superseded`` or ``used`` after ``ours``, with the reason; ``None`` when neither."""
    later = next((e for e in events if e.kind is ActivityKind.TOKEN_ADDED and _after(e, ours)), None)
    if later is not None:
        who = f" by {later.actor}" if later.actor else ""
        return TokenState.SUPERSEDED, (
            f"Defguard minted another token for this user at {_iso(later.at)}{who}, which deleted the stored one"
        )
    used = next((e for e in events if e.kind in _ENROLLMENT and _after(e, ours)), None)
    if used is not None:
        return TokenState.USED, (
            f"the user opened an enrollment in the client at {_iso(used.at)} ({used.event}): the stored token, or a "
            "newer one, has been used"
        )
    return None


def judge_token(
    stored: EnrollmentAttributes,
    events: Sequence[ActivityEvent] | None,
    *,
    now: dt.datetime,
    lifetimes: Sequence[dt.timedelta],
    refresh_before: dt.timedelta | None,
    expiry_known: bool,
    minter: str | None = None,
) -> tuple[TokenState, str]:
    """The state of the stored token of one member and why, in words (the rules are the module's docstring).

    ``events``: the member's rows of the activity log (:func:`events_of`), ``None`` when the log is not available;
    ``refresh_before``: the refresh window, ``None`` for a quarter of the token's lifetime (the lifetime its log row
    matched, else the shortest candidate: a desktop-activation token always has the server's default lifetime,
    whatever the run asks for, and must not look expiring the moment it is minted); ``expiry_known``: the attribute
    set defines ``EnrollmentTokenExpiresAt`` (and the mint writes it); ``minter``: the Defguard user the tool's
    API token belongs to (its rows are preferred when telling which row minted the stored token).
    """
    expires_at = stored.expires_at if expiry_known else None
    if expires_at is None:
        why = (
            "no expiry is stored with the token (EnrollmentTokenExpiresAt)"
            if expiry_known
            else "EnrollmentTokenExpiresAt is not defined in the attribute set (or could not be checked), so the "
            "stored token cannot be told apart from others in the log"
        )
        return TokenState.UNKNOWN, f"cannot tell whether the stored token still works: {why}"
    if expires_at <= now:
        return TokenState.EXPIRED, f"the stored token expired at {_iso(expires_at)}"
    found = _ours(events, expires_at, lifetimes, minter) if events is not None else None
    if found is not None and (dead := _dead(events or (), found[0])) is not None:
        return dead
    window = refresh_before
    if window is None:
        window = (found[1] if found is not None else min(lifetimes, default=DEFAULT_LIFETIME)) / 4
    soon = f"the stored token expires at {_iso(expires_at)}"
    if expires_at - now <= window:
        return TokenState.EXPIRING, f"{soon}, within the refresh window of {window}"
    if found is not None:
        return TokenState.USABLE, f"{soon}; unused and not replaced, as far as Defguard's records show"
    why = (
        "Defguard's activity log is not available"
        if events is None
        else "Defguard's activity log has no row for the stored token (its rows may have aged out, or the token's "
        "lifetime differs from the ones known)"
    )
    return TokenState.UNKNOWN, f"cannot tell whether the stored token still works: {why}"


@attrs.frozen
class TokenJudge:
    """:func:`judge_token` with one run's facts: the log, the time, the lifetimes, the refresh window."""

    log: ActivityLog
    now: dt.datetime
    lifetimes: tuple[dt.timedelta, ...]
    refresh_before: dt.timedelta | None  # None: a quarter of each token's lifetime
    expiry_known: bool
    minter: str | None = None  # the Defguard user whose API token the tool mints with
    _index: dict[str, tuple[ActivityEvent, ...]] | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", index_events(self.log))  # once: the judge is asked once per member

    def __call__(self, stored: EnrollmentAttributes, username: str | None) -> tuple[TokenState, str]:
        events = None if self._index is None else self._index.get(username, ()) if username is not None else ()
        return judge_token(
            stored,
            events,
            now=self.now,
            lifetimes=self.lifetimes,
            refresh_before=self.refresh_before,
            expiry_known=self.expiry_known,
            minter=self.minter,
        )
