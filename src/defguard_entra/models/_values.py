"""The small value types every layer shares: secrets, statuses, token kinds and the policies a run takes."""

from __future__ import annotations

import enum
import threading
import weakref
from collections.abc import Iterable
from typing import Literal, get_args

import attrs

__all__ = [
    "ENROLLED_POLICIES",
    "GROUP_SOURCES",
    "ActivityKind",
    "EnrolledPolicy",
    "GroupSource",
    "MatchedBy",
    "Secret",
    "Status",
    "TokenKind",
    "TokenState",
    "as_tuple",
    "live_secret_values",
]

EnrolledPolicy = Literal["auto", "desktop", "skip"]
"""What to do for a member who has a device: ``auto`` mints what Defguard accepts for members without one and skips
those with one; ``desktop`` gives them a desktop-activation token for another device; ``skip`` skips every member
Defguard counts as enrolled."""
ENROLLED_POLICIES: tuple[EnrolledPolicy, ...] = get_args(EnrolledPolicy)

GroupSource = Literal["defguard", "entra"]
"""Where the group's members are read: a Defguard group (the documented flow) or an Entra group."""
GROUP_SOURCES: tuple[GroupSource, ...] = get_args(GroupSource)


def as_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """The attrs converter for the tuple fields (lists from JSON become tuples; case is kept as the service sent it)."""
    return tuple(values)


@attrs.frozen(repr=False, weakref_slot=True)
class Secret:
    """A string that must not leak: ``repr`` and ``str`` hide it; :meth:`masked` shows the first 4 characters.

    Every live ``Secret`` is known to :func:`live_secret_values`, so the redacting log filter masks a minted or a
    stored token wherever it would appear, whether or not the text around it says it is one.
    """

    value: str

    def __attrs_post_init__(self) -> None:
        if len(self.value) >= _LIVE_MIN:
            with _LIVE_LOCK:
                _LIVE.add(self)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def masked(self) -> str:
        """The first four characters then ``…`` (the report format); an empty secret stays empty."""
        return f"{self.value[:4]}…" if self.value else ""

    def __bool__(self) -> bool:
        return bool(self.value)


_LIVE: weakref.WeakSet[Secret] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_LIVE_MIN = 8  # shorter values would mask ordinary words


def live_secret_values() -> frozenset[str]:
    """The values of the :class:`Secret` objects alive now (8 characters or more): what must never be logged."""
    with _LIVE_LOCK:
        return frozenset(secret.value for secret in list(_LIVE))


class Status(enum.StrEnum):
    """Where a group member ended up. The value is what reports and exit codes use."""

    PROVISIONED = "provisioned"
    ALREADY_ENROLLED = "already_enrolled"
    DISABLED = "disabled"
    ENTRA_DISABLED = "entra_disabled"  # the Entra account is disabled (accountEnabled false): no token minted
    NO_EMAIL = "no_email"
    NOT_FOUND = "not_found"
    AMBIGUOUS = "ambiguous"
    NOT_IN_DEFGUARD = "not_in_defguard"
    FAILED = "failed"
    PLANNED = "planned"
    EXISTING = "existing"
    INTERRUPTED = "interrupted"
    STALE = "stale"  # a token was minted by a run that did not finish: what Entra holds may be dead
    # status / clear
    CLEARED = "cleared"
    NOT_SET = "not_set"
    KEPT = "kept"
    SET = "set"
    PARTIAL = "partial"  # status: only one of EnrollmentToken and EnrollmentUrl is stored
    REFRESHED = "refreshed"  # sync: a stored token replaced by a fresh one

    @property
    def is_problem(self) -> bool:
        """True for the statuses that make a run exit 1."""
        return self in _PROBLEMS


_PROBLEMS = frozenset(
    {Status.NO_EMAIL, Status.NOT_FOUND, Status.AMBIGUOUS, Status.NOT_IN_DEFGUARD, Status.FAILED, Status.STALE}
)


class TokenKind(enum.StrEnum):
    ENROLLMENT = "enrollment"
    DESKTOP = "desktop"


class TokenState(enum.StrEnum):
    """What a stored token is worth now, as far as Defguard's records and the stored expiry tell
    (:func:`defguard_entra.provisioning.tokens.judge_token` has the rules).

    .. versionadded:: 0.2.0
    """

    USABLE = "usable"
    EXPIRING = "expiring"  # usable, but expires within --refresh-before
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # Defguard minted another token for the user since (which deletes unused ones)
    USED = "used"  # the user has opened this token (or a newer one) in the client since
    UNKNOWN = "unknown"  # the records cannot decide


class ActivityKind(enum.StrEnum):
    """What a row of Defguard's activity log says about a member's tokens (see
    ``docs/reference/defguard-activity-log.md``)."""

    TOKEN_ADDED = "token_added"  # noqa: S105 - an event kind, not a secret; an enrollment or a desktop-activation token was minted for the subject
    ENROLLMENT_STARTED = "enrollment_started"  # the subject opened a token (the token counts as used from then on)
    ENROLLMENT_COMPLETED = "enrollment_completed"  # the subject finished enrollment with a token
    OTHER = "other"  # any other event


class MatchedBy(enum.StrEnum):
    MAIL = "mail"
    USER_PRINCIPAL_NAME = "userPrincipalName"
    OTHER_MAILS = "otherMails"
