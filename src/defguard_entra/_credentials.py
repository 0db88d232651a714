"""Microsoft Entra sign-in: the one module that imports ``azure.identity``.

:func:`build_credential` turns :class:`~defguard_entra.config.GraphSettings` into an azure-identity credential,
wrapped so that a token is fetched once and reused until shortly before it expires (kiota asks for a token on every
request; ``az`` would otherwise be spawned per call). Nothing here reads ``os.environ``: the CLI hands the relevant
variables over in ``GraphSettings.environment``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from .config import GRAPH_CLI_CLIENT_ID, AuthMode, GraphSettings
from .exceptions import ConfigurationError, EntraAuthError
from .models import Secret

__all__ = [
    "APP_ONLY_MODES",
    "CachingCredential",
    "StaticTokenCredential",
    "build_credential",
    "close_quietly",
    "connection_cause",
    "graph_scopes",
    "jwt_claims",
    "sign_in_cause",
]

log = logging.getLogger(__name__)

APP_ONLY_MODES = frozenset({AuthMode.ENVIRONMENT, AuthMode.MANAGED_IDENTITY, AuthMode.AZURE_CLI, AuthMode.TOKEN})
_CACHE_NAME = "defguard-entra"
_REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is renewed


class StaticTokenCredential:
    """A credential that returns one access token given up front (``--auth token``)."""

    def __init__(self, token: Secret, lifetime: float = 3600.0) -> None:
        self._token = token
        self._expires = int(time.time() + lifetime)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:  # noqa: ARG002 - the protocol's signature
        return AccessToken(self._token.value, self._expires)

    def __repr__(self) -> str:
        return "StaticTokenCredential(***)"


class CachingCredential:
    """Wrap any ``get_token`` credential: one token per scope set, renewed 5 minutes before it expires.

    Thread-safe; errors from the wrapped credential become :class:`EntraAuthError` with a one-line message.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], AccessToken] = {}

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        key = tuple(sorted(scopes))
        claims = kwargs.get("claims")
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and not claims and cached.expires_on - _REFRESH_MARGIN > time.time():
                return cached
            try:
                token: AccessToken = self.inner.get_token(*scopes, **kwargs)
            except ClientAuthenticationError as exc:
                # Also CredentialUnavailableError (a subclass): nothing to try (``az`` missing, not signed in);
                # otherwise Entra's refusal, its AADSTS code in the message.
                text = exc.message or str(exc)
                raise EntraAuthError(
                    f"Microsoft Entra sign-in failed: {_first_line(text)}", cause=sign_in_cause(text)
                ) from None
            except ServiceRequestError as exc:  # no answer from the sign-in endpoint (azure-core's transport)
                text = _first_line(str(exc))
                raise EntraAuthError(
                    f"cannot reach the Microsoft Entra sign-in endpoint: {text}", cause=connection_cause(text)
                ) from None
            self._cache[key] = token
            return token

    def close(self) -> None:
        close_quietly(self.inner)

    def __repr__(self) -> str:
        return f"CachingCredential({type(self.inner).__name__})"


def graph_scopes(settings: GraphSettings, delegated: Sequence[str]) -> list[str]:
    """The scopes to ask for: ``<root>/.default`` for app-only sign-in, else only the delegated ones needed."""
    root = settings.resource
    if settings.resolved_auth() in APP_ONLY_MODES or not delegated:
        return [f"{root}/.default"]
    return [f"{root}/{scope}" for scope in delegated]


