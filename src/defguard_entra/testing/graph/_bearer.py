"""Bearer tokens the Graph emulator accepts from the identity emulator: RS256 JWTs, verified as Graph does.

Graph checks the signature against the issuer's published keys, the audience (its own root or application id)
and the lifetime ("Access tokens in the Microsoft identity platform: validate tokens",
https://learn.microsoft.com/entra/identity-platform/access-tokens#validate-tokens), and answers 401
``InvalidAuthenticationToken`` otherwise (https://learn.microsoft.com/graph/errors). What a token may do comes from
its claims: ``roles`` (application permissions, app-only) or ``scp`` (delegated permissions) and, for delegated
custom-security-attribute calls, the signed-in user's directory roles in ``wids``: Graph's pages for
``GET /users`` with ``customSecurityAttributes`` (https://learn.microsoft.com/graph/api/user-get, "Attribute
Assignment Reader"), ``PATCH /users/{id}`` (https://learn.microsoft.com/graph/api/user-update, "Attribute Assignment
Administrator") and ``GET /directory/customSecurityAttributeDefinitions``
(https://learn.microsoft.com/graph/api/directory-list-customsecurityattributedefinitions: Attribute Definition
Reader, Attribute Assignment Administrator or Attribute Definition Administrator). Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from defguard_entra.testing._jws import JwsError, verify_rs256

from ._directory import Principal

__all__ = ["TrustedIssuer", "principal_from_claims", "verify_bearer"]

#: Graph's audiences: its root in each cloud, or its application id.
AUDIENCES = frozenset(
    {
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/",
        "https://graph.microsoft.us",
        "https://dod-graph.microsoft.us",
        "https://microsoftgraph.chinacloudapi.cn",
        "00000003-0000-0000-c000-000000000000",
    }
)
_ASSIGNMENT_ADMIN = "58a13ea3-c632-46ae-9ee0-9c0d43cd7f3d"
_ASSIGNMENT_READER = "ffd52fa5-98dc-465c-991d-fc073eb59f8f"
_DEFINITION_ADMIN = "8424c6f0-a189-499e-bbd0-26c1753c96d4"
_DEFINITION_READER = "1d336d2c-4ae8-42ef-9711-b3604ce3fc2c"

#: Principal flag → (permissions that grant it, directory roles a delegated caller also needs; empty: none)
_RULES: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "read_users": (
        frozenset({"user.read.all", "user.readwrite.all", "directory.read.all", "directory.readwrite.all"}),
        frozenset(),
    ),
    "read_groups": (
        frozenset({"groupmember.read.all", "group.read.all", "group.readwrite.all", "directory.read.all"}),
        frozenset(),
    ),
    "read_attributes": (
        frozenset({"customsecattributeassignment.read.all", "customsecattributeassignment.readwrite.all"}),
        frozenset({_ASSIGNMENT_READER, _ASSIGNMENT_ADMIN}),
    ),
    "write_attributes": (
        frozenset({"customsecattributeassignment.readwrite.all"}),
        frozenset({_ASSIGNMENT_ADMIN}),
    ),
    "read_definitions": (
        frozenset({"customsecattributedefinition.read.all", "customsecattributedefinition.readwrite.all"}),
        frozenset({_DEFINITION_READER, _ASSIGNMENT_ADMIN, _DEFINITION_ADMIN}),
    ),
}


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer Graph accepts tokens from, and its signing keys (JWKs)."""

    issuer: str
    keys: tuple[Mapping[str, Any], ...]


def verify_bearer(token: str, trusted: Iterable[TrustedIssuer], leeway: float = 300.0) -> dict[str, Any] | str:
    """The token's claims, or Graph's 401 message saying why it is refused."""
    for issuer in trusted:
        try:
            claims = verify_rs256(token, issuer.keys)
        except JwsError:
            continue
        if claims.get("iss") != issuer.issuer:
            return "Access token validation failure. Invalid issuer."
        if claims.get("aud") not in AUDIENCES:
            return "Access token validation failure. Invalid audience."
        now = time.time()
        if float(claims.get("exp", 0)) + leeway < now:
            return "Lifetime validation failed, the token is expired."
        if float(claims.get("nbf", 0)) - leeway > now:
            return "Lifetime validation failed, the token is not yet valid."
        return claims
    return "Access token validation failure. Invalid signature."


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """What the token may do: app-only from ``roles``, delegated from ``scp`` and the user's ``wids``."""
    delegated = isinstance(claims.get("scp"), str)
    granted = {
        p.lower() for p in (str(claims["scp"]).split() if delegated else [str(r) for r in claims.get("roles") or []])
    }
    wids = {str(w) for w in claims.get("wids") or []}
    flags = {
        flag: bool(granted & permissions) and (not delegated or not roles or bool(wids & roles))
        for flag, (permissions, roles) in _RULES.items()
    }
    name = str(claims.get("upn") or claims.get("app_displayname") or claims.get("appid") or "token")
    user = str(claims.get("oid")) if delegated and claims.get("oid") else None
    return Principal(name, str(claims.get("appid") or claims.get("azp") or ""), user=user, **flags)
