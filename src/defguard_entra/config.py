"""Settings: everything a run needs, validated once. :meth:`Settings.from_env` is the only reader of the environment.

The CLI builds a :class:`Settings` from the environment, then overrides it with flags (``attrs.evolve``); library
users build one directly. Validation happens in :meth:`Settings.validate`, before any request is sent.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import math
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import attrs

from ._retry import RetryPolicy
from .exceptions import ConfigurationError
from .models import Secret

__all__ = [
    "DEFAULT_ATTRIBUTE_SET",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_GRAPH_WRITE_RATE",
    "GRAPH_CLI_CLIENT_ID",
    "AuthMode",
    "Cloud",
    "GraphSettings",
    "Settings",
    "is_loopback_url",
    "proxy_for",
    "validate_attribute_set_name",
    "validate_defguard_url",
    "validate_graph_url",
    "validate_group_id",
    "validate_group_name",
    "validate_seconds",
]

DEFAULT_ATTRIBUTE_SET = "Defguard"
#: The most Defguard token requests in flight (``--concurrency``): the ceiling of a limit that starts at 16 and
#: adapts to the server's answers (``_defguard_pace.Gate``).
DEFAULT_CONCURRENCY = 32
#: The most Graph writes a second (``--graph-write-rate``): 0, no ceiling. Writes start at full speed and slow down
#: only when Graph says so (``_batch.RateLimiter``).
DEFAULT_GRAPH_WRITE_RATE = 0.0
#: Microsoft Graph Command Line Tools: the public client ``Connect-MgGraph`` (and so the PowerShell script) uses.
GRAPH_CLI_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"
#: Graph's limit on the requests in one JSON ``$batch``.
BATCH_LIMIT = 20
#: Graph's limit on a custom security attribute's string value.
ATTRIBUTE_VALUE_LIMIT = 64


class Cloud(enum.StrEnum):
    """National clouds: each has its own Graph root and sign-in authority."""

    GLOBAL = "global"
    USGOV = "usgov"
    USGOV_DOD = "usgov-dod"
    CHINA = "china"

    @property
    def graph_root(self) -> str:
        return _CLOUDS[self][0]

    @property
    def authority(self) -> str:
        return _CLOUDS[self][1]


_CLOUDS = {
    Cloud.GLOBAL: ("https://graph.microsoft.com", "login.microsoftonline.com"),
    Cloud.USGOV: ("https://graph.microsoft.us", "login.microsoftonline.us"),
    Cloud.USGOV_DOD: ("https://dod-graph.microsoft.us", "login.microsoftonline.us"),
    Cloud.CHINA: ("https://microsoftgraph.chinacloudapi.cn", "login.chinacloudapi.cn"),
}


class AuthMode(enum.StrEnum):
    """How to sign in to Microsoft Graph (see ``docs/entra-setup.md``)."""

    AUTO = "auto"
    INTERACTIVE = "interactive"
    DEVICE_CODE = "device-code"
    ENVIRONMENT = "environment"
    MANAGED_IDENTITY = "managed-identity"
    AZURE_CLI = "azure-cli"
    TOKEN = "token"  # noqa: S105 - a mode name, not a secret


_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")


def validate_attribute_set_name(name: str) -> str:
    """Entra's rule: 1–32 letters and digits, not starting with a digit."""
    if not _ATTRIBUTE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"--attribute-set-name {name!r} is not a name Entra accepts: use 1 to 32 letters and digits, "
            "starting with a letter (no spaces, '_' or '-')"
        )
    return name


#: Longest group name accepted: far above Entra's 256-character displayName, so only pasted garbage is refused.
GROUP_NAME_LIMIT = 1000
#: An Entra object id: a GUID.
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def validate_group_id(group_id: object, group_source: str) -> str:
    """``group_id=`` as text: a Defguard group's id (a positive integer) or an Entra group's object id (a GUID)."""
    if group_source == "entra":
        if not isinstance(group_id, str) or not _GUID.fullmatch(group_id.strip()):
            raise ConfigurationError(
                f"group_id must be the Entra group's object id (a GUID such as 00000000-0000-0000-0000-000000000000)"
                f", not {str(group_id)[:60]!r}: copy it from the group's overview in the Entra admin center"
            )
        return group_id.strip().lower()
    text = str(group_id).strip() if isinstance(group_id, int | str) and not isinstance(group_id, bool) else ""
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise ConfigurationError(
            f"group_id must be the Defguard group's id (a positive whole number), not {str(group_id)[:60]!r}: "
            "the ids are listed by GET /api/v1/group-info (or pass group_source='entra' for an Entra object id)"
        )
    return str(int(text))