def build_credential(
    settings: GraphSettings,
    *,
    prompt: Callable[[str], None] | None = None,
) -> CachingCredential:
    """The credential for ``settings.auth``; ``prompt`` shows device-code instructions (the library never prints)."""
    mode = settings.resolved_auth()
    if mode is AuthMode.TOKEN:
        if not settings.static_token:
            raise ConfigurationError("--auth token needs an access token in DEFGUARD_ENTRA_GRAPH_TOKEN")
        return CachingCredential(StaticTokenCredential(settings.static_token))

    import azure.identity as ai  # noqa: PLC0415 - 0.35 s: only when a command signs in

    authority = settings.authority
    discovery: dict[str, Any] = {} if settings.known_authority else {"disable_instance_discovery": True}
    env = settings.environment
    tenant = settings.tenant_id or env.get("AZURE_TENANT_ID")
    inner: TokenCredential
    if mode is AuthMode.ENVIRONMENT:
        client_id = settings.client_id or env.get("AZURE_CLIENT_ID")
        if not (tenant and client_id):
            raise ConfigurationError(
                "--auth environment needs AZURE_TENANT_ID and AZURE_CLIENT_ID (or --tenant-id/--client-id) plus "
                "AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE"
            )
        if settings.client_secret:
            inner = ai.ClientSecretCredential(
                tenant, client_id, settings.client_secret.value, authority=authority, **discovery
            )
        elif env.get("AZURE_CLIENT_CERTIFICATE_PATH"):
            inner = ai.CertificateCredential(
                tenant,
                client_id,
                env["AZURE_CLIENT_CERTIFICATE_PATH"],
                password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
                authority=authority,
                **discovery,
            )
        elif env.get("AZURE_FEDERATED_TOKEN_FILE"):
            inner = ai.WorkloadIdentityCredential(
                tenant_id=tenant,
                client_id=client_id,
                token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
                authority=authority,
                **discovery,
            )
        else:
            raise ConfigurationError(
                "--auth environment needs AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or "
                "AZURE_FEDERATED_TOKEN_FILE"
            )
    elif mode is AuthMode.MANAGED_IDENTITY:
        inner = (
            ai.ManagedIdentityCredential(client_id=settings.client_id)
            if settings.client_id
            else ai.ManagedIdentityCredential()
        )
    elif mode is AuthMode.AZURE_CLI:
        inner = ai.AzureCliCredential(tenant_id=tenant) if tenant else ai.AzureCliCredential()
    else:
        client_id = settings.client_id or GRAPH_CLI_CLIENT_ID
        common: dict[str, Any] = {
            "client_id": client_id,
            "tenant_id": tenant or "organizations",
            "authority": authority,
            **discovery,
        }
        device_only = mode is AuthMode.DEVICE_CODE or _headless(env)

        def user_credential(persist: bool) -> Any:
            options = dict(common)
            if persist:
                options["cache_persistence_options"] = ai.TokenCachePersistenceOptions(name=_CACHE_NAME)
            device = _device_code(ai, options, prompt)
            return (
                device if device_only else ai.ChainedTokenCredential(ai.InteractiveBrowserCredential(**options), device)
            )

        inner = MemoryCacheFallback(user_credential) if settings.token_cache else user_credential(False)
    return CachingCredential(inner)


def _device_code(ai: Any, common: dict[str, Any], prompt: Callable[[str], None] | None) -> Any:
    def _show(uri: str, code: str, expires_on: Any) -> None:  # noqa: ARG001
        message = f"To sign in to Microsoft Entra, open {uri} and enter the code {code}"
        if prompt is not None:
            prompt(message)
        else:
            log.warning("%s", message)

    return ai.DeviceCodeCredential(prompt_callback=_show, **common)


_NO_ENCRYPTION = "Cache encryption is impossible"


class MemoryCacheFallback:
    """Remember sign-ins in the platform's encrypted store (DPAPI, Keychain, libsecret); where there is none, keep
    tokens in memory only (never in plain text on disk).

    azure-identity finds out only at the first ``get_token`` (``ValueError``, or a ``ClientAuthenticationError``
    carrying it when chained), so the switch happens there, once.
    """

    def __init__(self, make: Callable[[bool], Any]) -> None:
        self._make = make
        self._inner = make(True)
        self.persistent = True

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            token: AccessToken = self._inner.get_token(*scopes, **kwargs)
        except (ValueError, ClientAuthenticationError) as exc:
            if not self.persistent or _NO_ENCRYPTION not in str(exc):
                raise
            log.info("no encrypted token cache on this system: sign-in will not be remembered between runs")
            close_quietly(self._inner)
            self._inner = self._make(False)
            self.persistent = False
            token = self._inner.get_token(*scopes, **kwargs)
        return token

    def close(self) -> None:
        close_quietly(self._inner)


def close_quietly(credential: Any) -> None:
    """Close a credential that has a ``close()`` (azure-identity's hold an HTTP pipeline); others need nothing."""
    close = getattr(credential, "close", None)
    if callable(close):
        close()


def _headless(env: Any) -> bool:
    """SSH sessions and Linux without a display cannot open a browser: use the device code straight away."""
    import sys  # noqa: PLC0415

    if env.get("SSH_CONNECTION"):
        return True
    return sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


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
_TOOL_MESSAGES = ("not found on path", "is not recognized", "failed to execute", "failed to invoke")
_SIGNED_OUT_MESSAGES = ("az login", "no accounts were found", "expired")  # AzureCliCredential, MSAL's cache


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


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of an access token that is a JWT (not verified: a hint, never a proof); ``None`` otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        return None
    return claims if isinstance(claims, dict) else None
