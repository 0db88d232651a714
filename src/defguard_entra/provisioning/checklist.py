"""Pure logic of ``check``: what a Graph access token says about its caller, and checklist lines with fix hints.

No I/O, no clock, no logging: :mod:`.check` gathers the answers, these functions judge them. Every failing line
names what to grant or change: the delegated scope, the application permission or the Entra role (Microsoft Learn,
"Custom security attribute assignments" under "Microsoft Graph permissions reference"), or the Defguard setting.

How write permission is judged without writing: Graph shows whether a PATCH is allowed only by doing one, and a
PATCH that Graph would reject for another reason still depends on the order in which Graph validates (and would be
a write if that guess were wrong). So ``check`` never sends one. When the access token is a JWT, its ``roles``
(application permissions), ``scp`` (delegated scopes) and ``wids`` (tenant-wide Entra roles) claims are read; a
missing permission or scope is then a failure, a role that does not show is "not verified" (a role scoped to the
attribute set never shows in the token). When the token is opaque, write and read permission are "not verified".
"""

from __future__ import annotations

import attrs

from .._defguard_auth import DEFGUARD_AUTH_HINTS
from ..config import DEFAULT_ATTRIBUTE_SET
from ..models import (
    ATTRIBUTE_EXPIRES,
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    AttributeSetCheck,
    CheckItem,
    CheckState,
    DefguardDeployment,
    GraphPrincipal,
)
from .fixes import missing_role_hint
from .plan import enrollment_url_problem

__all__ = [
    "READ_ATTRIBUTES",
    "ROLE_TEMPLATE_IDS",
    "WRITE_ATTRIBUTES",
    "Permission",
    "attribute_items",
    "defguard_token_items",
    "deployment_items",
    "expiry_item",
    "permission_item",
    "read_users_item",
]

#: Built-in Entra roles by name → template id (as they appear in a token's ``wids`` claim).
ROLE_TEMPLATE_IDS = {
    "Attribute Assignment Administrator": "58a13ea3-c632-46ae-9ee0-9c0d43cd7f3d",
    "Attribute Assignment Reader": "ffd52fa5-98dc-465c-991d-fc073eb59f8f",
    "Attribute Definition Administrator": "8424c6f0-a189-499e-bbd0-26c1753c96d4",
    "Attribute Definition Reader": "1d336d2c-4ae8-42ef-9711-b3604ce3fc2c",
}

OK, FAIL, WARN, SKIP = CheckState.OK, CheckState.FAIL, CheckState.WARN, CheckState.SKIP


# -- Graph permissions ---------------------------------------------------------------------------------------------


@attrs.frozen
class Permission:
    """What a step needs, in each sign-in style (any one of each tuple suffices)."""

    key: str
    title: str
    scopes: tuple[str, ...]  # delegated scopes
    app_permissions: tuple[str, ...]  # application permissions
    roles: tuple[str, ...]  # Entra roles of the signed-in user (delegated only)
    purpose: str
    unobservable: str  # why a response cannot tell

    def needs(self) -> str:
        return (
            f"application permission {self.app_permissions[0]} (admin consent), or, signed in as a user, the "
            f"delegated scope {self.scopes[0]} plus the Entra role {self.roles[0]} (it can be scoped to the "
            "attribute set; Global Administrator does not include it)"
        )


WRITE_ATTRIBUTES = Permission(
    "graph_write_attributes",
    "permission to write the attributes",
    scopes=("CustomSecAttributeAssignment.ReadWrite.All",),
    app_permissions=("CustomSecAttributeAssignment.ReadWrite.All",),
    roles=("Attribute Assignment Administrator",),
    purpose="provision and clear write them",
    unobservable="Graph shows whether a write is allowed only by doing one, which check never does",
)
READ_ATTRIBUTES = Permission(
    "graph_read_attributes",
    "permission to read the attributes",
    scopes=("CustomSecAttributeAssignment.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"),
    app_permissions=("CustomSecAttributeAssignment.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"),
    roles=("Attribute Assignment Reader", "Attribute Assignment Administrator"),
    purpose="status, clear and provision --only-missing read them",
    unobservable="without it Graph does not refuse a read but answers as if nothing were stored",
)