def validate_group_name(name: str) -> str:
    """A group name as typed: not blank, at most :data:`GROUP_NAME_LIMIT` characters, no control characters.

    The name is not echoed back (it may be something pasted by mistake)."""
    if not name.strip():
        raise ConfigurationError("--group-name is empty: give the name of the group")
    if len(name) > GROUP_NAME_LIMIT:
        raise ConfigurationError(
            f"--group-name is {len(name):,} characters long, more than the {GROUP_NAME_LIMIT:,} allowed: "
            "give the group's name (was something else pasted?)"
        )
    for position, char in enumerate(name, 1):
        if unicodedata.category(char) == "Cc":
            raise ConfigurationError(
                f"--group-name contains a control character (U+{ord(char):04X} at position {position}): "
                "give the group's name as Defguard or Entra shows it"
            )
    return name


def validate_defguard_url(url: str, *, allow_insecure_http: bool = True) -> str:
    """Check a Defguard base URL and return it without trailing slashes; raise :class:`ConfigurationError`.

    With ``allow_insecure_http=False`` (what :meth:`Settings.validate` passes unless
    :attr:`Settings.allow_insecure_http` is set) ``http://`` is accepted only for a loopback host."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ConfigurationError(f"--url {url!r} must start with https://, e.g. https://defguard.example.com")
    if not parts.hostname:
        raise ConfigurationError(f"--url {url!r} has no host name, e.g. https://defguard.example.com")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"--url {url!r} uses http:// on a non-loopback host, which sends the API token and the enrollment "
            "tokens unencrypted: use https:// (or pass --allow-insecure-http if you must)"
        )
    if parts.username or parts.password:
        raise ConfigurationError("--url must not contain a user name or password: pass the API token instead")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"--url {url!r} must not contain '?' or '#': give the Defguard base URL only")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigurationError(f"--url {url!r} has an invalid port") from None
    return text.rstrip("/")


#: Upper bound for durations in seconds (a day): beyond it, socket and sleep calls overflow, and nobody means it.
SECONDS_LIMIT = 86400.0


def validate_seconds(option: str, value: float, *, zero: str | None = None, unit: str = "seconds") -> float:
    """A finite, positive number (``0`` too when ``zero`` says what it means), at most :data:`SECONDS_LIMIT` for
    durations; raise :class:`ConfigurationError` naming ``option``."""
    allowed = f"0 ({zero}) or a positive number of {unit}" if zero else f"a positive number of {unit}"
    if not math.isfinite(value) or value < 0 or (value == 0 and zero is None):
        raise ConfigurationError(f"{option} {value:g} is not allowed: give {allowed}")
    if unit == "seconds" and value > SECONDS_LIMIT:
        raise ConfigurationError(f"{option} {value:g} is more than a day: give at most {SECONDS_LIMIT:g} seconds")
    return value


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy to use for ``url`` given ``{"http", "https", "no"}`` settings (``NO_PROXY`` semantics)."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy or not parts.hostname:
        return None
    if _is_loopback(parts.hostname):
        return None
    host = parts.hostname.lower()
    for entry in (e.strip().lower() for e in proxies.get("no", "").split(",")):
        name = entry.split(":", 1)[0].lstrip(".") if not entry.startswith("[") else entry
        if entry == "*" or (name and (host == name or host.endswith("." + name))):
            return None
    return proxy


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is ``localhost``, in 127.0.0.0/8 or ``::1``."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return False
    return bool(host) and _is_loopback(host or "")


def validate_graph_url(url: str) -> str:
    """A Graph API base URL including the version segment, e.g. ``https://graph.microsoft.us/v1.0``."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ConfigurationError(f"--graph-url {url!r} must be a URL like https://graph.microsoft.com/v1.0")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"--graph-url {url!r} uses http:// on a non-loopback host: use https:// (http is only for local emulators)"
        )
    if not re.fullmatch(r"/(v1\.0|beta)", parts.path or ""):
        raise ConfigurationError(
            f"--graph-url {url!r} must end with the API version, e.g. {parts.scheme}://{parts.netloc}/v1.0"
        )
    if parts.query or parts.fragment or parts.username:
        raise ConfigurationError(f"--graph-url {url!r} must not carry a query, fragment or credentials")
    return text


