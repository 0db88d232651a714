"""Pure decisions: who gets a token, who is skipped and why. No I/O, no clock, no logging."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import attrs

from .config import ATTRIBUTE_VALUE_LIMIT
from .models import ENROLLED_POLICIES, DefguardUser, EnrolledPolicy, EntraUser, MatchedBy, Status, TokenKind

__all__ = [
    "ENROLLED_POLICIES",
    "EnrolledPolicy",
    "Member",
    "classify",
    "detect_shared_entra_users",
    "enrollment_url_problem",
    "map_entra_members",
]

T = TypeVar("T")


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

    @property
    def email(self) -> str | None:
        return self.defguard.email if self.defguard is not None else None

    @property
    def settled(self) -> bool:
        return self.status is not None

    def settle(self, status: Status, error: str | None = None) -> None:
        self.status = status
        self.error = error


def chunked(values: Sequence[T], size: int) -> list[Sequence[T]]:
    """``values`` in slices of at most ``size``."""
    return [values[i : i + size] for i in range(0, len(values), size)]


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
