"""The state of one emulated Defguard core: its records (users, groups, devices, enrollment tokens), the settings
that shape its answers, and the internals that read and change them (callers hold ``self.lock``).

State lives in dictionaries keyed by username (and by token), so the hot paths stay O(1) however many users are
seeded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from defguard_entra.testing._server import EmulatorServer, Request

from ._wire import ALNUM, Version, fail, normalise_url, sha256

__all__ = ["DefguardState", "Device", "EnrollmentToken", "Group", "TokenKind", "User"]


TokenKind = Literal["enrollment", "desktop"]


def _system_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_LICENSE_GRACE_DAYS: Final = 14


# -- records -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """One row of Defguard's ``token`` table, as the emulator keeps it.

    ``kind`` records which endpoint issued it; server-side both are ``token_type = "ENROLLMENT"``.
    """

    token: str
    username: str
    user_id: int
    kind: TokenKind
    email: str | None
    admin: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None  # set when the enrollment session starts (the client opens the token)
    token_type: str = "ENROLLMENT"  # noqa: S105 - a token type, not a secret
    device_id: int | None = None
    completed_at: dt.datetime | None = None  # the emulator's own note: redeem() finished with this token

    @property
    def used(self) -> bool:
        return self.used_at is not None

    def expired(self, now: dt.datetime | None = None) -> bool:
        """Past ``expires_at`` at ``now`` (default: the system clock; the emulator passes its own clock's now)."""
        return self.expires_at < (now or dt.datetime.now(dt.UTC))


@dataclasses.dataclass(slots=True)
class User:
    id: int
    username: str
    email: str
    first_name: str
    last_name: str
    is_active: bool
    has_password: bool
    openid: bool
    ldap: bool
    openid_sub: str | None = None  # directory sync: the Entra object id; SSO sign-in: the provider's subject
    enrollment_pending: bool = False
    ldap_remote_enrollment_completed: bool = False
    groups: list[str] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)  # live enrollment tokens, oldest first
    devices: list[int] = dataclasses.field(default_factory=list)  # ids of the user's devices, oldest first


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """One row of Defguard's ``device`` table (``crates/defguard_core/src/db/models/device.rs``)."""

    id: int
    name: str
    user_id: int
    username: str
    wireguard_pubkey: str
    created: dt.datetime
    device_type: Literal["user", "network"] = "user"
    description: str | None = None
    configured: bool = True

    def to_api(self) -> dict[str, Any]:
        """The ``Device`` JSON of ``GET /api/v1/device`` (``created`` is a naive UTC timestamp)."""
        return {
            "id": self.id,
            "name": self.name,
            "wireguard_pubkey": self.wireguard_pubkey,
            "user_id": self.user_id,
            "created": self.created.replace(tzinfo=None).isoformat(),
            "device_type": self.device_type,
            "description": self.description,
            "configured": self.configured,
        }


@dataclasses.dataclass(slots=True)
class Group:
    id: int
    name: str
    is_admin: bool
    members: dict[str, None] = dataclasses.field(default_factory=dict)  # an ordered set of usernames
    vpn_locations: list[str] = dataclasses.field(default_factory=list)