#: Microsoft's sign-in hosts (MSAL 1.39 ``authority.py`` ``WELL_KNOWN_AUTHORITY_HOSTS``): for any other host
#: (a private cloud, a local emulator) MSAL's instance discovery would ask login.microsoftonline.com about it, so
#: sign-in turns instance discovery off.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
        "login-us.microsoftonline.com",
        "login.microsoftonline.us",
        "login.usgovcloudapi.net",
        "login.sovcloud-identity.fr",
        "login.sovcloud-identity.de",
        "login.sovcloud-identity.sg",
    }
)


def validate_authority_host(value: str) -> str:
    """``AZURE_AUTHORITY_HOST``: a host (``login.microsoftonline.us``) or an ``https://`` URL without a path."""
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query or parts.username:
        raise ConfigurationError(
            f"AZURE_AUTHORITY_HOST {value!r} must be an https:// sign-in host like https://login.microsoftonline.us"
        )
    return text.rstrip("/")


def _optional_secret(value: Secret | str | None) -> Secret | None:
    """The attrs converter for optional secrets: a plain string becomes a :class:`Secret`; empty means none."""
    if value is None or isinstance(value, Secret):
        return value or None
    return Secret(value) if value else None


@attrs.frozen
class GraphSettings:
    """How to reach and sign in to Microsoft Graph.

    ``client_secret`` is the service principal's secret (``AZURE_CLIENT_SECRET``): a :class:`Secret`, never shown
    by ``repr``; a plain string is accepted. Given in ``environment`` instead (as azure-identity's variable), it
    is moved here, so that the settings hold it in one place only.
    """

    auth: AuthMode = AuthMode.AUTO
    tenant_id: str | None = None
    client_id: str | None = None
    cloud: Cloud = Cloud.GLOBAL
    graph_url: str | None = None  # overrides the cloud's root; includes /v1.0
    #: The sign-in host (``AZURE_AUTHORITY_HOST``): overrides the cloud's authority, e.g. a private cloud's.
    authority_host: str | None = None
    static_token: Secret | None = None  # DEFGUARD_ENTRA_GRAPH_TOKEN
    #: Remember a user's sign-in between runs in the platform's encrypted store (DPAPI, Keychain, libsecret);
    #: ``False``: in memory only (``--token-cache memory``).
    token_cache: bool = True
    #: Where the platform has no encrypted store, keep the token cache in a plain owner-only file instead of in
    #: memory only (``--token-cache unencrypted``; what the Azure CLI does on Linux). Anyone who can read the file
    #: can act as the user until the refresh token expires.
    unencrypted_token_cache: bool = False
    #: The directory the record of the last sign-in is kept in (azure-identity's cache directory; see
    #: ``default_identity_dir``); ``None``: a sign-in is not remembered between processes.
    sign_in_dir: Path | None = None
    #: Seconds a browser sign-in may take before the device code is used instead (``--browser-timeout``).
    browser_timeout: float = 60.0
    # Environment needed by azure-identity's EnvironmentCredential / workload identity; passed explicitly so that
    # nothing below the CLI reads os.environ.
    environment: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    proxies: Mapping[str, str] = attrs.field(factory=dict)  # {"http"|"https"|"no": value}, from *_PROXY
    client_secret: Secret | None = attrs.field(default=None, converter=_optional_secret, repr=False)

    def __attrs_post_init__(self) -> None:
        if "AZURE_CLIENT_SECRET" in self.environment:
            environment = dict(self.environment)
            secret = _optional_secret(environment.pop("AZURE_CLIENT_SECRET"))
            object.__setattr__(self, "environment", environment)  # frozen: the constructor's own normalisation
            object.__setattr__(self, "client_secret", self.client_secret or secret)

    @property
    def proxy(self) -> str | None:
        """The proxy for the Graph host, honouring ``no``; ``None`` for a direct connection."""
        return proxy_for(self.base_url, self.proxies)

    @property
    def base_url(self) -> str:
        return self.graph_url or f"{self.cloud.graph_root}/v1.0"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def resource(self) -> str:
        """Scope root: ``https://graph.microsoft.com`` (for ``/.default`` and delegated scopes)."""
        if self.graph_url and _is_loopback(self.host):
            return self.cloud.graph_root
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def authority(self) -> str:
        """The sign-in authority: ``authority_host`` when set, else the cloud's (``login.microsoftonline.com``)."""
        return self.authority_host.strip().rstrip("/") if self.authority_host else self.cloud.authority

    @property
    def known_authority(self) -> bool:
        """Whether :attr:`authority` is one of Microsoft's hosts (else instance discovery must be off)."""
        text = self.authority
        host = urlsplit(text if "://" in text else f"https://{text}").hostname or ""
        return host.lower() in KNOWN_AUTHORITY_HOSTS

    def resolved_auth(self) -> AuthMode:
        """``auto`` made concrete: a static token, else a service principal from ``AZURE_*``, else the platform's
        managed identity where the platform announces one (``IDENTITY_ENDPOINT``: App Service, Functions, Container
        Apps, Arc; ``MSI_ENDPOINT``: Cloud Shell, older App Service), else interactive. No IMDS probe: a VM has no
        such variable and a probe is a network wait on every other machine (pass ``managed-identity`` there)."""
        if self.auth is not AuthMode.AUTO:
            return self.auth
        if self.static_token:
            return AuthMode.TOKEN
        env = self.environment
        if (
            (self.client_id or env.get("AZURE_CLIENT_ID"))
            and (self.tenant_id or env.get("AZURE_TENANT_ID"))
            and (
                self.client_secret or env.get("AZURE_CLIENT_CERTIFICATE_PATH") or env.get("AZURE_FEDERATED_TOKEN_FILE")
            )
        ):
            return AuthMode.ENVIRONMENT
        if env.get("IDENTITY_ENDPOINT") or env.get("MSI_ENDPOINT"):
            return AuthMode.MANAGED_IDENTITY
        return AuthMode.INTERACTIVE

    def validate(self) -> Self:
        if self.graph_url is not None:
            validate_graph_url(self.graph_url)
        validate_seconds("--browser-timeout", self.browser_timeout)
        if self.authority_host is not None:
            validate_authority_host(self.authority_host)
        mode = self.resolved_auth()
        if mode is AuthMode.TOKEN and not self.static_token:
            raise ConfigurationError("--auth token needs an access token in DEFGUARD_ENTRA_GRAPH_TOKEN")
        if mode is AuthMode.AZURE_CLI:
            raise ConfigurationError(_AZURE_CLI_REFUSAL)
        return self


