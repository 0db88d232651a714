"""Pure decisions about a group's members: who gets which token, who is skipped and why, what ``status`` and
``clear`` make of what is stored, and the :class:`Plan` that ``provision`` reports (dry run) or applies. No I/O, no
clock, no logging.

Everything the run learns about one member lives on its :class:`Member`: the Defguard user, the Entra user, the
token minted for it, the values read back from the attribute set and the export's config.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..config import ATTRIBUTE_VALUE_LIMIT
from ..models import (
    DefguardUser,
    EnrolledPolicy,
    EnrollmentAttributes,
    EntraUser,
    IssuedToken,
    MatchedBy,
    ProvisioningConfig,
    Status,
    TokenKind,
    TokenState,
)

__all__ = [
    "SKIP_REASONS",
    "STALE_REASON",
    "Member",
    "Plan",
    "classify",
    "classify_members",
    "detect_shared_entra_users",
    "enrollment_url_problem",
    "has_device",
    "judge_clear",
    "judge_status",
    "map_entra_members",
    "settle_stalled",
    "settled_safely",
    "stored_status",
    "unusable",
    "would_mint",
]

SKIP_REASONS = {
    Status.DISABLED: "disabled in Defguard: no token minted",
    Status.NO_EMAIL: "no e-mail address in Defguard, so no way to find the Entra user: add one in Defguard",
    Status.ALREADY_ENROLLED: (
        "has a device in Defguard: already enrolled (--enrolled desktop gives a desktop-activation token)"
    ),
}

STALE_REASON = (
    "a token was minted for this member by a run that did not finish, and may not be stored: the token in Entra may "
    "be dead; run provision for the group to give the member a new one"
)


@attrs.define
class Member:
    """One group member as the run learns about it (mutable while the run goes; outcomes are frozen)."""

    username: str | None
    defguard: DefguardUser | None = None
    entra: EntraUser | None = None
    matched_by: MatchedBy | None = None
    status: Status | None = None
    error: str | None = None
    kind: TokenKind | None = None
    refused: bool = False  # Defguard refused the token request with a 4xx: nothing was minted
    token: IssuedToken | None = None  # minted for this member in this run
    read: bool = False  # the attribute set was read for this member (status, clear)
    values: Mapping[str, Any] | None = None  # what the attribute set held when read (None: nothing, or unreadable)
    config: ProvisioningConfig | None = None  # export: the stored pair, complete
    state: TokenState | None = None  # sync, status: what the stored token was worth when judged
    action: str | None = None  # sync: the plan's action for this member (mint, refresh, clear, keep, none)

    @property
    def email(self) -> str | None:
        return self.defguard.email if self.defguard is not None else None

    @property
    def settled(self) -> bool:
        return self.status is not None

    @property
    def stored(self) -> EnrollmentAttributes | None:
        """The token and URL pair in :attr:`values`."""
        return EnrollmentAttributes.from_graph(self.values)

    def settle(self, status: Status, error: str | None = None) -> None:
        self.status = status
        self.error = error


def classify(user: DefguardUser, enrolled: EnrolledPolicy, line: int = 2) -> Status | TokenKind:
    """A Defguard user's fate before Entra is asked: a skip status, or the kind of token to mint first.

    "Enrolled" means "has a device": Defguard's own ``enrolled`` flag is also true for users created by directory
    sync or SSO sign-in, who have none. 2.x refuses ``start_enrollment`` for a user it flags ``enrolled``, so such a
    user gets a desktop-activation token at once; 1.6 refuses only a user with a password, which the API does not
    show, so ``start_enrollment`` is tried and the service falls back to ``start_desktop`` when it is refused.
    A user whose devices are unknown (``None``) is judged by the flag alone, never minted for blindly.
    """
    if not user.active:
        return Status.DISABLED
    if not user.email:
        return Status.NO_EMAIL
    if enrolled == "skip" or user.devices is None:
        if user.enrolled:
            return TokenKind.DESKTOP if enrolled == "desktop" else Status.ALREADY_ENROLLED
        return TokenKind.ENROLLMENT
    if user.devices > 0:
        return TokenKind.DESKTOP if enrolled == "desktop" else Status.ALREADY_ENROLLED
    return TokenKind.DESKTOP if user.enrolled and line >= 2 else TokenKind.ENROLLMENT


def map_entra_members(
    entra_members: Sequence[EntraUser],
    defguard_users: Iterable[DefguardUser],
) -> list[Member]:
    """Entra group members → Defguard users: the user whose e-mail equals the member's mail, else its UPN, else one
    of its otherMails (case-insensitively). A member with no Defguard user is ``not_in_defguard``."""
    by_email: dict[str, list[DefguardUser]] = defaultdict(list)
    for user in defguard_users:
        if user.email:
            by_email[user.email.strip().lower()].append(user)
    members = []
    for entra in entra_members:
        found: DefguardUser | None = None
        how: MatchedBy | None = None
        candidates: list[tuple[MatchedBy, str]] = []
        if entra.mail:
            candidates.append((MatchedBy.MAIL, entra.mail))
        if entra.user_principal_name:
            candidates.append((MatchedBy.USER_PRINCIPAL_NAME, entra.user_principal_name))
        candidates.extend((MatchedBy.OTHER_MAILS, m) for m in entra.other_mails)
        users: list[DefguardUser] = []
        for matched_by, address in candidates:
            users = by_email.get(address.strip().lower(), [])
            if users:
                found, how = users[0], matched_by
                break
        member = Member(found.username if found else None, found, entra, how)
        if found is None:
            member.settle(Status.NOT_IN_DEFGUARD, "no Defguard user has this member's mail, UPN or other mails")
        elif len(users) > 1:
            names = ", ".join(sorted(u.username for u in users))
            member.settle(Status.AMBIGUOUS, f"several Defguard users match by {how}: {names}")
        members.append(member)
    _detect_shared_defguard_users(members)
    return members


def _detect_shared_defguard_users(members: Sequence[Member]) -> None:
    """Two Entra members mapped to one Defguard user would each get a token, the second cancelling the first:
    make both ambiguous rather than leave one Entra user holding a dead token."""
    by_username: dict[str, list[Member]] = defaultdict(list)
    for member in members:
        if member.status is None and member.username is not None:
            by_username[member.username].append(member)
    for username, sharing in by_username.items():
        if len(sharing) > 1:
            upns = ", ".join(sorted(m.entra.user_principal_name if m.entra else "?" for m in sharing))
            for member in sharing:
                member.settle(Status.AMBIGUOUS, f"Defguard user {username} matches several Entra members: {upns}")


def detect_shared_entra_users(members: Sequence[Member]) -> None:
    """Two Defguard users resolved to one Entra user would overwrite each other's token: make both ambiguous."""
    by_entra: dict[str, list[Member]] = defaultdict(list)
    for member in members:
        if member.status is None and member.entra is not None:
            by_entra[member.entra.id].append(member)
    for entra_id, sharing in by_entra.items():
        if len(sharing) > 1:
            names = ", ".join(sorted(m.username or "?" for m in sharing))
            upn = sharing[0].entra.user_principal_name if sharing[0].entra else entra_id
            for member in sharing:
                member.settle(Status.AMBIGUOUS, f"Entra user {upn} matches several Defguard users: {names}")


