"""What Microsoft Graph tells us, as plain data: users, groups, look-ups, writes and the attribute pair."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Self

import attrs

from ._values import MatchedBy, Secret, as_tuple

__all__ = [
    "ATTRIBUTE_EXPIRES",
    "ATTRIBUTE_TOKEN",
    "ATTRIBUTE_URL",
    "AttributeSetCheck",
    "EnrollmentAttributes",
    "EntraGroup",
    "EntraUser",
    "GraphPrincipal",
    "Match",
    "ProvisioningConfig",
    "WriteResult",
]

#: The two custom security attributes of the documented flow, in the attribute set (default ``Defguard``).
ATTRIBUTE_TOKEN = "EnrollmentToken"  # noqa: S105 - an attribute name
ATTRIBUTE_URL = "EnrollmentUrl"
#: The optional third attribute: when the stored token expires (String, ISO 8601 UTC).
ATTRIBUTE_EXPIRES = "EnrollmentTokenExpiresAt"


def _parse_instant(value: Any) -> dt.datetime | None:
    """An ISO 8601 instant as an aware UTC datetime; ``None`` for anything else (a naive one is taken as UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


@attrs.frozen
class EntraUser:
    id: str
    user_principal_name: str
    mail: str | None = None
    other_mails: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)
    display_name: str | None = None
    account_enabled: bool | None = None

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            id=str(row["id"]),
            user_principal_name=str(row.get("userPrincipalName") or ""),
            mail=row.get("mail") or None,
            other_mails=tuple(str(m) for m in row.get("otherMails") or ()),
            display_name=row.get("displayName"),
            account_enabled=row.get("accountEnabled"),
        )


@attrs.frozen
class ProvisioningConfig:
    """The pair the desktop client needs: what ``provision`` stores and ``provisioning.json`` holds."""

    enrollment_url: str
    enrollment_token: Secret

    def to_json_dict(self, *, reveal: bool = True) -> dict[str, str]:
        token = self.enrollment_token.value if reveal else self.enrollment_token.masked()
        return {"enrollment_url": self.enrollment_url, "enrollment_token": token}


@attrs.frozen
class EntraGroup:
    """An Entra group found by its display name (names are not unique in Entra)."""

    id: str
    display_name: str

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Self:
        return cls(id=str(row["id"]), display_name=str(row.get("displayName") or ""))


@attrs.frozen
class Match:
    """How one e-mail address resolved in Entra: a unique user, nobody, or several (``candidates``); ``error`` when
    Graph refused to look the address up."""

    user: EntraUser | None = None
    matched_by: MatchedBy | None = None
    candidates: tuple[str, ...] = ()
    error: str | None = None

    @property
    def unique(self) -> bool:
        return self.user is not None

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


@attrs.frozen
class WriteResult:
    """What Graph answered to one user's attribute write (``status`` is the ``$batch`` item's HTTP status)."""

    ok: bool
    status: int
    error: str | None = None
    retries: int = 0


@attrs.frozen
class AttributeSetCheck:
    """What the attribute definitions say: ``readable`` False when the caller may not read them."""

    readable: bool
    set_exists: bool = False
    problems: tuple[str, ...] = ()
    defines_expiry: bool | None = None  # the set defines EnrollmentTokenExpiresAt (None: not known)

    @property
    def ok(self) -> bool:
        return self.readable and self.set_exists and not self.problems