class DefguardState(EmulatorServer):
    """The data and settings of one Defguard core, and the internals shared by its seeding API and handlers."""

    version: Version  # set by DefguardEmulator.__init__

    # -- settings and data -----------------------------------------------------------------------------------

    def _setup_state(self, settings: Mapping[str, Any], *, again: bool) -> None:
        """(Re)apply the constructor's settings and start with no data."""
        self.component_version: str = settings["component_version"]
        self.license_gate: bool = settings["license_gate"]
        self.default_token_lifetime: dt.timedelta = settings["default_token_lifetime"]
        self.shuffle: bool = settings["shuffle"]
        self.ldap_remote_enrollment_enabled: bool = settings["ldap_remote_enrollment_enabled"]
        self.paginated_content_type: str | None = settings["paginated_content_type"]
        self.openid_provider: bool = settings["openid_provider"]
        self.license_overdue_days: float | None = settings["license_overdue_days"]
        self.page_churn: float = settings["page_churn"]
        self.clock: Callable[[], dt.datetime] = settings["clock"] or _system_now
        self.activity_log_endpoint: bool = settings["activity_log_endpoint"]
        if again:  # same rates and seed, the random sequence from the start
            self.faults = dataclasses.replace(settings["faults"])
        self.enrollment_url = settings["enrollment_url"]
        self.mails: list[dict[str, str]] = []
        self._rng = random.Random(settings["seed"])
        self._users: dict[str, User] = {}
        self._order: list[str] = []  # usernames by id
        self._shuffled: list[str] | None = None  # a permutation of _order, stable until users change
        self._shuffled_groups: list[str] | None = None
        self._emails: dict[str, str] = {}  # lower-cased e-mail -> username
        self._groups: dict[str, Group] = {}
        self._group_ids: dict[int, str] = {}
        self._api_tokens: dict[str, str] = {}  # sha256 hex -> username
        self._tokens: dict[str, EnrollmentToken] = {}  # live enrollment tokens
        self._kinds: dict[str, TokenKind] = {}  # every token ever minted
        self._devices: dict[int, Device] = {}
        self._next_device_id = 1
        self._churn_rng = random.Random(settings["seed"] + 1)
        self._next_user_id = 1
        self._next_group_id = 1
        self._issued = 0
        self._activity: list[dict[str, Any]] = []  # the activity_log_event table, oldest first

    @property
    def enrollment_url(self) -> str:
        """The configured public (proxy) URL as given; the API returns it normalised."""
        return self._enrollment_url_raw

    @enrollment_url.setter
    def enrollment_url(self, value: str) -> None:
        normalised = normalise_url(value)
        if normalised is None and self.version == "1.6":
            raise ValueError(f"DEFGUARD_ENROLLMENT_URL {value!r} is not a URL (1.6 would not start)")
        with self.lock:
            self._enrollment_url_raw = value
            self._enrollment_url = normalised  # None on 2.x: the token endpoints answer 500

    # -- state internals (callers hold the lock) -------------------------------------------------------------

    def _now(self) -> dt.datetime:
        """The emulator's now (aware UTC), from its clock: token expiry, devices and activity-log rows use it."""
        return self.clock().astimezone(dt.UTC)

    def _log_event(
        self,
        actor: User,
        event: str,
        module: str,
        description: str | None,
        *,
        subject: User | None = None,
        request: Request | None = None,
        device: str = "",
    ) -> None:
        """Append a row to the activity log the way the event logger writes one (v1.6.6 and v2.0.1
        ``crates/defguard_event_logger/src/lib.rs`` ``process_batch``): under the actor, stamped with the time of
        the request (``Utc::now().naive_utc()`` in the request context, ``crates/defguard_core/src/events.rs``), with
        the client's IP and User-Agent; token rows keep their subject in ``metadata.user`` (``UserNoSecrets``,
        reduced here to the fields a test reads), which the API does not return."""
        ip = "127.0.0.1"
        if request is not None:
            ip = (request.header("x-forwarded-for") or "").split(",")[0].strip() or ip
            device = request.header("user-agent") or device
        metadata = None
        if subject is not None:
            metadata = {"user": {"id": subject.id, "username": subject.username, "email": subject.email}}
        self._activity.append(
            {
                "id": len(self._activity) + 1,
                "timestamp": self._now(),
                "user_id": actor.id,
                "username": actor.username,
                "location": None,
                "ip": ip,
                "event": event,
                "module": module,
                "device": device,
                "description": description,
                "metadata": metadata,
            }
        )

    def _user(self, username: str) -> User:
        try:
            return self._users[username]
        except KeyError:
            raise KeyError(f"no user {username!r}") from None

    def _group(self, name: str, *, is_admin: bool = False) -> Group:
        group = self._groups.get(name)
        if group is None:
            group = Group(self._next_group_id, name, is_admin)
            self._next_group_id += 1
            self._groups[name] = group
            self._group_ids[group.id] = name
            self._shuffled_groups = None
        return group

    def _admin_group(self) -> Group:
        for group in self._groups.values():
            if group.is_admin:
                return group
        return self._group("admin", is_admin=True)

    def _join(self, user: User, group: Group) -> None:
        if user.username not in group.members:
            group.members[user.username] = None
            user.groups.append(group.name)

    def _add_device(self, user: User, name: str | None, device_type: Literal["user", "network"]) -> Device:
        device_id = self._next_device_id
        self._next_device_id += 1
        key = "".join(self._rng.choice(ALNUM) for _ in range(43)) + "="
        record = Device(
            device_id,
            name or f"{user.username}-device-{device_id}",
            user.id,
            user.username,
            key,
            self._now(),
            device_type,
        )
        self._devices[device_id] = record
        user.devices.append(device_id)
        return record

    def _touch(self, user: User) -> None:
        """An UPDATE of the user's row: PostgreSQL writes a new row version, so an unordered scan (2.x pages use
        LIMIT/OFFSET without ORDER BY, v2.0.1 ``handlers/user.rs`` ``list_users``) now meets it last."""
        if user.username in self._order:
            self._order.remove(user.username)
            self._order.append(user.username)
            self._shuffled = None

    def _user_devices(self, user: User) -> list[Device]:
        return [d for d in (self._devices[i] for i in user.devices) if d.device_type == "user"]

    def _is_admin(self, user: User) -> bool:
        return any(self._groups[name].is_admin for name in user.groups)

    def _is_enrolled(self, user: User) -> bool:
        if user.enrollment_pending:
            return False
        if self.version == "1.6":
            return user.has_password or user.openid or user.ldap
        if user.ldap:
            return user.ldap_remote_enrollment_completed if self.ldap_remote_enrollment_enabled else True
        return user.has_password or user.openid

    def _user_info(self, user: User) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": user.id,
            "username": user.username,
            "last_name": user.last_name,
            "first_name": user.first_name,
            "email": user.email,
            "phone": None,
            "mfa_enabled": False,
            "totp_enabled": False,
            "email_mfa_enabled": False,
            "groups": list(user.groups),
            "mfa_method": "None",
            "authorized_apps": [],
            "is_active": user.is_active,
            "enrolled": self._is_enrolled(user),
            "is_admin": self._is_admin(user),
            "ldap_pass_requires_change": False,
        }
        if self.version == "2.0":
            info["name"] = f"{user.first_name} {user.last_name}"
            info["devices"] = [{**d.to_api(), "networks": []} for d in self._user_devices(user)]
        return info

    def _group_info(self, group: Group, *, sort: bool) -> dict[str, Any]:
        members = list(group.members)
        if sort:
            members.sort()
        elif self.shuffle:
            self._rng.shuffle(members)
        return {
            "id": group.id,
            "name": group.name,
            "members": members,
            "vpn_locations": list(group.vpn_locations),
            "is_admin": group.is_admin,
        }

    def _listed(self, items: list[str]) -> list[str]:
        if self.shuffle:
            items = list(items)
            self._rng.shuffle(items)
        return items

    def _user_order(self) -> list[str]:
        """Usernames in list order: by id, or a seeded permutation that holds until users are added or removed
        (like an unordered query over unchanged data)."""
        if not self.shuffle:
            return self._order
        if self._shuffled is None:
            self._shuffled = list(self._order)
            self._rng.shuffle(self._shuffled)
        return self._shuffled

    # -- authentication -------------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> User:
        """The API-token gate in the server's order: license gate, header decoding, token lookup, admin check (v1.6.6
        and v2.0.1 ``crates/defguard_core/src/auth/mod.rs``)."""
        if not self.license_gate or self._license_lapsed():
            raise fail(401, "Session is required")
        header = request.header("authorization")
        if header is None:
            raise fail(401, "Session is required")  # no cookie session either
        header = header.rstrip(" \t")  # hyper trims trailing whitespace off header values
        if not (
            len(header) > 6
            and header[6] == " "
            and header[:6].lower() == "bearer"
            and all(" " <= char <= "~" or char == "\t" for char in header)
        ):
            raise fail(401, "Invalid auth header")
        digest = sha256(header[7:].lstrip())
        with self.lock:
            owner = self._users.get(self._api_tokens.get(digest, ""))
            if owner is None or not owner.is_active:
                raise fail(401, "Invalid API token")
            if not self._is_admin(owner):
                raise fail(403, "Token authentication is not allowed for normal users")
            return owner

    def _license_lapsed(self) -> bool:
        """2.x honours API tokens only while the (subscription) license is at most 14 days past its end (v2.0.1
        ``crates/defguard_core/src/enterprise/license.rs`` 403-411); 1.6 has a free tier, so it is not modelled."""
        overdue = self.license_overdue_days
        return self.version == "2.0" and overdue is not None and overdue > _LICENSE_GRACE_DAYS
