"""What Defguard tells us, as plain data: the server, its users, groups and deployment, and a minted token."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Self

import attrs

from ._values import ActivityKind, Secret, TokenKind, as_tuple

__all__ = [
    "ActivityEvent",
    "ActivityLog",
    "DefguardDeployment",
    "DefguardGroup",
    "DefguardServer",
    "DefguardUser",
    "IssuedToken",
]


def _user_devices(row: Mapping[str, Any]) -> int | None:
    """How many user devices a 2.x ``UserInfo`` lists (``devices``); ``None`` when the row has no such list (1.6)."""
    devices = row.get("devices")
    if not isinstance(devices, list):
        return None
    return sum(1 for d in devices if not isinstance(d, Mapping) or d.get("device_type", "user") == "user")


@attrs.frozen
class DefguardServer:
    """What ``defguard-component-version`` says: e.g. ``1.6.6+abc…`` → line ``1``."""

    version: str

    @property
    def semver(self) -> str:
        return self.version.partition("+")[0]

    @property
    def major(self) -> int:
        head = self.semver.split(".", 1)[0]
        return int(head) if head.isdigit() else 1


@attrs.frozen
class DefguardUser:
    username: str
    email: str | None
    active: bool
    enrolled: bool
    first_name: str = ""
    last_name: str = ""
    is_admin: bool = False
    id: int | None = None
    groups: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)
    devices: int | None = None
    """How many devices the user has: the truth of "has enrolled" (``enrolled`` is also true for users created by
    directory sync or SSO, who have none). ``None``: not known."""

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Self:
        """Build from a ``UserInfo`` of either API line (2.x carries ``devices``; 1.6 needs the device list)."""
        email = row.get("email")
        return cls(
            username=str(row["username"]),
            email=str(email).strip() or None if email else None,
            active=bool(row.get("is_active", True)),
            enrolled=bool(row.get("enrolled", False)),
            first_name=str(row.get("first_name") or ""),
            last_name=str(row.get("last_name") or ""),
            is_admin=bool(row.get("is_admin", False)),
            id=row.get("id") if isinstance(row.get("id"), int) else None,
            groups=tuple(str(g) for g in row.get("groups") or ()),
            devices=_user_devices(row),
        )


@attrs.frozen
class DefguardDeployment:
    """How this Defguard runs, as far as an admin API token can read it before anything is minted.

    ``enrollment_url`` is the URL the token endpoints will return (normalised with a trailing ``/`` when its path is
    empty); ``token_lifetime`` the server's default lifetime, which desktop-activation tokens always get (2.x
    ``enrollment_token_timeout_hours``; 1.6 does not expose it). ``external_openid``: an OpenID provider is
    configured (``GET /api/v1/info``), so directory sync or SSO may create users who look enrolled. ``None``
    means not known; ``problems`` says what could not be read.
    """

    enrollment_url: str | None = None
    token_lifetime: dt.timedelta | None = None
    external_openid: bool | None = None
    ldap: bool | None = None
    problems: tuple[str, ...] = ()


@attrs.frozen
class DefguardGroup:
    name: str
    members: tuple[str, ...] = attrs.field(converter=as_tuple)
    id: int | None = None

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            name=str(row["name"]),
            members=tuple(str(m) for m in row.get("members") or ()),
            id=row.get("id") if isinstance(row.get("id"), int) else None,
        )


@attrs.frozen
class IssuedToken:
    """A freshly minted enrollment (or desktop-configuration) token and the URL the client enrolls at."""

    token: Secret
    url: str
    kind: TokenKind = TokenKind.ENROLLMENT
    expires_at: dt.datetime | None = None
    retries: int = 0


@attrs.frozen
class ActivityEvent:
    """One row of Defguard's activity log, as far as it concerns tokens."""

    at: dt.datetime  # timezone-aware UTC
    kind: ActivityKind
    event: str  # Defguard's event type as the API spells it
    actor: str | None  # the username the row is under (who acted)
    subject: str | None  # the username the action was for, as far as the API tells (None: cannot be read)
    id: int | None = None


@attrs.frozen
class ActivityLog:
    """The rows of Defguard's activity log a run read; ``available`` False when this server or API token cannot
    read the log (license, permission, too old), with the reason in ``problem``."""

    events: tuple[ActivityEvent, ...] = ()
    available: bool = True
    problem: str | None = None
