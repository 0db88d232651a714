"""The first half of every command: its arguments checked once, the preflight (:mod:`._preflight`: Defguard's
version, token and deployment; the Graph sign-in and the attribute set), the group's members and their Entra users.

Any failure here raises before a single token is minted: Defguard's users come from the bulk list (never one GET
per member), Entra users are resolved in bulk (mail, then UPN, then otherMails), and members not found or ambiguous
are settled *without* a token, so their previous token survives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ..config import validate_group_id
from ..exceptions import ConfigurationError, PreflightError
from ..models import (
    ENROLLED_POLICIES,
    GROUP_SOURCES,
    DefguardServer,
    EnrolledPolicy,
    Status,
)
from ._ports import Clients
from ._preflight import graph_principal, preflight
from .plan import (
    SKIP_REASONS,
    Member,
    classify_members,
    detect_shared_entra_users,
)
from .report import Run, log
from .suggest import did_you_mean
from .sync_plan import ChangeLimit

__all__ = [
    "checked_arguments",
    "checked_sync_arguments",
    "checked_users",
    "graph_principal",
    "group_name_of",
    "members",
    "preflight",
    "resolve_in_entra",
    "restrict_to",
]


def checked_arguments(
    group_name: str | None,
    group_source: str,
    *,
    enrolled: str | None = None,
    lifetime: object = None,
    group_id: object = None,
) -> dt.timedelta | None:
    """Every command's arguments, checked before anything is asked of a server; the lifetime, checked."""
    if group_id is not None and group_name is not None:
        raise ConfigurationError("group_name and group_id both name the group: give one of them")
    if group_id is None and (group_name is None or not group_name.strip()):
        raise ConfigurationError("group_name is empty: give the name of the group")
    if group_source not in GROUP_SOURCES:
        raise ConfigurationError(f"group_source must be 'defguard' or 'entra', not {group_source!r}")
    if enrolled is not None and enrolled not in ENROLLED_POLICIES:
        choices = ", ".join(repr(p) for p in ENROLLED_POLICIES)
        raise ConfigurationError(f"enrolled must be one of {choices}, not {enrolled!r}")
    if group_id is not None:
        validate_group_id(group_id, group_source)
    return _checked_lifetime(lifetime)


def checked_sync_arguments(
    group_name: str | None,
    group_source: str,
    *,
    enrolled: str,
    lifetime: object,
    group_id: object,
    refresh_before: object,
    max_changes: object,
) -> tuple[dt.timedelta | None, dt.timedelta | None, ChangeLimit]:
    """``sync``'s arguments, checked before anything is asked of a server: the lifetime, the refresh window
    (``None``: a quarter of the lifetime) and the threshold on destructive changes."""
    from .._durations import MAX_TOKEN_LIFETIME, parse_lifetime  # noqa: PLC0415

    checked = checked_arguments(group_name, group_source, enrolled=enrolled, lifetime=lifetime, group_id=group_id)
    limit = ChangeLimit.parse(max_changes)
    window: dt.timedelta | None
    if refresh_before is None or isinstance(refresh_before, dt.timedelta):
        window = refresh_before
    elif isinstance(refresh_before, str):
        try:
            window = parse_lifetime(refresh_before)
        except ConfigurationError as exc:
            raise ConfigurationError(f"refresh_before: {exc}") from None
    else:
        msg = f"refresh_before must be a datetime.timedelta or a duration string such as '6h', not {refresh_before!r}"
        raise ConfigurationError(msg)
    if window is not None and not dt.timedelta(0) <= window <= MAX_TOKEN_LIFETIME:
        raise ConfigurationError(
            f"refresh_before {window} must be between 0 and {MAX_TOKEN_LIFETIME.days} days: give a duration such as 6h"
        )
    return checked, window, limit


async def group_name_of(clients: Clients, group_id: str, group_source: str) -> str:
    """The name of the group ``group_id`` names (checked by :func:`~defguard_entra.config.validate_group_id`),
    read before the run starts so that the run's lock and journal are the group's, however it was named."""
    if group_source == "entra":
        await clients.entra.sign_in()
        found = await clients.entra.group(group_id)
        if found is None:
            raise PreflightError(f"Entra has no group with object id {group_id}: check --group-id")
        return found.display_name
    for group in await clients.dg(clients.defguard.groups):
        if group.id is not None and str(group.id) == group_id:
            return group.name
    raise PreflightError(f"Defguard has no group with id {group_id}: check --group-id")


def _checked_lifetime(lifetime: object) -> dt.timedelta | None:
    """``lifetime=`` as the CLI checks it: a :class:`datetime.timedelta` or a duration string (``"2d"``), positive,
    at most 366 days; ``None`` for the server's default."""
    from .._durations import MAX_TOKEN_LIFETIME, parse_lifetime  # noqa: PLC0415

    if lifetime is None:
        return None
    if isinstance(lifetime, str):
        return parse_lifetime(lifetime)
    if not isinstance(lifetime, dt.timedelta):
        msg = f"lifetime must be a datetime.timedelta or a duration string such as '2d', not {type(lifetime).__name__}"
        raise TypeError(msg)
    if lifetime <= dt.timedelta(0) or lifetime > MAX_TOKEN_LIFETIME:
        raise ConfigurationError(f"lifetime {lifetime} must be positive and at most {MAX_TOKEN_LIFETIME.days} days")
    return lifetime


