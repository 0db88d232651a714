"""The fix ``check`` gives for each cause of a failure: Graph's and Defguard's, and the Entra role a refusal
lacks. Pure: the causes are set where the errors are raised (``cause`` on :class:`~..exceptions.EntraError` and
:class:`~..exceptions.DefguardUnreachableError`); ``docs/reference/sign-in-errors.md`` says what is verified."""

from __future__ import annotations

from ..models import CheckItem, CheckState, GraphPrincipal

__all__ = ["DEFGUARD_FIXES", "GRAPH_FIXES", "defguard_reachable_item", "graph_failure_hint", "missing_role_hint"]

FAIL = CheckState.FAIL


#: The fix for each cause of a failed Graph sign-in or request (the causes of :class:`~..exceptions.EntraError`).
GRAPH_FIXES = {
    "unreachable": (
        "check that this machine reaches Microsoft Graph and the sign-in host of --cloud (graph.microsoft.com and "
        "login.microsoftonline.com for the global cloud): DNS, firewall, or a proxy to set in HTTPS_PROXY"
    ),
    "tls": (
        "the certificate was not trusted: a TLS-inspecting proxy or firewall presents its own; exempt "
        "graph.microsoft.com and login.microsoftonline.com from TLS inspection (--ca-bundle is for Defguard only)"
    ),
    "proxy": (
        "the proxy refused (407 or no tunnel): set HTTPS_PROXY to a proxy that lets this machine through, with its "
        "credentials if it needs them (http://user:password@proxy:port), or exempt the host in NO_PROXY"
    ),
    "tool": (
        "the sign-in needed a program that is not installed (a developer tool such as az that azure-identity "
        "runs): choose another --auth (environment, managed-identity, interactive or device-code)"
    ),
    "token": (
        "sign in again or get a fresh token: it must be for Microsoft Graph in this tenant and cloud "
        "(check --auth, --tenant-id, --client-id, --cloud and the AZURE_* or DEFGUARD_ENTRA_GRAPH_TOKEN variables)"
    ),
    "consent": (
        "the application lacks consent for Microsoft Graph: an admin grants admin consent for its permissions "
        "(Entra admin center → Enterprise applications → the app → Permissions → Grant admin consent), then sign "
        "in again"
    ),
}


def graph_failure_hint(cause: str | None) -> str:
    """The fix for a Graph failure of ``cause``; an unknown cause gets the sign-in hint (the commonest)."""
    return GRAPH_FIXES.get(cause or "token", GRAPH_FIXES["token"])


#: The fix for each cause of an unreachable Defguard (the causes of :class:`~..exceptions.DefguardUnreachableError`).
DEFGUARD_FIXES = {
    "unreachable": (
        "check --url (the Defguard core's base URL, its host and port) and that the server is up and reachable "
        "from here (DNS, firewall, or a proxy to set in HTTPS_PROXY)"
    ),
    "tls": "the server's certificate was not trusted: pass --ca-bundle PATH with the CA that signed it (PEM)",
    "proxy": (
        "the proxy refused (407 or no tunnel): set HTTPS_PROXY (HTTP_PROXY for an http:// URL) to a proxy that lets "
        "this machine through, with its credentials if it needs them, or exempt the host in NO_PROXY"
    ),
}


def defguard_reachable_item(detail: str, cause: str | None) -> CheckItem:
    """The failed "Defguard reachable" line: the fix for its cause, all three when it is not known."""
    hint = DEFGUARD_FIXES.get(cause or "") or (
        "check --url (the Defguard core's base URL), that the server is up and reachable from here, "
        "and --ca-bundle for a private CA"
    )
    return CheckItem("defguard_reachable", "Defguard reachable", FAIL, detail, hint)


def missing_role_hint(principal: GraphPrincipal | None, scopes: tuple[str, ...], role: str) -> str | None:
    """Graph refused (403 Authorization_RequestDenied) although the delegated token carries one of ``scopes``: then
    what is missing is the signed-in user's Entra ``role``; ``None`` when the token does not show that."""
    if principal is None or principal.kind != "delegated" or not principal.scopes:
        return None
    scope = next((s for s in scopes if s.lower() in principal.scopes), None)
    if scope is None:
        return None
    return (
        f"the token has the delegated scope {scope}, so what is missing is the Entra role {role} of the signed-in "
        "user: a Privileged Role Administrator assigns it (tenant-wide, or on the attribute set; Global "
        "Administrator does not include it), then sign in again"
    )