def permission_item(permission: Permission, principal: GraphPrincipal | None) -> CheckItem:
    """Judge ``permission`` from the token's claims; "not verified" (warn) where the token does not say."""
    key, title = permission.key, permission.title
    if principal is None or (principal.scopes is None and principal.app_permissions is None):
        return CheckItem(
            key,
            title,
            WARN,
            f"not verified: the access token does not list its permissions, and {permission.unobservable} "
            f"({permission.purpose})",
            f"make sure the principal has the {permission.needs()}",
        )
    if principal.kind == "application":
        granted = principal.app_permissions or frozenset()
        found = next((p for p in permission.app_permissions if p.lower() in granted), None)
        if found:
            return CheckItem(key, title, OK, f"application permission {found}")
        return CheckItem(
            key,
            title,
            FAIL,
            f"the application has no {permission.app_permissions[0]} permission ({permission.purpose})",
            f"add the application permission {permission.app_permissions[0]} (Microsoft Graph) to the app "
            "registration and grant admin consent; app-only callers need no Entra role",
        )
    scopes = principal.scopes or frozenset()
    scope = next((s for s in permission.scopes if s.lower() in scopes), None)
    if scope is None:
        return CheckItem(
            key,
            title,
            FAIL,
            f"the token has no delegated scope {permission.scopes[0]} ({permission.purpose})",
            f"consent to the delegated scope {permission.scopes[0]} for the client application (admin consent), "
            f"then sign in again; the user also needs the Entra role {permission.roles[0]}",
        )
    wanted = {ROLE_TEMPLATE_IDS[r]: r for r in permission.roles}
    held = principal.directory_roles or frozenset()
    role = next((name for rid, name in wanted.items() if rid in held), None)
    if role is not None:
        return CheckItem(key, title, OK, f"delegated scope {scope} and the Entra role {role}")
    return CheckItem(
        key,
        title,
        WARN,
        f"delegated scope {scope} granted; the Entra role {permission.roles[0]} does not show in the token "
        "(a role scoped to the attribute set never does): not verified",
        f"make sure the user holds {permission.roles[0]} (tenant-wide or on the attribute set); a Privileged Role "
        "Administrator assigns it, Global Administrator does not include it",
    )


def read_users_item(allowed: bool) -> CheckItem:
    if allowed:
        return CheckItem("graph_read_users", "permission to read users", OK, "User.Read.All")
    return CheckItem(
        "graph_read_users",
        "permission to read users",
        FAIL,
        "Graph refused to list users (403 Authorization_RequestDenied)",
        "grant User.Read.All: the application permission with admin consent, or the delegated scope",
    )


# -- attribute definitions -----------------------------------------------------------------------------------------


def attribute_items(
    check: AttributeSetCheck, set_name: str, principal: GraphPrincipal | None = None
) -> list[CheckItem]:
    """The definitions line, the set line and one line per attribute (type String, single-valued, free-form);
    ``principal`` names the missing Entra role when the definitions were refused to a user who has the scope."""
    if not check.readable:
        reason = "needs a readable definition"
        scopes = ("CustomSecAttributeDefinition.Read.All", "CustomSecAttributeDefinition.ReadWrite.All")
        return [
            CheckItem(
                "graph_read_definitions",
                "permission to read attribute definitions",
                WARN,
                "Graph refused to list the custom security attribute definitions (403; the permission is optional): "
                "the attribute set and the attributes' types cannot be checked, and provision would go on without "
                "checking them",
                missing_role_hint(principal, scopes, "Attribute Definition Reader")
                or "to have them checked, grant CustomSecAttributeDefinition.Read.All (application permission, or "
                "delegated scope plus the Entra role Attribute Definition Reader)",
            ),
            CheckItem("attribute_set", f"attribute set {set_name!r}", SKIP, reason),
            *(CheckItem(_attribute_key(n), f"{set_name}.{n}", SKIP, reason) for n in (ATTRIBUTE_TOKEN, ATTRIBUTE_URL)),
            expiry_item(check, set_name),
        ]
    items = [CheckItem("graph_read_definitions", "permission to read attribute definitions", OK, "")]
    if not check.set_exists:
        items.append(
            CheckItem(
                "attribute_set",
                f"attribute set {set_name!r}",
                FAIL,
                f"Entra has no attribute set {set_name!r} (names are case-sensitive)",
                f"create the attribute set {set_name} with the single-valued String attributes {ATTRIBUTE_TOKEN} "
                f"and {ATTRIBUTE_URL} (Entra admin center → Custom security attributes; needs the Attribute "
                "Definition Administrator role), or pass --attribute-set-name with the set you use",
            )
        )
        items.extend(
            CheckItem(_attribute_key(n), f"{set_name}.{n}", SKIP, "the attribute set does not exist")
            for n in (ATTRIBUTE_TOKEN, ATTRIBUTE_URL)
        )
        items.append(expiry_item(check, set_name))
        return items
    items.append(CheckItem("attribute_set", f"attribute set {set_name!r}", OK, "exists"))
    for name in (ATTRIBUTE_TOKEN, ATTRIBUTE_URL):
        label = f"{set_name}.{name}"
        problems = [p for p in check.problems if label in p]
        if not problems:
            items.append(CheckItem(_attribute_key(name), label, OK, "single-valued String, free-form, Available"))
            continue
        items.append(
            CheckItem(_attribute_key(name), label, FAIL, "; ".join(problems), _attribute_hint(set_name, name, problems))
        )
    items.append(expiry_item(check, set_name))
    return items