def checked_users(users: Sequence[str] | None) -> tuple[str, ...] | None:
    """``users=`` as every command checks it before anything is asked of a server: ``None`` (every member) or
    a non-empty sequence of non-empty names (a bare string is refused: it would be read letter by letter)."""
    if users is None:
        return None
    if isinstance(users, str):
        msg = f"users must be a sequence of names, such as [{users!r}], not a string"
        raise TypeError(msg)
    names: tuple[object, ...] = tuple(users)  # a caller without type checking may pass anything
    if not names:
        raise ConfigurationError("users is empty: name at least one member, or pass None for every member")
    for name in names:
        if not isinstance(name, str):
            msg = f"users must hold strings, not {type(name).__name__}"
            raise TypeError(msg)
        if not name.strip():
            raise ConfigurationError("users holds an empty name: give a Defguard username or an e-mail address")
    return tuple(dict.fromkeys(str(name).strip() for name in names))


def _names_of(member: Member) -> list[str]:
    """What ``users=`` may call a member: the Defguard username and e-mail, the Entra UPN and mail."""
    names = [member.username, member.email]
    if member.entra is not None:
        names += [member.entra.user_principal_name, member.entra.mail]
    return [name for name in names if name]


def restrict_to(found: list[Member], users: tuple[str, ...], group_name: str) -> list[Member]:
    """The members ``users`` names (a Defguard username or an e-mail address, compared case-insensitively), in
    the group's order. A name that is no member's raises :class:`PreflightError` naming it and the closest member
    names, before anything is minted or written (the group is read from the server: like a group name, the name
    is judged against what the server holds now)."""
    by_name: dict[str, list[Member]] = {}
    for member in found:
        for name in _names_of(member):
            by_name.setdefault(name.casefold(), []).append(member)
    unknown = [name for name in users if name.casefold() not in by_name]
    if unknown:
        known = [m.username for m in found if m.username] + [e for m in found if (e := m.email)]
        hints = [
            hint if len(unknown) == 1 else f"for {name!r}: {hint}"
            for name in unknown
            if (hint := did_you_mean(name, known)) is not None
        ]
        which = "is not a member" if len(unknown) == 1 else "are not members"
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise PreflightError(
            f"{', '.join(repr(n) for n in unknown)} {which} of group {group_name!r}{hint}: check --user (a member's "
            "Defguard username or e-mail address)"
        )
    wanted = {id(m) for name in users for m in by_name[name.casefold()]}
    return [m for m in found if id(m) in wanted]


async def members(
    clients: Clients,
    run: Run,
    *,
    enrolled: EnrolledPolicy | None,
    mints: bool = False,
    users: tuple[str, ...] | None = None,
) -> list[Member]:
    """Preflight, the group's members and their Entra users, shared Entra users made ambiguous.

    With ``enrolled`` the members are classified as ``provision`` and ``export`` do (disabled and enrolled ones
    settled before Entra is asked); without, only those without an e-mail are (``status`` and ``clear`` look up
    disabled and enrolled members too). ``mints`` (``provision``) also settles members disabled in Entra.
    ``users`` (checked by :func:`checked_users`) keeps only the members it names (:func:`restrict_to`), after
    the whole group was resolved in Entra: a member who shares an Entra user with another member is ambiguous
    whether or not the other one was named.
    """
    found = await preflight(clients, run, mints=mints)
    run.mark("preflight")
    if mints:
        log.info("preflight passed: %d members (%.2fs)", len(found), run.seconds)
    if enrolled is not None:
        classify_members(found, enrolled, DefguardServer(run.version or "").major)
    else:
        for member in found:
            if member.status is None and member.defguard is not None and not member.defguard.email:
                member.settle(Status.NO_EMAIL, SKIP_REASONS[Status.NO_EMAIL])
    if run.group_source == "defguard":
        await resolve_in_entra(clients, found)
        if mints:
            run.mark("resolve")
            log.info("resolved members in Entra (%.2fs)", run.seconds)
    detect_shared_entra_users(found)
    if users is not None:
        found = restrict_to(found, users, run.group_name)
        run.audit["users"] = list(users)
    if not mints:
        run.mark("resolve")
    else:
        for member in found:
            if member.status is None and member.entra is not None and member.entra.account_enabled is False:
                member.settle(Status.ENTRA_DISABLED, "the Entra account is disabled: no token minted")
    return found


async def resolve_in_entra(clients: Clients, members: list[Member]) -> None:
    """Each unsettled member's Entra user, found in bulk by its Defguard e-mail; not found and ambiguous settled."""
    pending = [m for m in members if m.status is None]
    if not pending:
        return
    matches = await clients.entra.find_users([m.email or "" for m in pending])
    for member in pending:
        match = matches[(member.email or "").strip().lower()]
        if match.user is not None:
            member.entra, member.matched_by = match.user, match.matched_by
        elif match.ambiguous:
            member.matched_by = match.matched_by
            member.settle(Status.AMBIGUOUS, match.error)
        else:
            member.settle(
                Status.NOT_FOUND,
                match.error or f"no Entra user has mail, userPrincipalName or otherMails {member.email!r}",
            )
