"""What went wrong in a Microsoft Entra sign-in, in one line: the cause (the AADSTS code and its meaning where Entra
sent one) and the fix, whatever azure-identity or MSAL raised.

azure-identity raises ``ClientAuthenticationError`` (``CredentialUnavailableError`` when a credential has nothing to
try), a ``ValueError`` for a tenant id with invalid characters or a certificate it cannot load, an ``OSError`` for a
certificate file it cannot open, azure-core's ``ServiceRequestError`` when the sign-in or managed-identity endpoint
does not answer, and ``ChainedTokenCredential`` a summary whose first line hides the cause (each inner credential's
failure sits on a line of its own, ``\\t<Credential>: <message>``). :func:`sign_in_error` turns each of them into an
:class:`~defguard_entra.exceptions.EntraAuthError`; see docs/reference/sign-in-errors.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from .exceptions import EntraAuthError

__all__ = ["connection_cause", "first_line", "sign_in_cause", "sign_in_error"]

#: AADSTS codes by cause (Microsoft Learn, "Microsoft Entra authentication and authorization error codes").
_CONSENT_CODES = ("AADSTS65001", "AADSTS65004", "AADSTS90094", "AADSTS90095", "AADSTS650056", "AADSTS650057")
_TOKEN_CODES = (
    "AADSTS50132",  # session revoked: password changed or expired
    "AADSTS50133",
    "AADSTS50173",  # grant expired: revoked or password changed
    "AADSTS70043",  # refresh token expired (sign-in frequency)
    "AADSTS700082",  # refresh token expired after inactivity
    "AADSTS700084",
    "AADSTS7000215",  # invalid client secret
    "AADSTS7000222",  # client secret expired
)
#: What a code means, and what to do about it, in our words (same page; codes not listed keep Entra's own text).
_MEANINGS: Mapping[str, tuple[str, str]] = {
    "AADSTS65001": (
        "consent is missing",
        "an administrator grants consent to the app's Microsoft Graph permissions (docs/entra-setup.md)",
    ),
    "AADSTS65004": ("the user declined consent", "sign in again and accept, or ask an administrator to consent"),
    "AADSTS90094": ("an administrator must consent", "ask an administrator to grant tenant-wide consent"),
    "AADSTS90095": ("an administrator must consent", "ask an administrator to grant tenant-wide consent"),
    "AADSTS650056": (
        "the app's permissions are not consented",
        "an administrator grants consent (docs/entra-setup.md)",
    ),
    "AADSTS650057": (
        "the app does not list the permission it asked for",
        "add the Microsoft Graph permissions to the app registration (docs/entra-setup.md)",
    ),
    "AADSTS50076": ("multi-factor authentication is required", "sign in interactively and complete the MFA prompt"),
    "AADSTS50079": ("multi-factor authentication must be registered", "register MFA, then sign in again"),
    "AADSTS50126": ("wrong user name or password", "sign in again with the right account"),
    "AADSTS50020": ("the account is not in this tenant", "sign in with an account of the tenant, or fix --tenant-id"),
    "AADSTS50034": ("the account does not exist in this tenant", "sign in with an account of the tenant"),
    "AADSTS50058": ("no signed-in session was found", "sign in again"),
    "AADSTS50132": ("the session was revoked (password changed or expired)", "sign in again"),
    "AADSTS50133": ("the session was revoked (password changed or expired)", "sign in again"),
    "AADSTS50173": ("the grant expired (revoked, or the password changed)", "sign in again"),
    "AADSTS53003": ("Conditional Access blocked the sign-in", "ask an administrator which policy applies"),
    "AADSTS70016": ("the device code sign-in is still pending", "finish the sign-in in the browser"),
    "AADSTS70043": ("the refresh token expired (sign-in frequency)", "sign in again"),
    "AADSTS70019": ("the device code expired before the sign-in finished", "run again and enter the code in time"),
    # the token endpoint's ``expired_token`` for a device code: "…is not valid. This device code has expired."
    "AADSTS70020": ("the device code expired before the sign-in finished", "run again and enter the code in time"),
    "AADSTS700082": ("the refresh token expired after inactivity", "sign in again"),
    "AADSTS700084": ("the refresh token expired", "sign in again"),
    "AADSTS700016": (
        "the application is not found in the tenant",
        "check --client-id (AZURE_CLIENT_ID) and --tenant-id (AZURE_TENANT_ID)",
    ),
    "AADSTS7000215": ("the client secret is wrong", "set AZURE_CLIENT_SECRET to the secret's value, not its id"),
    "AADSTS7000222": ("the client secret expired", "create a new client secret for the app registration"),
    "AADSTS700027": ("the certificate is not registered for the app", "upload the certificate to the app registration"),
    "AADSTS90002": ("the tenant is not found", "check --tenant-id (AZURE_TENANT_ID) and --cloud"),
    "AADSTS90072": ("the account is not in this tenant", "sign in with an account of the tenant, or fix --tenant-id"),
    "AADSTS500011": ("the resource is not found in the tenant", "check --cloud and --graph-url"),
    "AADSTS70011": ("a scope is not valid", "check --graph-url and --cloud (the scopes are the Graph root's)"),
}
#: azure-identity's own texts for a sign-in that ended without Entra's refusal (1.27.0), in our words.
_SDK_TEXTS: Mapping[str, str] = {
    # _credentials/device_code.py: MSAL stopped polling at the code's ``expires_in`` with the sign-in still pending
    "Timed out waiting for user to authenticate": (
        "the device code expired before the sign-in finished; fix: run again and enter the code in time"
    ),
}
_TOOL_MESSAGES = ("not found on path", "is not recognized", "failed to execute", "failed to invoke")
_SIGNED_OUT_MESSAGES = ("az login", "no accounts were found", "expired")  # AzureCliCredential, MSAL's cache
_CODE = re.compile(r"\bAADSTS(\d+)\b(?::\s*([^\r\n]*))?")
#: ``\t<Credential>: <message>`` lines of ChainedTokenCredential's summary (azure/identity/_credentials/chained.py).
_ATTEMPT = re.compile(r"^\t(\w+): (.*)$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[a-z)])\.(\s|$)")


def sign_in_cause(message: str) -> str | None:
    """What an azure-identity/MSAL error message says went wrong (a cause of :class:`EntraError`), or ``None``.

    Read from the message because that is all azure-identity keeps: the AADSTS code Entra sent, or the fixed texts
    of ``AzureCliCredential`` ("Azure CLI not found on path", "Please run 'az login'…"). Codes not listed give
    ``None`` (the generic hint); see docs/reference/sign-in-errors.md.
    """
    text = message.lower()
    if any(code.lower() in text for code in _CONSENT_CODES) or "consent" in text:
        return "consent"
    if any(code.lower() in text for code in _TOKEN_CODES):
        return "token"
    if any(words in text for words in _TOOL_MESSAGES):
        return "tool"
    if any(words in text for words in _SIGNED_OUT_MESSAGES):
        return "token"
    if "aadsts" in text:
        return None
    return connection_cause(message) if _looks_like_network(text) else None


def connection_cause(message: str) -> str:
    """A transport failure's message → ``proxy``, ``tls`` or ``unreachable``."""
    text = message.lower()
    if "proxy" in text or "407" in text or "tunnel" in text:
        return "proxy"
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "tls"
    return "unreachable"


