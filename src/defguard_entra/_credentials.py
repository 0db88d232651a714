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
from pathlib import Path
from typing import Any

import attrs
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from ._sign_in_record import CACHE_FILES, CACHE_NAME, Forgotten, RecordKey, RecordStore
from ._user_sign_in import UserSignIn
from .config import GRAPH_CLI_CLIENT_ID, AuthMode, GraphSettings
from .exceptions import ConfigurationError, EntraAuthError
from .models import Secret

__all__ = [
    "APP_ONLY_MODES",
    "NOT_REMEMBERED",
    "CachingCredential",
    "SignedOut",
    "StaticTokenCredential",
    "build_credential",
    "close_quietly",
    "connection_cause",
    "encrypted_cache_available",
    "graph_scopes",
    "jwt_claims",
    "sign_in_cause",
    "sign_out",
]

log = logging.getLogger(__name__)

APP_ONLY_MODES = frozenset({AuthMode.ENVIRONMENT, AuthMode.MANAGED_IDENTITY, AuthMode.AZURE_CLI, AuthMode.TOKEN})
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
            inner = ai.ClientSecretCredential(tenant, client_id, settings.client_secret.value, authority=authority)
        elif env.get("AZURE_CLIENT_CERTIFICATE_PATH"):
            inner = ai.CertificateCredential(
                tenant,
                client_id,
                env["AZURE_CLIENT_CERTIFICATE_PATH"],
                password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
                authority=authority,
            )
        elif env.get("AZURE_FEDERATED_TOKEN_FILE"):
            inner = ai.WorkloadIdentityCredential(
                tenant_id=tenant,
                client_id=client_id,
                token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
                authority=authority,
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
        inner = _user_credential(ai, settings, {"authority": authority, **discovery}, tenant, prompt)
    return CachingCredential(inner)


#: Said once, where the platform has no encrypted store for the token cache and none was opted out of.
NOT_REMEMBERED = (
    "Sign-in is not remembered between runs: this system has no encrypted store for the token cache "
    "(on Linux, libsecret and a running keyring); install one, or pass --token-cache unencrypted to keep it in "
    "an owner-only plain file (anyone who can read it can act as you until it expires)."
)


def _user_credential(
    ai: Any, settings: GraphSettings, where: dict[str, Any], tenant: str | None, prompt: Callable[[str], None] | None
) -> Any:
    """Browser (device code where there is no display, or when the browser does not answer), remembered between
    runs through the persistent cache and a saved ``AuthenticationRecord`` keyed by authority, tenant and client."""
    client_id = settings.client_id or GRAPH_CLI_CLIENT_ID
    # ``where``: the authority (and ``disable_instance_discovery`` for a host that is not Microsoft's).
    common: dict[str, Any] = {"client_id": client_id, "tenant_id": tenant or "organizations", **where}
    device_only = settings.resolved_auth() is AuthMode.DEVICE_CODE or _headless(settings.environment)
    key = RecordKey(common["authority"], common["tenant_id"], client_id)
    store = RecordStore(settings.sign_in_dir) if settings.sign_in_dir is not None else None
    notice = prompt or log.warning

    def make(persist: bool) -> UserSignIn:
        options = {**common, "disable_automatic_authentication": True}
        saved = store.load(key) if persist and store is not None else None
        if persist:
            options["cache_persistence_options"] = ai.TokenCachePersistenceOptions(
                name=CACHE_NAME, allow_unencrypted_storage=settings.unencrypted_token_cache
            )
            if saved is not None:  # its authority and client id are ours (RecordKey.matches); azure-identity
                # takes both from the record and refuses an ``authority`` given beside it
                options["authentication_record"] = ai.AuthenticationRecord.deserialize(saved)
                del options["authority"]

        def save(record: Any) -> None:
            if store is not None:
                store.save(key, record.serialize())

        browser = None if device_only else ai.InteractiveBrowserCredential(timeout=settings.browser_timeout, **options)
        return UserSignIn(
            browser,
            _device_code(ai, options, prompt),
            remembered=saved is not None,
            save=save if persist and store is not None else None,
            notice=notice,
            browser_timeout=settings.browser_timeout,
            unavailable=ai.CredentialUnavailableError,
            required=ai.AuthenticationRequiredError,
        )

    if not settings.token_cache:
        return make(False)
    if not settings.unencrypted_token_cache and encrypted_cache_available() is False:
        notice(NOT_REMEMBERED)
        return make(False)
    return MemoryCacheFallback(make, notice)


def encrypted_cache_available() -> bool | None:
    """Whether azure-identity can keep this tool's token cache encrypted here; ``None`` when it cannot be told
    (then the first sign-in finds out: :class:`MemoryCacheFallback`).

    Asked of azure-identity's own loader (``azure.identity._persistent_cache``, not a public API: 1.27.0), so that
    the answer is the one the sign-in will meet (DPAPI on Windows, Keychain on macOS, libsecret on Linux)."""
    try:
        from azure.identity import TokenCachePersistenceOptions  # noqa: PLC0415
        from azure.identity._persistent_cache import _load_persistent_cache  # noqa: PLC0415
    except ImportError:
        return None
    try:
        _load_persistent_cache(TokenCachePersistenceOptions(name=CACHE_NAME))
    except (ValueError, NotImplementedError):
        return False
    except Exception:
        log.debug("cannot tell whether the token cache can be encrypted", exc_info=True)
        return None
    return True


@attrs.frozen
class SignedOut:
    """What :func:`sign_out` removed: the remembered sign-ins, the accounts in the token cache, the cache files."""

    records: tuple[Forgotten, ...]
    accounts: tuple[str, ...]
    files: tuple[Path, ...]
    problems: tuple[str, ...] = ()


def sign_out(directory: Path | None) -> SignedOut:
    """Forget every sign-in of this tool: its records in ``directory``, the accounts and tokens in its own named
    token cache (encrypted or not), and the cache's files in ``directory``. Never another tool's cache."""
    records = tuple(RecordStore(directory).forget_all()) if directory is not None else ()
    accounts: set[str] = set()
    problems: list[str] = []
    try:
        from azure.identity import TokenCachePersistenceOptions  # noqa: PLC0415
        from azure.identity._persistent_cache import _load_persistent_cache  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - azure-identity moved its loader: the files still go
        problems.append(f"cannot open the token cache: {exc}")
    else:
        options = TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=True)
        # The cache's file (the data, or the marker of a keyring entry) exists once anything was cached: without
        # it there is nothing to clear, and opening the cache would create the directory.
        present = directory is None or any((directory / name).exists() for name in CACHE_FILES)
        for cae in (False, True) if present else ():
            try:
                accounts |= _empty(_load_persistent_cache(options, is_cae=cae))
            except Exception as exc:  # noqa: BLE001 - a keyring that will not open: say so, delete the files
                problems.append(f"cannot clear the token cache: {_first_line(str(exc))}")
    files: list[Path] = []
    for name in CACHE_FILES if directory is not None else ():
        path = directory / name  # type: ignore[operator]  # directory is not None here
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"cannot delete {path}: {exc.strerror or exc}")
            continue
        files.append(path)
    return SignedOut(records, tuple(sorted(accounts)), tuple(files), tuple(dict.fromkeys(problems)))