#: Why ``--auth azure-cli`` is refused (docs/entra-setup.md, "Sign-in modes"): every command reads or writes the
#: custom security attributes, and the Azure CLI's first-party app cannot be granted those permissions.
_AZURE_CLI_REFUSAL = (
    "--auth azure-cli cannot be used: the Azure CLI's own app cannot be granted the "
    "CustomSecAttributeAssignment permissions every command needs (Microsoft fixes that app's Graph permissions, "
    "and Directory.* does not cover custom security attributes); use --auth interactive or device-code to sign in "
    "as yourself, or --auth environment or managed-identity for an app"
)


def _retry_default() -> RetryPolicy:
    return RetryPolicy()


@attrs.frozen
class Settings:
    """Everything ``provision`` and friends need. Build with keywords, or :meth:`from_env` and ``attrs.evolve``."""

    defguard_url: str | None = None
    defguard_token: Secret | None = attrs.field(default=None, repr=False)
    ca_bundle: str | None = None
    attribute_set: str = DEFAULT_ATTRIBUTE_SET
    token_lifetime: dt.timedelta | None = None
    graph: GraphSettings = attrs.field(factory=GraphSettings)
    timeout: float = 30.0
    concurrency: int = DEFAULT_CONCURRENCY
    graph_write_rate: float = DEFAULT_GRAPH_WRITE_RATE  # the most PATCHes per second; 0: no ceiling
    retry: RetryPolicy = attrs.field(factory=_retry_default)
    proxies: Mapping[str, str] = attrs.field(factory=dict)  # {"http"|"https"|"no": value}, from *_PROXY
    #: ``http://`` to a Defguard that is not on loopback: refused unless this is set (``--allow-insecure-http``).
    allow_insecure_http: bool = False
    #: Seconds of silence from both services that end a provision run (``--stall-timeout``); ``None``: derived
    #: from the timeouts and the retry policy (see :meth:`ProvisioningService.stall_limit`).
    stall_timeout: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Read ``DEFGUARD_URL``, ``DEFGUARD_API_TOKEN``, ``DEFGUARD_ENTRA_GRAPH_TOKEN``,
        ``DEFGUARD_ENTRA_GRAPH_URL`` and the standard ``AZURE_*`` variables from ``environ`` (a mapping);
        ``AZURE_CLIENT_SECRET`` becomes :attr:`GraphSettings.client_secret`."""
        token = environ.get("DEFGUARD_API_TOKEN")
        graph_token = environ.get("DEFGUARD_ENTRA_GRAPH_TOKEN")
        azure = {
            k: v
            for k, v in environ.items()
            if k.startswith(("AZURE_", "IDENTITY_", "MSI_")) and k != "AZURE_CLIENT_SECRET"
        }
        azure |= {k: environ[k] for k in ("SSH_CONNECTION", "DISPLAY", "WAYLAND_DISPLAY") if environ.get(k)}
        proxies = {
            scheme: value
            for scheme in ("http", "https", "no")
            if (value := environ.get(f"{scheme.upper()}_PROXY") or environ.get(f"{scheme}_proxy"))
        }
        return cls(
            defguard_url=environ.get("DEFGUARD_URL") or None,
            defguard_token=Secret(token.strip()) if token and token.strip() else None,
            graph=GraphSettings(
                tenant_id=environ.get("AZURE_TENANT_ID") or None,
                client_id=environ.get("AZURE_CLIENT_ID") or None,
                graph_url=environ.get("DEFGUARD_ENTRA_GRAPH_URL") or None,
                authority_host=environ.get("AZURE_AUTHORITY_HOST", "").strip() or None,
                static_token=Secret(graph_token.strip()) if graph_token and graph_token.strip() else None,
                environment=azure,
                client_secret=environ.get("AZURE_CLIENT_SECRET"),
                proxies=proxies,
            ),
            proxies=proxies,
        )

    def require_defguard(self) -> tuple[str, Secret]:
        """The Defguard URL and token, or a :class:`ConfigurationError` saying how to give them."""
        if not self.defguard_url:
            raise ConfigurationError("no Defguard URL: pass --url https://defguard.example.com or set DEFGUARD_URL")
        if not self.defguard_token:
            raise ConfigurationError(
                "no Defguard API token: set DEFGUARD_API_TOKEN, or pass --api-token-file PATH or --api-token -"
            )
        return self.defguard_url, self.defguard_token

    def validate(self) -> Self:
        if self.defguard_url is not None:
            validate_defguard_url(self.defguard_url, allow_insecure_http=self.allow_insecure_http)
        validate_attribute_set_name(self.attribute_set)
        if self.concurrency < 1 or self.concurrency > 256:
            raise ConfigurationError(f"--concurrency {self.concurrency} must be between 1 and 256")
        validate_seconds("--graph-write-rate", self.graph_write_rate, zero="unlimited", unit="writes per second")
        validate_seconds("--timeout", self.timeout)
        validate_seconds("--max-retry-time", self.retry.timeout)
        if self.stall_timeout is not None:
            validate_seconds("--stall-timeout", self.stall_timeout)
        self.graph.validate()
        return self
