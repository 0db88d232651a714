"""Entra's refusals, as its token endpoint sends them.

Source: Microsoft Learn, "Microsoft Entra authentication and authorization error codes"
(https://learn.microsoft.com/entra/identity-platform/reference-error-codes): the body is JSON with ``error`` (the
OAuth 2.0 code), ``error_description`` (``AADSTSnnnnn: text`` then ``\\r\\nTrace ID: …\\r\\nCorrelation ID: …
\\r\\nTimestamp: …``), ``error_codes`` (the numbers), ``timestamp``, ``trace_id``, ``correlation_id`` and
``error_uri``. The flows' pages name the codes each grant answers: client credentials
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow), device code
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code: ``authorization_pending``,
``authorization_declined``, ``bad_verification_code``, ``expired_token``), authorization code with PKCE
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow) and refresh
(same page, "Refresh the access token"). The descriptions here are shortened; clients key on the code.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

from defguard_entra.testing._server import Response

__all__ = ["REFUSALS", "AadstsError", "refusal"]

#: code → (HTTP status, OAuth ``error``, description with ``{placeholders}``)
REFUSALS: Final[dict[int, tuple[int, str, str]]] = {
    65001: (
        400,
        "invalid_grant",
        (
            "The user or administrator has not consented to use the application with ID '{client_id}'. Send an "
            "interactive authorization request for this user and resource."
        ),
    ),
    65004: (400, "access_denied", "User declined to consent to access the app."),
    70000: (400, "invalid_grant", "The provided value for the 'code' parameter is not valid."),
    70008: (400, "invalid_grant", "The provided authorization code or refresh token has expired due to inactivity."),
    70011: (400, "invalid_scope", "The provided value for the input parameter 'scope' is not valid."),
    70016: (400, "authorization_pending", "OAuth 2.0 device flow error. Authorization is pending. Continue polling."),
    70020: (
        400,
        "expired_token",
        "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
    ),
    70021: (400, "invalid_request", "No matching federated identity record found for presented assertion."),
    500011: (
        400,
        "invalid_resource",
        "The resource principal named {resource} was not found in the tenant named {tenant}.",
    ),
    700016: (
        400,
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
    ),
    700027: (401, "invalid_client", "Client assertion failed signature validation."),
    700024: (400, "invalid_client", "Client assertion is not within its valid time range."),
    7000215: (
        401,
        "invalid_client",
        (
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "
            "not the client secret ID, for a secret added to app '{client_id}'."
        ),
    ),
    7000218: (
        401,
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ),
    90002: (
        400,
        "invalid_request",
        (
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the "
            "correct cloud."
        ),
    ),
    900144: (400, "invalid_request", "The request body must contain the following parameter: '{parameter}'."),
    70003: (400, "unsupported_grant_type", "The app requested an unsupported grant type '{grant_type}'."),
    501481: (
        400,
        "invalid_grant",
        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    ),
    700082: (
        400,
        "invalid_grant",
        (
            "The refresh token has expired due to inactivity. The token was issued on {issued} and was inactive for "
            "90.00:00:00."
        ),
    ),
}


class AadstsError(Exception):
    """Raised by a grant handler: answered as Entra's error body."""

    def __init__(self, code: int, **details: str) -> None:
        super().__init__(code)
        self.code = code
        self.details = details


def refusal(code: int, **details: str) -> Response:
    """Entra's answer for ``code``: the documented body, a fresh trace and correlation id, and the time."""
    status, error, template = REFUSALS[code]
    trace, correlation = str(uuid.uuid4()), details.pop("correlation_id", None) or str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    description = f"AADSTS{code}: " + template.format_map(_Blank(details))
    body = {
        "error": error,
        "error_description": f"{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n"
        f"Timestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return Response.json(status, body, {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"