def expiry_item(check: AttributeSetCheck, set_name: str) -> CheckItem:
    """The optional ``EnrollmentTokenExpiresAt`` line: OK when defined as a single-valued String, a warning (never a
    failure) when it is missing or defined otherwise, with how to define it; skipped when nothing can be read."""
    key, label = "attribute_expires", f"{set_name}.{ATTRIBUTE_EXPIRES} (optional)"
    if not check.readable or not check.set_exists:
        why = "needs a readable definition" if not check.readable else "the attribute set does not exist"
        return CheckItem(key, label, SKIP, why)
    if check.defines_expiry:
        return CheckItem(key, label, OK, "single-valued String, free-form, Available: each token's expiry is stored")
    define = (
        f"to have each token's expiry stored, add the attribute {ATTRIBUTE_EXPIRES} to the set {set_name}: data "
        "type String, single value, free-form (see docs/entra-setup.md); needs the Attribute Definition "
        "Administrator role"
    )
    if check.expiry_problems:
        return CheckItem(
            key,
            label,
            WARN,
            "; ".join(check.expiry_problems) + ": the expiry is not stored",
            "attributes cannot be deleted or change type: define it in a new attribute set with the other two "
            "(--attribute-set-name NAME), or edit it as the problem says",
        )
    return CheckItem(
        key,
        label,
        WARN,
        "not defined: tokens are stored without their expiry, so a later run (sync, status) cannot know when a "
        "stored token expires",
        define,
    )


def _attribute_key(name: str) -> str:
    return "attribute_token" if name == ATTRIBUTE_TOKEN else "attribute_url"


def _attribute_hint(set_name: str, name: str, problems: list[str]) -> str:
    text = " ".join(problems)
    if "not defined" in text:
        return (
            f"add the attribute {name} to the set {set_name}: data type String, single value, free-form (not "
            "'only predefined values'); needs the Attribute Definition Administrator role"
        )
    if "type" in text or "multiple values" in text:
        return (
            "an attribute's data type and its single/multiple-value choice cannot be changed, and attributes cannot "
            f"be deleted: define {ATTRIBUTE_TOKEN} and {ATTRIBUTE_URL} as single-valued String attributes in a new "
            "attribute set and pass --attribute-set-name NAME"
        )
    fixes = []
    if "predefined" in text:
        fixes.append("set 'Allow only predefined values' to No (usePreDefinedValuesOnly false)")
    if "Available" in text:
        fixes.append("reactivate it (status Available)")
    return f"edit {set_name}.{name}: " + " and ".join(fixes)


# -- Defguard ------------------------------------------------------------------------------------------------------