@attrs.frozen
class EnrollmentAttributes:
    """The pair the documented flow keeps in the attribute set: ``EnrollmentToken`` and ``EnrollmentUrl``.

    The one place the pair is read from Graph's values (:meth:`from_graph`) and turned into values to write
    (:meth:`to_graph`). ``None`` in a field means "not stored" when read and "set to null" when written, so
    ``EnrollmentAttributes().to_graph()`` clears both. The token is a :class:`Secret`, so a ``repr``, a log line or
    ``print()`` in a notebook never shows it.
    """

    token: Secret | None = None
    url: str | None = None
    not_text: tuple[str, ...] = ()
    """The pair's attributes that hold a value that is not text (an attribute defined with another type)."""
    expires_at: dt.datetime | None = None
    """``EnrollmentTokenExpiresAt``, when the set holds a readable one."""

    @classmethod
    def from_graph(cls, values: Mapping[str, Any] | None) -> Self | None:
        """The pair in one user's values of the attribute set, as :meth:`AsyncEntraClient.read_attributes` returns
        them (the token already a :class:`Secret`, or plain text); ``None`` when the set holds neither."""
        if not values:
            return None
        token, url = values.get(ATTRIBUTE_TOKEN), values.get(ATTRIBUTE_URL)
        if isinstance(token, Secret):
            token = token.value
        pair = cls(
            token=Secret(token.strip()) if isinstance(token, str) and token.strip() else None,
            url=url.strip() if isinstance(url, str) and url.strip() else None,
            not_text=tuple(
                name
                for name, value in ((ATTRIBUTE_TOKEN, token), (ATTRIBUTE_URL, url))
                if value is not None and not isinstance(value, str)
            ),
            expires_at=_parse_instant(values.get(ATTRIBUTE_EXPIRES)),
        )
        return None if pair.empty and not pair.not_text else pair

    def to_graph(self, *, expiry: bool = False) -> dict[str, str | None]:
        """The values that store exactly this pair with :meth:`AsyncEntraClient.write_attributes` (other
        attributes of the set are left alone: Graph changes only the attributes it is sent); with ``expiry`` also
        ``EnrollmentTokenExpiresAt`` (ISO 8601 UTC, or null)."""
        values = {ATTRIBUTE_TOKEN: self.token.value if self.token else None, ATTRIBUTE_URL: self.url}
        if expiry:
            at = self.expires_at
            values[ATTRIBUTE_EXPIRES] = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None
        return values

    @property
    def complete(self) -> bool:
        """Both values are stored: what a desktop client needs."""
        return bool(self.token) and bool(self.url)

    @property
    def empty(self) -> bool:
        return not self.token and not self.url


@attrs.frozen
class GraphPrincipal:
    """Who the Graph access token stands for. ``None`` in a permission field means "the token does not say"."""

    kind: str  # "delegated" | "application" | "unknown"
    user: str | None = None  # delegated: the signed-in user's UPN
    client_id: str | None = None
    scopes: frozenset[str] | None = None  # delegated: the token's ``scp``
    app_permissions: frozenset[str] | None = None  # application: the token's ``roles``
    directory_roles: frozenset[str] | None = None  # delegated: ``wids`` (role template ids), when emitted

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any] | None) -> Self | None:
        """Read ``scp``/``roles``/``wids``/``upn``/``appid`` from decoded token claims; ``None`` for no claims."""
        if not claims:
            return None
        client_id = _text(claims.get("appid")) or _text(claims.get("azp"))
        if isinstance(claims.get("scp"), str):
            wids = claims.get("wids")
            return cls(
                "delegated",
                user=_text(claims.get("upn"))
                or _text(claims.get("unique_name"))
                or _text(claims.get("preferred_username")),
                client_id=client_id,
                scopes=frozenset(s.lower() for s in str(claims["scp"]).split()),
                directory_roles=frozenset(str(w).lower() for w in wids) if isinstance(wids, list) else None,
            )
        roles = claims.get("roles")
        if isinstance(roles, list) or claims.get("idtyp") == "app":
            return cls(
                "application",
                client_id=client_id,
                app_permissions=frozenset(str(r).lower() for r in roles) if isinstance(roles, list) else frozenset(),
            )
        return cls("unknown", client_id=client_id)

    def describe(self) -> str:
        client = f"client id {self.client_id}" if self.client_id else "client id unknown"
        if self.kind == "delegated":
            return f"signed in as {self.user or 'an unknown user'} ({client})"
        if self.kind == "application":
            return f"application ({client})"
        return f"unknown principal ({client})"

    def to_audit(self) -> dict[str, Any]:
        return {"type": self.kind, "user": self.user, "client_id": self.client_id}


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None