def _looks_like_network(text: str) -> bool:
    words = ("connection", "timed out", "name resolution", "getaddrinfo", "ssl", "certificate", "proxy", "tunnel")
    return any(word in text for word in words)


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (``"unknown error"`` for none)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _inner_failure(text: str) -> str:
    """The failure that matters in a ``ChainedTokenCredential`` summary: the last credential tried (the chain stops
    at the first real failure, and goes on past ``unavailable`` ones); ``text`` itself when it is no summary."""
    attempts = _ATTEMPT.findall(text)
    return f"{attempts[-1][0]}: {attempts[-1][1]}" if attempts else text


def _unescaped(text: str) -> str:
    """Entra's raw JSON (as MSAL quotes it in a message) with its ``\\r\\n`` escapes made line breaks again, so
    that the trace and correlation ids after the description stay out of the line."""
    return text.replace("\\r\\n", "\n").replace("\\n", "\n").replace('"', "\n")


def _aadsts(text: str) -> str | None:
    """``AADSTS65001 (consent is missing): The user or administrator has not consented…; fix: …``, or ``None``."""
    match = _CODE.search(text)
    if match is None:
        return None
    code = f"AADSTS{match[1]}"
    said = _SENTENCE_END.split(match[2] or "", maxsplit=1)[0].strip().rstrip(".")
    meaning, fix = _MEANINGS.get(code, (None, None))
    if meaning is None:
        return f"{code}: {said or 'see Microsoft Learn, Entra error codes'}"
    return f"{code} ({meaning}){': ' + said if said else ''}; fix: {fix}"


