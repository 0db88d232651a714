"""The tenant behind the emulator: its directory (users, groups, attribute sets and definitions, with their
indexes), the principals its bearer tokens stand for, and the seeding API tests use to fill it.

All state lives here, guarded by ``self.lock``; the handler mixins (:mod:`._reads`, :mod:`._writes`) and
:class:`~._emulator.GraphEmulator` build on it.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from defguard_entra.testing._server import EmulatorServer, Faults, Request

from ._bearer import TrustedIssuer, principal_from_claims, verify_bearer
from ._directory import AttributeSet, Definition, Group, Principal, User, add_to_index, index_key, valid_name
from ._wire import INSUFFICIENT, WWW_AUTHENTICATE, GraphError

__all__ = ["Tenant"]


class Tenant(EmulatorServer):
    """The directory and the principals of one emulated tenant, and the methods that seed them."""

    def __init__(self, *, host: str, port: int, faults: Faults | None, seed: int) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.seed = seed
        self._rng = random.Random(seed)
        self._token_rng = random.Random(f"tokens-{seed}")
        self.tenant_id = self._new_id()
        self._seq = itertools.count()
        self._users: dict[str, User] = {}
        self._user_order: list[User] = []
        self._by_upn: dict[str, User] = {}
        # address → one user, or a tuple of users when several share it (most addresses belong to one user)
        self._by_mail: dict[str, User | tuple[User, ...]] = {}
        self._by_other_mail: dict[str, User | tuple[User, ...]] = {}
        self._groups: dict[str, Group] = {}
        self._group_order: list[Group] = []
        self._groups_by_name: dict[str, list[Group]] = {}
        self._membership_version = 0
        self._member_cache: dict[tuple[str, bool], tuple[int, list[User | Group]]] = {}
        self._sets: dict[str, AttributeSet] = {}
        self._definitions: dict[str, Definition] = {}
        self._tokens: dict[str, Principal] = {}
        self._invalid_tokens: dict[str, str] = {}  # token → Graph's 401 message (expired or revoked)
        self._trusted: list[TrustedIssuer] = []  # issuers whose JWTs are accepted (see trust())
        self.admin_token = self._register(Principal("admin", self._new_id()))

    # -- seeding ----------------------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _register(self, principal: Principal) -> str:
        token = f"emu.{len(self._tokens)}.{self._token_rng.getrandbits(96):024x}"
        self._tokens[token] = principal
        return token

    def add_principal(
        self,
        name: str,
        *,
        read_users: bool = True,
        read_groups: bool = True,
        write_attributes: bool = True,
        read_attributes: bool = True,
        read_definitions: bool = True,
        user: str | None = None,
    ) -> str:
        """A new bearer token for a principal with these permissions; ``user`` (id or UPN) makes it delegated."""
        with self.lock:
            principal = Principal(
                name, self._new_id(), read_users, read_groups, write_attributes, read_attributes, read_definitions, user
            )
            return self._register(principal)

    def trust(self, identity: Any) -> None:
        """Accept the JWT access tokens of ``identity`` (an :class:`~defguard_entra.testing.IdentityEmulator`, or
        anything with ``access_token_issuer`` and ``jwks``): signature, audience and lifetime are verified, and
        the claims say what the token may do."""
        with self.lock:
            self._trusted.append(TrustedIssuer(identity.access_token_issuer, tuple(identity.jwks["keys"])))

    def invalidate_token(self, token: str, *, revoked: bool = False) -> None:
        """From now on Graph answers ``token`` with 401: expired, or (``revoked``) revoked by continuous access
        evaluation (a password reset, a disabled account, "Revoke sessions")."""
        with self.lock:
            self._invalid_tokens[token] = (
                "Continuous access evaluation resulted in challenge with result: InteractionRequired and code: "
                "TokenIssuedBeforeRevocationTimestamp"
                if revoked
                else "Lifetime validation failed, the token is expired."
            )

    def add_user(
        self,
        user_principal_name: str,
        *,
        mail: str | None = None,
        other_mails: Iterable[str] = (),
        display_name: str | None = None,
        account_enabled: bool = True,
        id: str | None = None,  # noqa: A002 - Graph's name
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str:
        """Add a user; returns its id (a seeded uuid4 unless given)."""
        with self.lock:
            upn_key = index_key(user_principal_name)
            if upn_key in self._by_upn:
                raise ValueError(f"userPrincipalName {user_principal_name!r} already exists")
            user_id = id if id is not None else self._new_id()
            if user_id.lower() in self._users or user_id.lower() in self._groups:
                raise ValueError(f"id {user_id!r} already exists")
            record = User(
                next(self._seq), user_id, user_principal_name, mail, tuple(other_mails), display_name, account_enabled
            )
            self._users[index_key(user_id)] = record
            self._user_order.append(record)
            self._by_upn[upn_key] = record
            if mail:
                add_to_index(self._by_mail, index_key(mail), record)
            for address in dict.fromkeys(index_key(m) for m in record.other_mails):
                add_to_index(self._by_other_mail, address, record)
            for set_name, values in (attributes or {}).items():
                self._seed_attributes(record, set_name, values)
            return user_id

    def add_group(self, display_name: str, members: Iterable[str] = (), id: str | None = None) -> str:  # noqa: A002
        """Add a group (display names need not be unique); members are user ids/UPNs or group ids."""
        with self.lock:
            group_id = id if id is not None else self._new_id()
            if group_id.lower() in self._groups or group_id.lower() in self._users:
                raise ValueError(f"id {group_id!r} already exists")
            group = Group(next(self._seq), group_id, display_name)
            self._groups[group_id.lower()] = group
            self._group_order.append(group)
            self._groups_by_name.setdefault(display_name.lower(), []).append(group)
            self.add_members(group_id, *members)
            return group_id

    def group_ids(self, display_name: str) -> list[str]:
        """The ids of the groups whose displayName is exactly ``display_name``, in the order they were added."""
        with self.lock:
            return [g.id for g in self._group_order if g.display_name == display_name]

    def add_members(self, group_id: str, *member_ids: str) -> None:
        """Add direct members (user ids or UPNs, group ids) to a group; nesting cycles are allowed."""
        with self.lock:
            group = self._groups.get(group_id.lower())
            if group is None:
                raise KeyError(f"no group {group_id!r}")
            for member_id in member_ids:
                member: User | Group | None = self._find_user(member_id) or self._groups.get(member_id.lower())
                if member is None:
                    raise KeyError(f"no user or group {member_id!r}")
                if member.id.lower() not in group.member_ids:
                    group.member_ids.add(member.id.lower())
                    group.members.append(member)
            self._membership_version += 1

    def set_user(self, user: str, *, account_enabled: bool | None = None) -> None:
        """Change a user in place: ``account_enabled=False`` is an account an admin has disabled (offboarding)."""
        with self.lock:
            record = self._require_user(user)
            if account_enabled is not None:
                record.account_enabled = account_enabled

    def define_attribute_set(
        self,
        name: str = "Defguard",
        attributes: Iterable[str] = ("EnrollmentToken", "EnrollmentUrl"),
        *,
        description: str = "",
        max_attributes_per_set: int | None = 25,
    ) -> None:
        """Define an attribute set and, in it, single-valued String attributes (status Available)."""
        if not valid_name(name):
            raise ValueError(f"invalid attribute set name {name!r}: up to 32 letters/digits, not starting with a digit")
        with self.lock:
            self._sets[name] = AttributeSet(name, description or None, max_attributes_per_set)
            for attribute in attributes:
                self.define_attribute(name, attribute)

    def define_attribute(
        self,
        set_name: str,
        name: str,
        *,
        type: str = "String",  # noqa: A002 - Graph's name
        is_collection: bool = False,
        use_predefined_values_only: bool = False,
        status: str = "Available",
        is_searchable: bool = True,
        description: str = "",
        allowed_values: Iterable[Any] = (),
    ) -> None:
        """Define (or redefine) one attribute in an existing set; ``allowed_values`` are its predefined values."""
        if type not in {"String", "Integer", "Boolean"}:
            raise ValueError("type must be String, Integer or Boolean")
        if status not in {"Available", "Deprecated"}:
            raise ValueError("status must be Available or Deprecated")
        if type == "Boolean" and is_collection:
            raise ValueError("Boolean attributes cannot be collections")
        if not valid_name(name):
            raise ValueError(f"invalid attribute name {name!r}: up to 32 letters/digits, not starting with a digit")
        with self.lock:
            if set_name not in self._sets:
                raise KeyError(f"attribute set {set_name!r} is not defined: call define_attribute_set first")
            definition = Definition(
                set_name,
                name,
                type,
                is_collection,
                is_searchable,
                status,
                use_predefined_values_only,
                description or None,
                tuple(allowed_values),
            )
            self._definitions[definition.id] = definition

    def defines(self, set_name: str, name: str) -> bool:
        """Whether attribute ``name`` is defined in ``set_name`` (case-sensitive, as Graph's names are)."""
        with self.lock:
            definition = self._definitions.get(f"{set_name}_{name}")
            return definition is not None and definition.attribute_set == set_name and definition.name == name

    def set_attributes(self, user: str, set_name: str, values: Mapping[str, Any]) -> None:
        """Seed stored attribute values directly (no validation; ``None`` removes a value)."""
        with self.lock:
            self._seed_attributes(self._require_user(user), set_name, values)

    def attributes(self, user: str) -> dict[str, dict[str, Any]]:
        """The user's stored custom security attributes by set, then attribute (no annotations)."""
        with self.lock:
            record = self._require_user(user)
            return {s: dict(v) for s, v in (record.csa or {}).items()}

    def user(self, user: str) -> dict[str, Any]:
        """A copy of the stored user record (id or UPN)."""
        with self.lock:
            r = self._require_user(user)
            return {
                "id": r.id,
                "userPrincipalName": r.upn,
                "mail": r.mail,
                "otherMails": list(r.other_mails),
                "displayName": r.display_name,
                "accountEnabled": r.account_enabled,
                "customSecurityAttributes": {s: dict(v) for s, v in r.csa.items()} if r.csa else None,
            }

    def _seed_attributes(self, record: User, set_name: str, values: Mapping[str, Any]) -> None:
        self._apply_csa(record, [(set_name, name, value) for name, value in values.items()])

    @staticmethod
    def _apply_csa(record: User, changes: Iterable[tuple[str, str, Any]]) -> None:
        csa = record.csa if record.csa is not None else {}
        for set_name, name, value in changes:
            if value is None or (isinstance(value, list) and not value):
                values = csa.get(set_name)
                if values is not None:
                    values.pop(name, None)
                    if not values:
                        del csa[set_name]
            else:
                csa.setdefault(set_name, {})[name] = list(value) if isinstance(value, list) else value
        record.csa = csa or None

    def _find_user(self, key: str) -> User | None:
        lowered = key.lower()
        return self._users.get(lowered) or self._by_upn.get(lowered)

    def _require_user(self, key: str) -> User:
        record = self._find_user(key)
        if record is None:
            raise KeyError(f"no user {key!r}")
        return record

    # -- auth ----------------------------------------------------------------------------------------------------

    def _principal(self, request: Request) -> Principal:
        auth = (request.header("authorization") or "").strip()
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if not auth or scheme.lower() != "bearer" or not token:
            raise GraphError(
                401, "InvalidAuthenticationToken", "Access token is empty.", {"WWW-Authenticate": WWW_AUTHENTICATE}
            )
        if (invalid := self._invalid_tokens.get(token)) is not None:
            raise GraphError(401, "InvalidAuthenticationToken", invalid, {"WWW-Authenticate": WWW_AUTHENTICATE})
        principal = self._tokens.get(token)
        if principal is None and self._trusted and token.count(".") == 2:
            claims = verify_bearer(token, self._trusted)
            if isinstance(claims, str):
                raise GraphError(401, "InvalidAuthenticationToken", claims, {"WWW-Authenticate": WWW_AUTHENTICATE})
            return principal_from_claims(claims)
        if principal is None:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
                {"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        return principal

    def _require(self, request: Request, permission: str) -> Principal:
        principal = self._principal(request)
        if not getattr(principal, permission):
            raise GraphError(403, "Authorization_RequestDenied", INSUFFICIENT)
        return principal
