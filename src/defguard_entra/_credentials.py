"""Microsoft Entra sign-in: the one module that imports ``azure.identity``.

:func:`build_credential` turns :class:`~defguard_entra.config.GraphSettings` into an azure-identity credential,
wrapped so that a token is fetched once and reused until shortly before it expires (kiota asks for a token on every
request). :class:`AsyncCredential` gives kiota and the client an awaitable ``get_token`` over it, or over a
caller's ``AsyncTokenCredential``: a cached token comes back at once, a refresh runs in a worker thread so that it
never blocks the event loop. Nothing here reads ``os.environ``: the CLI hands the relevant variables over in
``GraphSettings.environment`` (azure-identity's managed identity reads ``os.environ`` itself).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from ._sign_in_errors import connection_cause, sign_in_cause, sign_in_error
from ._sign_in_record import CACHE_NAME, RecordKey, RecordStore, SignedOut, forget_sign_ins
from ._user_sign_in import UserSignIn
from .config import GRAPH_CLI_CLIENT_ID, AuthMode, GraphSettings
from .exceptions import ConfigurationError
from .models import Secret

__all__ = [
    "APP_ONLY_MODES",
    "NOT_REMEMBERED",
    "AsyncCredential",
    "CachingCredential",
    "SignedOut",
    "StaticTokenCredential",
    "build_credential",
    "close_quietly",
    "connection_cause",
    "encrypted_cache_available",
    "graph_scopes",
    "is_async_credential",
    "jwt_claims",
    "sign_in_cause",
    "sign_out",
]

log = logging.getLogger(__name__)

APP_ONLY_MODES = frozenset({AuthMode.ENVIRONMENT, AuthMode.MANAGED_IDENTITY, AuthMode.TOKEN})
_REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is renewed
T = TypeVar("T")


class StaticTokenCredential:
    """A credential that returns one access token given up front (``--auth token``)."""

    def __init__(self, token: Secret, lifetime: float = 3600.0) -> None:
        self._token = token
        self._expires = int(time.time() + lifetime)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:  # noqa: ARG002 - the protocol's signature
        return AccessToken(self._token.value, self._expires)

    def __repr__(self) -> str:
        return "StaticTokenCredential(***)"


def _fresh(token: AccessToken | None, claims: object) -> AccessToken | None:
    """``token`` while it has more than the refresh margin left (and no claims challenge asks for a new one)."""
    if token is not None and not claims and token.expires_on - _REFRESH_MARGIN > time.time():
        return token
    return None


class CachingCredential:
    """Wrap any ``get_token`` credential: one token per scope set, renewed 5 minutes before it expires.

    Thread-safe; whatever the wrapped credential raises (``ClientAuthenticationError``, ``ValueError``,
    ``ServiceRequestError``, …) becomes one :class:`EntraAuthError` line with its cause and fix. ``where`` names
    the endpoint a transport failure could not reach.
    """

    def __init__(self, inner: Any, *, where: str = "the Microsoft Entra sign-in endpoint") -> None:
        self.inner = inner
        self.where = where
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], AccessToken] = {}

    def cached(self, *scopes: str, **kwargs: Any) -> AccessToken | None:
        """The cached token for ``scopes`` when it is still fresh, else ``None`` (never calls the credential)."""
        return _fresh(self._cache.get(tuple(sorted(scopes))), kwargs.get("claims"))

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        key = tuple(sorted(scopes))
        with self._lock:
            cached = _fresh(self._cache.get(key), kwargs.get("claims"))
            if cached is not None:
                return cached
            try:
                token: AccessToken = self.inner.get_token(*scopes, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every SDK failure becomes one line (never an interrupt)
                raise sign_in_error(exc, where=self.where) from None
            self._cache[key] = token
            return token

    def close(self) -> None:
        close_quietly(self.inner)

    def __repr__(self) -> str:
        return f"CachingCredential({type(self.inner).__name__})"


def is_async_credential(credential: Any) -> bool:
    """Whether ``credential.get_token`` is a coroutine function (an ``AsyncTokenCredential``)."""
    return inspect.iscoroutinefunction(getattr(credential, "get_token", None))


async def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in a daemon thread of its own, awaited without blocking the event loop.

    Not ``asyncio.to_thread``: its pool threads are joined when the loop shuts down and when the interpreter
    exits, so an abandoned interactive sign-in (Ctrl-C) would hold the process until its 300 s timeout. Cancelling
    the await abandons the call; its result, if it ever comes, is dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=work, daemon=True, name="entra-sign-in").start()
    return await future


class AsyncCredential:
    """An awaitable ``get_token`` (what kiota's ``AzureIdentityAccessTokenProvider`` awaits when the result is
    awaitable) over a sync credential or an ``azure.core.credentials_async.AsyncTokenCredential``.

    A sync credential is wrapped in :class:`CachingCredential` (unless it is one): a fresh cached token returns at
    once, a refresh runs in a worker thread (:func:`off_loop`). An async credential is awaited; its errors become
    :class:`EntraAuthError` lines too. ``owns``: :meth:`close` closes the wrapped credential (only ours are).
    """

    def __init__(self, inner: Any, *, owns: bool = False) -> None:
        self.is_async = is_async_credential(inner)
        self._sync = None if self.is_async or isinstance(inner, CachingCredential) else CachingCredential(inner)
        self.inner = inner
        self._owns = owns
        self._cache: dict[tuple[str, ...], AccessToken] = {}

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if not self.is_async:
            sync: CachingCredential = self._sync or self.inner
            cached = sync.cached(*scopes, **kwargs)
            return cached if cached is not None else await off_loop(sync.get_token, *scopes, **kwargs)
        key = tuple(sorted(scopes))
        fresh = _fresh(self._cache.get(key), kwargs.get("claims"))
        if fresh is not None:
            return fresh
        try:
            token: AccessToken = await self.inner.get_token(*scopes, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes one line
            raise sign_in_error(exc) from None
        self._cache[key] = token
        return token

    async def close(self) -> None:
        """Close the wrapped credential when it is ours (``owns``); a borrowed one is left open."""
        if not self._owns:
            return
        self._owns = False
        if self.is_async:
            close = getattr(self.inner, "close", None)
            if callable(close):
                result = close()
                if inspect.isawaitable(result):
                    await result
        else:
            close_quietly(self.inner)

    def __repr__(self) -> str:
        return f"AsyncCredential({self.inner!r})"


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
    """The credential for ``settings.auth``; ``prompt`` shows device-code instructions (the library never prints).

    Raises :class:`ConfigurationError` for missing settings and :class:`EntraAuthError` for what azure-identity
    refuses while building the credential (a tenant id with invalid characters, a certificate it cannot read)."""
    mode = settings.validate().resolved_auth()  # refuses azure-cli, and token without one
    if mode is AuthMode.TOKEN and settings.static_token is not None:
        return CachingCredential(StaticTokenCredential(settings.static_token))

    import azure.identity as ai  # noqa: PLC0415 - 0.35 s: only when a command signs in

    try:
        if mode is AuthMode.ENVIRONMENT:
            return CachingCredential(_service_principal(ai, settings))
        if mode is AuthMode.MANAGED_IDENTITY:
            env = settings.environment
            endpoint = env.get("IDENTITY_ENDPOINT") or env.get("MSI_ENDPOINT")
            where = f"the managed-identity endpoint {endpoint}" if endpoint else "the managed-identity endpoint (IMDS)"
            inner = (
                ai.ManagedIdentityCredential(client_id=settings.client_id)
                if settings.client_id
                else ai.ManagedIdentityCredential()
            )
            return CachingCredential(inner, where=where)
        tenant = settings.tenant_id or settings.environment.get("AZURE_TENANT_ID")
        return CachingCredential(_user_credential(ai, settings, _authority(settings), tenant, prompt))
    except (ConfigurationError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - what azure-identity refuses at construction: one line
        raise sign_in_error(exc) from None


def _service_principal(ai: Any, settings: GraphSettings) -> TokenCredential:
    """``--auth environment``: a client secret, a certificate, or workload identity's federated token file."""
    where = _authority(settings)
    env = settings.environment
    tenant = settings.tenant_id or env.get("AZURE_TENANT_ID")
    client_id = settings.client_id or env.get("AZURE_CLIENT_ID")
    if not (tenant and client_id):
        raise ConfigurationError(
            "--auth environment needs AZURE_TENANT_ID and AZURE_CLIENT_ID (or --tenant-id/--client-id) plus "
            "AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE"
        )
    if settings.client_secret:
        return ai.ClientSecretCredential(tenant, client_id, settings.client_secret.value, **where)  # type: ignore[no-any-return]
    if env.get("AZURE_CLIENT_CERTIFICATE_PATH"):
        return ai.CertificateCredential(  # type: ignore[no-any-return]
            tenant,
            client_id,
            env["AZURE_CLIENT_CERTIFICATE_PATH"],
            password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            **where,
        )
    if env.get("AZURE_FEDERATED_TOKEN_FILE"):
        return ai.WorkloadIdentityCredential(  # type: ignore[no-any-return]
            tenant_id=tenant,
            client_id=client_id,
            token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
            **where,
        )
    raise ConfigurationError(
        "--auth environment needs AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE"
    )