def _chained_texts(exc: BaseException) -> list[str]:
    """The messages of the exceptions ``exc`` was raised from or while handling (a few levels).

    MSAL 1.39 (``authority.py``) answers a tenant Entra does not know (AADSTS90002 at the OpenID configuration) with
    a ``ValueError`` of its own raised while handling the one that carries Entra's answer, and azure-identity
    (``_internal/decorators.py``) wraps that in a ``ClientAuthenticationError``: the code is only in the chain."""
    texts: list[str] = []
    seen = exc.__cause__ or exc.__context__
    while seen is not None and len(texts) < 5:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return texts


def _client_auth_error(exc: ClientAuthenticationError) -> EntraAuthError:
    text = exc.message or str(exc)
    inner = _inner_failure(text)
    coded = _aadsts(inner)
    if coded is None:  # Entra's code may sit only in an exception further down the chain
        chained = next((t for t in _chained_texts(exc) if _CODE.search(t)), None)
        if chained is not None:
            text, coded = chained, _aadsts(_unescaped(chained))
    cause = sign_in_cause(text)
    if coded is not None:
        return EntraAuthError(f"Microsoft Entra sign-in failed: {coded}", cause=cause)
    detail = first_line(inner)
    known = next((said for sdk_text, said in _SDK_TEXTS.items() if sdk_text in detail), None)
    if known is not None:
        return EntraAuthError(f"Microsoft Entra sign-in failed: {known}", cause=cause)
    fix = {
        "tool": "install the tool, or use another --auth mode",
        "token": "sign in again",
        "consent": "an administrator grants consent (docs/entra-setup.md)",
    }.get(cause or "", "")
    return EntraAuthError(f"Microsoft Entra sign-in failed: {detail}{'; fix: ' + fix if fix else ''}", cause=cause)


def sign_in_error(exc: BaseException, *, where: str = "the Microsoft Entra sign-in endpoint") -> EntraAuthError:
    """``exc``, raised by an azure-identity or MSAL credential (built or asked for a token), as one line with its
    cause and fix. ``where`` names the endpoint a transport failure could not reach (the managed-identity one).

    Never raised for ``KeyboardInterrupt``/``SystemExit``: callers catch ``Exception``."""
    if isinstance(exc, EntraAuthError):
        return exc
    if isinstance(exc, ClientAuthenticationError):  # also CredentialUnavailableError
        return _client_auth_error(exc)
    if isinstance(exc, ServiceRequestError):  # no answer (azure-core's transport)
        text = first_line(str(exc))
        return EntraAuthError(
            f"cannot reach {where}: {text}; fix: check the network, proxy (HTTPS_PROXY) and that the endpoint is up",
            cause=connection_cause(text),
        )
    text = first_line(str(exc)) if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ValueError) and "tenant" in text.lower():
        return EntraAuthError(
            "Microsoft Entra sign-in failed: the tenant id is not valid (letters, digits, '-' and '.' only); fix: "
            "pass --tenant-id (AZURE_TENANT_ID) as the directory's GUID or a domain such as contoso.onmicrosoft.com"
        )
    if isinstance(exc, ValueError) and ("certificate" in text.lower() or "password" in text.lower()):
        return EntraAuthError(
            f"Microsoft Entra sign-in failed: cannot load the certificate ({text}); fix: check that "
            "AZURE_CLIENT_CERTIFICATE_PATH is a PEM (key and certificate) or PFX file and, for a PFX, "
            "AZURE_CLIENT_CERTIFICATE_PASSWORD"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or text
        name = f" {exc.filename!r}" if exc.filename else ""
        return EntraAuthError(
            f"Microsoft Entra sign-in failed: cannot read the certificate file{name}: {reason}; fix: set "
            "AZURE_CLIENT_CERTIFICATE_PATH to a readable PEM or PFX file"
        )
    return EntraAuthError(f"Microsoft Entra sign-in failed: {type(exc).__name__}: {text}", cause=sign_in_cause(text))