def classify_members(members: Iterable[Member], enrolled: EnrolledPolicy, line: int) -> None:
    """Give each unsettled Defguard member the kind of token to mint first, or settle it with its skip reason."""
    for member in members:
        if member.status is not None or member.defguard is None:
            continue
        fate = classify(member.defguard, enrolled, line)
        if isinstance(fate, TokenKind):
            member.kind = fate
        else:
            member.settle(fate, SKIP_REASONS.get(fate))


def has_device(user: DefguardUser) -> bool:
    """Has this user enrolled a device? Judged by Defguard's flag only when the device count is unknown."""
    return user.devices > 0 if user.devices is not None else user.enrolled


def would_mint(member: Member, enrolled: EnrolledPolicy, line: int) -> tuple[TokenKind | None, str | None]:
    """What ``provision`` would mint for a resolved member now, and why in words (``status``'s why column)."""
    if member.defguard is None:
        return None, None
    fate = classify(member.defguard, enrolled, line)
    devices = member.defguard.devices
    if fate is TokenKind.ENROLLMENT:
        return fate, "provision would mint an enrollment token (no device yet)"
    if fate is TokenKind.DESKTOP:
        why = f"{devices} device(s), enrolled=desktop" if devices else "no device, but Defguard counts it activated"
        return fate, f"provision would mint a desktop-activation token ({why})"
    return None, SKIP_REASONS.get(fate, f"provision would mint nothing ({fate})")


def stored_status(pair: EnrollmentAttributes | None) -> Status:
    """``status``'s word for what the attribute set holds: ``set``, ``partial`` or ``not_set``."""
    if pair is None or pair.empty:
        return Status.NOT_SET
    return Status.SET if pair.complete else Status.PARTIAL


def judge_status(members: Iterable[Member], enrolled: EnrolledPolicy, line: int, stale: frozenset[str]) -> None:
    """Settle every member ``status`` still has open: stale, or what is stored, with what provision would mint."""
    for member in members:
        if member.status is None:
            member.kind, why = would_mint(member, enrolled, line)
            if member.username in stale and not (member.defguard and has_device(member.defguard)):
                member.settle(Status.STALE, STALE_REASON)
            else:
                member.settle(stored_status(member.stored), why)