def defguard_token_items(
    owner: str | None, is_admin: bool | None, error: tuple[int, str] | None, detail: str = ""
) -> list[CheckItem]:
    """The license-gate, token and admin lines from ``/api/v1/me``: its user, or its error (status, ``msg``)."""
    license_title, token_title, admin_title = (
        "license: API tokens honoured",
        "API token valid",
        "API token owner is an admin",
    )
    gate_on = CheckItem("defguard_license", license_title, OK, "the server evaluated the API token")
    if error is None:
        return [
            gate_on,
            CheckItem("defguard_token", token_title, OK, f"owner {owner!r}"),
            CheckItem("defguard_admin", admin_title, OK, f"{owner!r} is an admin")
            if is_admin
            else CheckItem(
                "defguard_admin",
                admin_title,
                FAIL,
                f"{owner!r} is not an admin",
                "use an API token of a Defguard admin, or make its owner an admin",
            ),
        ]
    status, message = error
    if message == "Session is required":
        return [
            CheckItem(
                "defguard_license",
                license_title,
                FAIL,
                "Defguard ignored the API token and asked for a browser session (401 Session is required)",
                DEFGUARD_AUTH_HINTS["Session is required"] + ": check the license in Defguard's settings",
            ),
            CheckItem("defguard_token", token_title, SKIP, "not evaluated: the server ignored it"),
            CheckItem("defguard_admin", admin_title, SKIP, "not evaluated: the server ignored the token"),
        ]
    if message == "Token authentication is not allowed for normal users":
        return [
            gate_on,
            CheckItem("defguard_token", token_title, OK, "known to the server"),
            CheckItem(
                "defguard_admin",
                admin_title,
                FAIL,
                f"{status} {message}",
                "the token's owner is not (or no longer) an admin: use an API token of a Defguard admin",
            ),
        ]
    if message in {"Invalid API token", "Invalid auth header"}:
        hint = (
            "it should look like dg-<32 letters and digits>: copy it again"
            if message == "Invalid auth header"
            else DEFGUARD_AUTH_HINTS["Invalid API token"] + "; pass it with DEFGUARD_API_TOKEN or --api-token-file"
        )
        return [
            gate_on,
            CheckItem("defguard_token", token_title, FAIL, f"{status} {message}", hint),
            CheckItem("defguard_admin", admin_title, SKIP, "needs a valid API token"),
        ]
    return [
        CheckItem("defguard_license", license_title, SKIP, "unknown"),
        CheckItem(
            "defguard_token",
            token_title,
            FAIL,
            detail or f"{status} {message}",
            "check that --url is the Defguard core and the token belongs to an admin",
        ),
        CheckItem("defguard_admin", admin_title, SKIP, "needs a valid API token"),
    ]


def deployment_items(
    deployment: DefguardDeployment | None, defguard_url: str, line: int, attribute_set: str
) -> list[CheckItem]:
    """What the deployment says about itself: the enrollment URL every token will carry, whether an OpenID provider
    (and so directory sync or SSO) creates users who look enrolled, and which desktop-client reader will see the
    attributes. ``deployment`` is ``None`` when it could not be read at all."""
    items: list[CheckItem] = []
    url = deployment.enrollment_url if deployment is not None else None
    problems = "; ".join(deployment.problems) if deployment is not None else "not read"
    if url is None:
        items.append(
            CheckItem(
                "enrollment_url",
                "Defguard's enrollment URL",
                WARN,
                f"not readable ({problems}): provision will check the first token it mints instead",
                "use an admin's API token; 1.6 reads it from GET /api/v1/support/configuration, 2.x from "
                "GET /api/v1/settings",
            )
        )
    else:
        problem = enrollment_url_problem(url, defguard_url, line)
        items.append(
            CheckItem("enrollment_url", "Defguard's enrollment URL", FAIL, problem.split(": set ")[0], problem)
            if problem is not None
            else CheckItem("enrollment_url", "Defguard's enrollment URL", OK, url)
        )
    openid = deployment.external_openid if deployment is not None else None
    title = "users created by OpenID (directory sync, SSO)"
    if openid is None:
        items.append(CheckItem("defguard_openid", title, SKIP, "GET /api/v1/info could not be read"))
    elif openid:
        kind = "an enrollment token (1.6)" if line < 2 else "a desktop-activation token (2.x)"
        items.append(
            CheckItem(
                "defguard_openid",
                title,
                OK,
                "an external OpenID provider is configured: users it creates (directory sync with Prefetch users, "
                "SSO sign-in) have no password and Defguard lists them as enrolled before they have a device; "
                f"--enrolled auto (the default) gives those without a device {kind}",
            )
        )
    else:
        items.append(CheckItem("defguard_openid", title, OK, "no external OpenID provider is configured"))
    reader = "the desktop client's installer reader"
    if attribute_set != DEFAULT_ATTRIBUTE_SET:
        items.append(
            CheckItem(
                "client_reader",
                reader,
                WARN,
                f"the reader bundled with the Windows client reads only the attribute set {DEFAULT_ATTRIBUTE_SET!r}, "
                f"not {attribute_set!r}",
                f"use the set {DEFAULT_ATTRIBUTE_SET!r}, or deliver the token with fetch-config or export "
                "(docs/rollout.md)",
            )
        )
    else:
        items.append(
            CheckItem(
                "client_reader",
                reader,
                OK,
                "the Windows installer reads these attributes only on Entra-joined machines; domain-joined ones "
                "(hybrid too) read on-premises AD instead: use fetch-config or export there (docs/rollout.md)",
            )
        )
    return items
