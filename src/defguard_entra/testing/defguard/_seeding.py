"""The seeding and introspection API of the Defguard emulator: users, groups, devices, API tokens, and what
directory sync, SSO sign-in and the enrollment proxy do to them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from types import EllipsisType
from typing import Any, Final, Literal

from ._state import DefguardState, Device, EnrollmentToken, TokenKind, User
from ._wire import random_token, sha256

__all__ = ["Seeding"]


_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)


class Seeding(DefguardState):
    """Seed and inspect the emulated Defguard (every method takes the lock)."""

    def add_user(
        self,
        username: str,
        *,
        email: str | None = None,
        first_name: str = "",
        last_name: str = "",
        active: bool = True,
        enrolled: bool = False,
        is_admin: bool = False,
        groups: Iterable[str] = (),
        ldap: bool = False,
        openid: bool = False,
        openid_sub: str | None = None,
        devices: int = 0,
    ) -> None:
        """Create a user. ``enrolled=True`` gives it a password (enrolled on both lines); ``openid_sub`` (or
        ``openid=True``) an OpenID subject, as directory sync and SSO sign-in do (also enrolled, by Defguard's rule);
        ``devices`` adds that many user devices (what "enrolled" means in practice). Groups are created on demand;
        ``is_admin=True`` adds it to the ``admin`` group. Raises ``ValueError`` for an invalid or taken username or a
        taken e-mail (case-insensitive)."""
        if not _USERNAME_RE.fullmatch(username):
            raise ValueError(f"invalid username {username!r}: 1-63 of [A-Za-z0-9._-], alphanumeric first")
        if email is None:
            email = f"{username}@example.com"
        with self.lock:
            if username in self._users:
                raise ValueError(f"user {username!r} already exists")
            if email and email.lower() in self._emails:
                raise ValueError(f"e-mail {email!r} is already used by {self._emails[email.lower()]!r}")
            user = User(
                self._next_user_id,
                username,
                email,
                first_name,
                last_name,
                active,
                has_password=enrolled,
                openid=openid or openid_sub is not None,
                ldap=ldap,
                openid_sub=openid_sub,
            )
            self._next_user_id += 1
            self._users[username] = user
            self._order.append(username)
            self._shuffled = None
            if email:
                self._emails[email.lower()] = username
            for name in groups:
                self._join(user, self._group(name))
            if is_admin:
                self._join(user, self._admin_group())
            for _ in range(devices):
                self._add_device(user, None, "user")

    def prefetch_user(
        self, entra_id: str, email: str, *, first_name: str = "", last_name: str = "", groups: Iterable[str] = ()
    ) -> str:
        """Create a user the way Entra directory sync with *Prefetch users* does; returns the username.

        Username = the e-mail's local part, no password, OpenID subject = the Entra object id, not pending: such a
        user is listed ``enrolled: true`` on both lines and has no device (v1.6.6 and v2.0.1
        ``crates/defguard_core/src/enterprise/directory_sync/mod.rs``)."""
        username = email.split("@", 1)[0]
        self.add_user(
            username, email=email, first_name=first_name, last_name=last_name, groups=groups, openid_sub=entra_id
        )
        return username

    def sso_sign_in(self, username: str, subject: str | None = None) -> None:
        """What a first SSO sign-in does to an existing user matched by e-mail: it gains an OpenID subject
        (``crates/defguard_core/src/enterprise/handlers/openid_login.rs``, ``user_from_claims``), and so counts as
        enrolled although it has no device."""
        with self.lock:
            user = self._user(username)
            user.openid = True
            user.openid_sub = subject or f"sub-{user.id}"
            self._touch(user)

    def add_device(
        self, username: str, name: str | None = None, *, device_type: Literal["user", "network"] = "user"
    ) -> int:
        """Add a device owned by ``username`` (``network`` devices are listed by ``GET /api/v1/device`` but are
        not a user's); returns its id."""
        with self.lock:
            return self._add_device(self._user(username), name, device_type).id

    def devices_of(self, username: str) -> list[Device]:
        """The user's devices (user and network ones), oldest first."""
        with self.lock:
            return [self._devices[i] for i in self._user(username).devices]

    def disable_user(self, username: str, *, by: Literal["admin", "directory_sync"] = "admin") -> None:
        """Disable a user. An admin doing it (UI or ``PUT /api/v1/user/{username}`` with ``is_active: false``)
        also deletes the user's API tokens for good (v1.6.6 ``handlers/user.rs`` 749-755, v2.0.1 781-787);
        directory sync only flips the flag (their API tokens stop working, being an inactive owner's)."""
        with self.lock:
            user = self._user(username)
            user.is_active = False
            if by == "admin":
                self._api_tokens = {h: u for h, u in self._api_tokens.items() if u != username}
            self._touch(user)

    def remove_user(self, username: str) -> None:
        """Delete a user with its memberships, enrollment tokens and API tokens (they stop working)."""
        with self.lock:
            user = self._user(username)
            for name in user.groups:
                self._groups[name].members.pop(username, None)
            for token in user.tokens:
                self._tokens.pop(token, None)
            self._api_tokens = {h: u for h, u in self._api_tokens.items() if u != username}
            if user.email:
                self._emails.pop(user.email.lower(), None)
            del self._users[username]
            self._order.remove(username)
            self._shuffled = None

    def add_group(
        self, name: str, members: Iterable[str] = (), *, is_admin: bool = False, vpn_locations: Iterable[str] = ()
    ) -> int:
        """Create a group (or reuse the one with that exact name) and add ``members``; returns its id.

        Ids are sequential from 1; group 1 is ``admin`` (an admin group holding ``admin``)."""
        if not name:
            raise ValueError("a group name must not be empty")
        with self.lock:
            group = self._group(name, is_admin=is_admin)
            group.vpn_locations.extend(vpn_locations)
            for username in members:
                self._join(self._user(username), group)
            return group.id

    def leave_group(self, username: str, group: str) -> None:
        """Take a user out of a group, as an admin in the UI or directory sync does when the member leaves the Entra
        group (``remove_group_member``, v1.6.6 and v2.0.1 ``crates/defguard_core/src/handlers/group.rs``: the
        membership only, ``user.remove_from_group``; the user's enrollment tokens are left alone)."""
        with self.lock:
            user = self._user(username)
            self._groups[group].members.pop(username, None)
            if group in user.groups:
                user.groups.remove(group)
            self._touch(user)

    def add_api_token(self, username: str) -> str:
        """Mint an API token (``dg-`` + 32 alphanumerics) for ``username``; only its SHA-256 is kept.

        The real server mints them for admins only; here any user can own one, so the 403 for a non-admin owner
        can be tested."""
        token = "dg-" + random_token()
        with self.lock:
            self._user(username)
            self._api_tokens[sha256(token)] = username
        return token

    def revoke_api_token(self, token: str) -> None:
        with self.lock:
            self._api_tokens.pop(sha256(token), None)

    def set_user(
        self,
        username: str,
        *,
        active: bool | None = None,
        enrolled: bool | None = None,
        is_admin: bool | None = None,
        email: str | EllipsisType | None = ...,
        enrollment_pending: bool | None = None,
        ldap: bool | None = None,
        openid: bool | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> None:
        """Change a user in place. ``enrolled=True`` sets a password and clears ``enrollment_pending``;
        ``enrolled=False`` removes the password and the OpenID subject (LDAP users may still count as enrolled);
        ``is_admin`` joins or leaves the admin groups; ``email=None`` stores an empty e-mail."""
        with self.lock:
            user = self._user(username)
            if active is not None:
                user.is_active = active
            if enrolled is not None:
                user.has_password = enrolled
                if enrolled:
                    user.enrollment_pending = False
                else:
                    user.openid = False
            if enrollment_pending is not None:
                user.enrollment_pending = enrollment_pending
            if ldap is not None:
                user.ldap = ldap
            if openid is not None:
                user.openid = openid
            if first_name is not None:
                user.first_name = first_name
            if last_name is not None:
                user.last_name = last_name
            if not isinstance(email, EllipsisType):
                new = email or ""
                owner = self._emails.get(new.lower())
                if new and owner not in {None, username}:
                    raise ValueError(f"e-mail {new!r} is already used by {owner!r}")
                if user.email:
                    self._emails.pop(user.email.lower(), None)
                user.email = new
                if new:
                    self._emails[new.lower()] = username
            if is_admin is True:
                self._join(user, self._admin_group())
            elif is_admin is False:
                for name in list(user.groups):
                    group = self._groups[name]
                    if group.is_admin:
                        group.members.pop(username, None)
                        user.groups.remove(name)

    def user_info(self, username: str) -> dict[str, Any]:
        """The user's ``UserInfo`` as this version renders it."""
        with self.lock:
            return self._user_info(self._user(username))

    @property
    def users(self) -> list[dict[str, Any]]:
        """Every user's ``UserInfo``, by id."""
        with self.lock:
            return [self._user_info(user) for user in sorted(self._users.values(), key=lambda u: u.id)]

    @property
    def groups(self) -> list[dict[str, Any]]:
        """Every group's ``GroupInfo`` (members sorted), by id."""
        with self.lock:
            return [self._group_info(group, sort=True) for group in self._groups.values()]

    @property
    def issued_count(self) -> int:
        """Enrollment tokens minted so far (both endpoints)."""
        with self.lock:
            return self._issued

    def current_token(self, username: str) -> str | None:
        """The user's one live, unused, unexpired enrollment token, if any."""
        with self.lock:
            now = self._now()
            for token in reversed(self._user(username).tokens):
                record = self._tokens[token]
                if record.used_at is None and not record.expired(now):
                    return token
        return None

    def token(self, token: str) -> EnrollmentToken | None:
        """The live record of an enrollment token (``None`` once deleted, or if never minted)."""
        with self.lock:
            return self._tokens.get(token)

    def token_expiry(self, token: str) -> dt.datetime | None:
        """When a live token expires (aware UTC); ``None`` if it was deleted or never minted."""
        record = self.token(token)
        return None if record is None else record.expires_at

    def token_kind(self, token: str) -> TokenKind:
        """Which endpoint minted the token (also after it was deleted); ``KeyError`` if never minted."""
        with self.lock:
            return self._kinds[token]

    def tokens_of(self, username: str) -> list[EnrollmentToken]:
        """The user's live enrollment tokens (used or not; deleted ones are gone), oldest first."""
        with self.lock:
            return [self._tokens[token] for token in self._user(username).tokens]