def _authority(settings: GraphSettings) -> dict[str, Any]:
    """The sign-in authority's keywords: its host (``AZURE_AUTHORITY_HOST``, else ``--cloud``'s), and no instance
    discovery for a host that is not one of Microsoft's (MSAL would ask login.microsoftonline.com about it)."""
    discovery: dict[str, Any] = {} if settings.known_authority else {"disable_instance_discovery": True}
    return {"authority": settings.authority, **discovery}


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


def sign_out(directory: Path | None) -> SignedOut:
    """Forget every sign-in of this tool: its records in ``directory``, the accounts and tokens in its own named
    token cache (encrypted or not), and the cache's files in ``directory``. Never another tool's cache."""
    return forget_sign_ins(directory, _open_token_caches)


def _open_token_caches() -> list[Any]:
    """This tool's token caches (without and with CAE), opened as the sign-in opens them: azure-identity's own
    loader (``azure.identity._persistent_cache``, not a public API: 1.27.0), unencrypted allowed so that a plain
    file cache can be cleared too."""
    from azure.identity import TokenCachePersistenceOptions  # noqa: PLC0415
    from azure.identity._persistent_cache import _load_persistent_cache  # noqa: PLC0415

    options = TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=True)
    return [_load_persistent_cache(options, is_cae=cae) for cae in (False, True)]


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
