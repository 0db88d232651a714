"""The directory's records (users, groups, attribute definitions and sets, principals), their property tables and
the address indexes.

The property tables say what ``$select``, ``$filter`` and rendering know of each type: Graph's v1.0 resource pages
(https://learn.microsoft.com/graph/api/resources/user, .../resources/group,
.../resources/customsecurityattributedefinition, .../resources/attributeset) and the default property sets Graph
returns without ``$select``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "DEFINITION_PROPS",
    "GROUP_DEFAULT",
    "GROUP_PROPS",
    "MEMBER_PROPS",
    "SET_PROPS",
    "USER_DEFAULT",
    "USER_PROPS",
    "AttributeSet",
    "Definition",
    "Group",
    "Principal",
    "Prop",
    "User",
    "add_to_index",
    "index_key",
    "lookup",
    "valid_name",
]


# -- records -------------------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class User:
    seq: int
    id: str
    upn: str
    mail: str | None
    other_mails: tuple[str, ...]
    display_name: str | None
    account_enabled: bool
    csa: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True, eq=False)
class Group:
    seq: int
    id: str
    display_name: str
    members: list[User | Group] = field(default_factory=list)
    member_ids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Definition:
    attribute_set: str
    name: str
    type: str
    is_collection: bool
    is_searchable: bool
    status: str
    use_predefined_values_only: bool
    description: str | None
    allowed_values: tuple[Any, ...]

    @property
    def id(self) -> str:
        return f"{self.attribute_set}_{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "attributeSet": self.attribute_set,
            "description": self.description,
            "id": self.id,
            "isCollection": self.is_collection,
            "isSearchable": self.is_searchable,
            "name": self.name,
            "status": self.status,
            "type": self.type,
            "usePreDefinedValuesOnly": self.use_predefined_values_only,
        }


@dataclass(slots=True)
class AttributeSet:
    id: str
    description: str | None
    max_attributes_per_set: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "maxAttributesPerSet": self.max_attributes_per_set}


@dataclass(frozen=True)
class Principal:
    """Who a bearer token stands for and what it may do."""

    name: str
    app_id: str
    read_users: bool = True
    read_groups: bool = True
    write_attributes: bool = True
    read_attributes: bool = True
    read_definitions: bool = True
    user: str | None = None  # delegated: the signed-in user (id or UPN)


# -- property tables (for $select, $filter and rendering) ---------------------------------------------------

PropKind = Literal["str", "strlist", "bool", "csa", "none", "list"]


@dataclass(frozen=True, slots=True)
class Prop:
    name: str
    kind: PropKind
    get: Callable[[Any], Any]


def _nickname(value: str) -> str:
    return "".join(ch for ch in value if ch.isalnum()) or "group"


def _props(*props: Prop) -> dict[str, Prop]:
    return {p.name.lower(): p for p in props}


def _none(_: Any) -> None:
    return None


def _empty(_: Any) -> list[str]:
    return []


USER_PROPS: Final = _props(
    Prop("id", "str", lambda u: u.id),
    Prop("userPrincipalName", "str", lambda u: u.upn),
    Prop("mail", "str", lambda u: u.mail),
    Prop("otherMails", "strlist", lambda u: list(u.other_mails)),
    Prop("displayName", "str", lambda u: u.display_name),
    Prop("accountEnabled", "bool", lambda u: u.account_enabled),
    Prop("customSecurityAttributes", "csa", _none),  # rendered by the emulator (permission-dependent)
    Prop("mailNickname", "str", lambda u: u.upn.partition("@")[0]),
    Prop("userType", "str", lambda _: "Member"),
    Prop("businessPhones", "list", _empty),
    Prop("givenName", "none", _none),
    Prop("surname", "none", _none),
    Prop("jobTitle", "none", _none),
    Prop("mobilePhone", "none", _none),
    Prop("officeLocation", "none", _none),
    Prop("preferredLanguage", "none", _none),
    Prop("employeeId", "none", _none),
    Prop("onPremisesSamAccountName", "none", _none),
    Prop("proxyAddresses", "list", _empty),
)
USER_DEFAULT: Final = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
GROUP_PROPS: Final = _props(
    Prop("id", "str", lambda g: g.id),
    Prop("displayName", "str", lambda g: g.display_name),
    Prop("description", "none", _none),
    Prop("groupTypes", "list", _empty),
    Prop("mail", "none", _none),
    Prop("mailEnabled", "bool", lambda _: False),
    Prop("mailNickname", "str", lambda g: _nickname(g.display_name)),
    Prop("securityEnabled", "bool", lambda _: True),
)
GROUP_DEFAULT: Final = (
    "id",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
)
DEFINITION_PROPS: Final = _props(
    Prop("id", "str", lambda d: d.id),
    Prop("attributeSet", "str", lambda d: d.attribute_set),
    Prop("name", "str", lambda d: d.name),
    Prop("type", "str", lambda d: d.type),
    Prop("status", "str", lambda d: d.status),
    Prop("description", "str", lambda d: d.description),
    Prop("isCollection", "bool", lambda d: d.is_collection),
    Prop("isSearchable", "bool", lambda d: d.is_searchable),
    Prop("usePreDefinedValuesOnly", "bool", lambda d: d.use_predefined_values_only),
)
SET_PROPS: Final = _props(
    Prop("id", "str", lambda s: s.id),
    Prop("description", "str", lambda s: s.description),
    Prop("maxAttributesPerSet", "none", lambda s: s.max_attributes_per_set),
)
MEMBER_PROPS: Final = {**GROUP_PROPS, **USER_PROPS}


# -- indexes ---------------------------------------------------------------------------------------------------


def index_key(value: str) -> str:
    """``value.lower()``, reusing ``value`` itself when it already is lower-case (one string less per key)."""
    lowered = value.lower()
    return value if lowered == value else lowered


def add_to_index(index: dict[str, User | tuple[User, ...]], key: str, record: User) -> None:
    current = index.get(key)
    if current is None:
        index[key] = record
    elif isinstance(current, tuple):
        index[key] = (*current, record)
    else:
        index[key] = (current, record)


def lookup(index: Mapping[str, User | tuple[User, ...]], key: str) -> tuple[User, ...]:
    found = index.get(key)
    if found is None:
        return ()
    return found if isinstance(found, tuple) else (found,)


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 32 and name.isascii() and name.isalnum() and not name[0].isdigit()