def judge_clear(members: Iterable[Member], *, all_members: bool, stale: frozenset[str]) -> list[Member]:
    """Settle the members ``clear`` leaves alone; the ones whose values are to be nulled, in order."""
    todo: list[Member] = []
    for member in members:
        if member.status is Status.NO_EMAIL:
            member.settle(Status.NOT_FOUND, "no e-mail address in Defguard, so its Entra user cannot be found")
        if member.status not in {None, Status.NOT_IN_DEFGUARD}:
            continue
        if not member.values:
            member.settle(Status.NOT_SET)
        elif (
            all_members
            or (member.defguard is not None and (has_device(member.defguard) or not member.defguard.active))
            or (member.entra is not None and member.entra.account_enabled is False)
        ):  # the token did its job, or its owner is offboarded: it has no business staying in Entra
            todo.append(member)
        elif member.defguard is None:
            member.settle(Status.KEPT, "no Defguard user has this member's addresses (--all clears it)")
        elif member.username in stale:
            member.settle(Status.STALE, STALE_REASON)
        else:
            member.settle(
                Status.KEPT, "no device in Defguard yet: the stored token may still be needed (--all clears it)"
            )
    return todo


def unusable(reason: str) -> str:
    """Why a member failed after its token was minted and not stored, and what to do."""
    return (
        f"{reason}; the token minted for this member is unusable (Defguard also cancelled the previous one): "
        "re-run to issue a new token"
    )


def settle_stalled(todo: Sequence[Member], started: Sequence[Member], why: str) -> None:
    """The watchdog ended the run (``why``): every member of ``todo`` not settled ends failed, saying how far it got."""
    begun = {id(m) for m in started}
    for member in todo:
        if member.status is not None:
            continue
        if id(member) not in begun:
            member.settle(Status.FAILED, f"not attempted: {why}")
        elif member.token is not None:
            member.settle(Status.FAILED, unusable(f"{why}; the token minted was not stored"))
        else:
            # The request may have reached Defguard (which then cancelled the previous token): the journal
            # keeps this member open, so the next run (with a state directory) repairs it first.
            member.settle(
                Status.FAILED,
                f"{why}; its token request got no answer: Defguard may have minted a token that was not "
                "stored, re-run to issue a new one",
            )


def settled_safely(member: Member) -> bool:
    """May the journal forget this member? Yes when its new token is stored, or when Defguard surely minted nothing
    (it refused with a 4xx, which changes nothing); not after a write failed, a timeout or a 5xx."""
    if member.status is Status.PROVISIONED or member.refused:
        return True
    if member.token is not None:
        return False
    return member.status in {Status.DISABLED, Status.INTERRUPTED} or (
        member.status is Status.FAILED and bool(member.error) and "not attempted" in (member.error or "")
    )


@attrs.frozen
class Plan:
    """What ``provision`` will do: mint for :attr:`mint` in this order (each member's :attr:`Member.kind` first),
    the members an unfinished earlier run left stale first. A dry run reports it; a real run applies it."""

    mint: tuple[Member, ...]
    repaired: int = 0

    @classmethod
    def of(cls, members: Iterable[Member], stale: frozenset[str]) -> Plan:
        """The plan for the members still unsettled; ``stale`` (their stored token may be dead) go first."""
        todo = [m for m in members if m.status is None]
        repaired = sum(1 for m in todo if m.username in stale)
        if repaired:
            todo.sort(key=lambda m: m.username not in stale)
        return cls(tuple(todo), repaired)

    def note(self) -> str | None:
        """The report's note on the stale members the plan repairs, if any."""
        if not self.repaired:
            return None
        return (
            f"{self.repaired} member{'s' if self.repaired != 1 else ''} had a token minted by an earlier run that "
            "did not finish (the token stored in Entra may be dead): given new tokens first"
        )

    def settle_planned(self) -> None:
        """A dry run's end: every member of the plan ``planned``, with the kind of token it would get."""
        for member in self.mint:
            member.settle(Status.PLANNED)


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def enrollment_url_problem(url: str, defguard_url: str, line: int) -> str | None:
    """Why tokens carrying Defguard's enrollment ``url`` cannot work on users' machines, or ``None``.

    Refused: a URL that does not parse (2.x then answers 500 to every token request); a loopback or ``localhost``
    URL (Defguard's default, ``http://localhost:8080/``), unless Defguard itself is reached on loopback (the
    emulators, a test set-up); a URL longer than Graph's limit for an attribute value. Each message names the
    setting to change (1.6: ``DEFGUARD_ENROLLMENT_URL``; 2.x: the public proxy URL in Defguard's settings).
    """
    setting = (
        "DEFGUARD_ENROLLMENT_URL in Defguard's environment"
        if line < 2
        else "the public proxy URL in Defguard's settings (public_proxy_url)"
    )
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return (
            f"Defguard's enrollment URL {url!r} is not an http(s) URL, so Defguard cannot issue working tokens "
            f"(2.x answers 500 to every token request): set {setting} to the enrollment proxy's public URL"
        )
    if _is_loopback(url) and not _is_loopback(defguard_url):
        return (
            f"Defguard's enrollment URL is {url!r} (Defguard's default), which would point every user's machine at "
            f"itself: set {setting} to the enrollment proxy's public URL; no token was minted"
        )
    if len(url) > ATTRIBUTE_VALUE_LIMIT:
        return (
            f"Defguard's enrollment URL {url!r} has {len(url)} characters, more than Graph's "
            f"{ATTRIBUTE_VALUE_LIMIT}-character limit for an attribute value: shorten {setting}"
        )
    return None