def _empty(cache: Any) -> set[str]:
    """Remove every account, refresh, access and ID token from an MSAL token cache (msal 1.x ``TokenCache``'s
    ``search`` and ``remove_*``: they work offline, unlike ``ClientApplication.remove_account``, whose app first
    fetches the authority's metadata); the accounts' user names."""
    kind = cache.CredentialType
    usernames = {str(a.get("username") or a.get("home_account_id")) for a in cache.search(kind.ACCOUNT)}
    for remove, credential_type in (
        (cache.remove_rt, kind.REFRESH_TOKEN),
        (cache.remove_at, kind.ACCESS_TOKEN),
        (cache.remove_idt, kind.ID_TOKEN),
        (cache.remove_account, kind.ACCOUNT),
    ):
        for item in list(cache.search(credential_type)):
            remove(item)
    return usernames


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

    def __init__(self, make: Callable[[bool], Any], notice: Callable[[str], None] | None = None) -> None:
        self._make = make
        self._notice = notice
        self._inner = make(True)
        self.persistent = True

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            token: AccessToken = self._inner.get_token(*scopes, **kwargs)
        except (ValueError, ClientAuthenticationError) as exc:
            if not self.persistent or _NO_ENCRYPTION not in str(exc):
                raise
            (self._notice or log.warning)(NOT_REMEMBERED)
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
