"""The Defguard desktop client's ``provisioning.json`` (``fetch-config``): where the client looks for it on each OS,
the pair from Entra that fills it, writing it (atomically, owner-only) and the client's own deep link.

The client reads ``<data dir>/net.defguard/provisioning.json`` once per launch while it has no instances (see
"The desktop client" in ``docs/reference/defguard-deployments.md``). The file holds exactly ``enrollment_url`` and
``enrollment_token``. What this module writes, byte for byte, is :func:`provisioning_json`: UTF-8 without BOM,
``json.dumps(…, indent=2, ensure_ascii=False)`` with the keys in that order, LF line ends and one final newline, so
a second run produces the same bytes and can tell "already there" from "different".

Reading one's own custom security attributes needs the Attribute Assignment Reader role, and Graph answers "not
assigned" and "not permitted" with the same ``null`` ("Assign, update, list, or remove custom security attributes
for a user", Microsoft Learn): the errors here say both. Nothing in this module prints, logs or puts a token in an
exception message.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from ._files import open_to_others, write_private_file
from ._scopes import scopes_for
from ._sync import blocking_function
from .config import DEFAULT_ATTRIBUTE_SET, AuthMode, GraphSettings, Settings
from .exceptions import ClientConfigError, ConfigurationError, EntraError
from .models import ATTRIBUTE_TOKEN, ATTRIBUTE_URL, EnrollmentAttributes, ProvisioningConfig, Secret

if TYPE_CHECKING:
    from ._entra import AsyncEntraClient

__all__ = [
    "CLIENT_IDENTIFIER",
    "PROVISIONING_FILENAME",
    "WriteOutcome",
    "afetch_provisioning_config",
    "check_output_file",
    "client_data_dir",
    "config_from_attributes",
    "deep_link",
    "default_provisioning_path",
    "fetch_provisioning_config",
    "private_dir",
    "provisioning_json",
    "require_user_sign_in",
    "write_provisioning_file",
]

log = logging.getLogger(__name__)

#: The desktop client's Tauri identifier: the name of its directory under the OS's data directory.
CLIENT_IDENTIFIER = "net.defguard"
PROVISIONING_FILENAME = "provisioning.json"

_APPLICATION_MODES = frozenset({AuthMode.ENVIRONMENT, AuthMode.MANAGED_IDENTITY})
_ROOT_HOMES = {"darwin": "/var/root", "linux": "/root"}


class WriteOutcome(enum.StrEnum):
    """What :func:`write_provisioning_file` did."""

    WRITTEN = "written"  # there was no file
    REPLACED = "replaced"  # a different file was there and ``force`` replaced it
    UNCHANGED = "unchanged"  # the file already held this configuration: not touched


# -- where the client looks ------------------------------------------------------------------------------------


def _is_windows(platform: str) -> bool:
    return platform.startswith("win")


def _home(platform: str, environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME", "").strip()
    if not home:
        raise ConfigurationError(
            "HOME is not set, so the Defguard client's data directory is unknown: run fetch-config as the user "
            "who uses the client, or pass --output PATH"
        )
    root_home = _ROOT_HOMES.get("linux" if platform.startswith("linux") else platform)
    if root_home is not None and PurePosixPath(home) == PurePosixPath(root_home):
        raise ConfigurationError(
            f"HOME is {home} (root's): the Defguard client reads provisioning.json from the desktop user's own "
            "data directory, so run fetch-config as that user, or pass --output PATH"
        )
    return Path(home)


def client_data_dir(platform: str, environ: Mapping[str, str]) -> Path:
    """The desktop client's data directory (``dirs::data_dir()`` + ``net.defguard``) for ``platform``.

    ``platform`` is a :data:`sys.platform` value and ``environ`` the environment to resolve it in (the CLI passes
    ``sys.platform`` and ``os.environ``). Windows: ``%APPDATA%\\net.defguard``; macOS (the client is sandboxed, so
    its data directory is inside its container, DefGuard/client ``src-tauri/Client.entitlements``):
    ``~/Library/Containers/net.defguard/Data/Library/Application Support/net.defguard``;
    Linux and other Unixes: ``$XDG_DATA_HOME/net.defguard``
    (``~/.local/share`` when unset or not absolute, as ``dirs`` does). Raises :class:`ConfigurationError` when the
    variables it needs are missing, and when the directory would belong to ``SYSTEM`` or ``root`` rather than to a
    desktop user (an installer's SYSTEM context: see "The desktop client" in
    ``docs/reference/defguard-deployments.md``).
    """
    if _is_windows(platform):
        appdata = environ.get("APPDATA", "").strip()
        if not appdata:
            raise ConfigurationError(
                "APPDATA is not set, so the Defguard client's data directory is unknown: run fetch-config as the "
                "user who uses the client, or pass --output PATH"
            )
        if "systemprofile" in (part.lower() for part in PureWindowsPath(appdata).parts):
            raise ConfigurationError(
                f"APPDATA is {appdata} (the SYSTEM profile): the Defguard client reads provisioning.json from the "
                "signed-in user's profile, so run fetch-config in the user's context (not as a SYSTEM-context "
                "device install), or distribute files with export"
            )
        return Path(appdata) / CLIENT_IDENTIFIER
    if platform == "darwin":
        container = _home(platform, environ) / "Library" / "Containers" / CLIENT_IDENTIFIER / "Data"
        return container / "Library" / "Application Support" / CLIENT_IDENTIFIER
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    if xdg and PurePosixPath(xdg).is_absolute():
        return Path(xdg) / CLIENT_IDENTIFIER
    return _home(platform, environ) / ".local" / "share" / CLIENT_IDENTIFIER


def default_provisioning_path(platform: str, environ: Mapping[str, str]) -> Path:
    """Where the desktop client looks for ``provisioning.json`` on ``platform`` (see :func:`client_data_dir`)."""
    return client_data_dir(platform, environ) / PROVISIONING_FILENAME


# -- the file ----------------------------------------------------------------------------------------------------


def config_from_attributes(values: Mapping[str, Any] | None, attribute_set: str) -> ProvisioningConfig:
    """The pair stored by ``provision`` → :class:`ProvisioningConfig`.

    ``values`` is one user's values in ``attribute_set`` as the Entra client returns them (``None`` when Graph
    returned nothing). Raises :class:`ClientConfigError` with ``reason`` ``"missing"`` when neither value is
    there and ``"incomplete"`` when only one is, or the URL is not an http(s) URL. Messages never hold the token.
    """
    pair = EnrollmentAttributes.from_graph(values) or EnrollmentAttributes()
    url, token = pair.url or "", pair.token.value if pair.token else ""
    where = f"attribute set {attribute_set!r}"
    if not url and not token:
        if pair.not_text:
            raise ClientConfigError(
                f"{where} holds {ATTRIBUTE_URL} and {ATTRIBUTE_TOKEN}, but not as text", "incomplete"
            )
        raise ClientConfigError(f"{where} holds no {ATTRIBUTE_URL} and no {ATTRIBUTE_TOKEN}", "missing")
    if not token:
        raise ClientConfigError(f"{where} holds {ATTRIBUTE_URL} but no {ATTRIBUTE_TOKEN}", "incomplete")
    if not url:
        raise ClientConfigError(f"{where} holds {ATTRIBUTE_TOKEN} but no {ATTRIBUTE_URL}", "incomplete")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        shown = url if len(url) <= 80 else url[:80] + "…"
        raise ClientConfigError(f"{where}: {ATTRIBUTE_URL} {shown!r} is not an http(s) URL", "incomplete")
    return ProvisioningConfig(enrollment_url=url, enrollment_token=Secret(token))


def provisioning_json(config: ProvisioningConfig) -> bytes:
    """The exact bytes of ``provisioning.json``: UTF-8 without BOM, two-space indent, ``enrollment_url`` then
    ``enrollment_token``, LF line ends and a final newline."""
    if not config.enrollment_url or not config.enrollment_token:
        raise ClientConfigError("a provisioning configuration needs both the enrollment URL and token", "incomplete")
    text = json.dumps(config.to_json_dict(reveal=True), indent=2, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def deep_link(config: ProvisioningConfig) -> str:
    """The client's own link for the same enrollment: ``defguard://addinstance?token=…&url=<percent-encoded>``.

    It contains the token: treat it like the token.
    """
    query = urlencode({"token": config.enrollment_token.value, "url": config.enrollment_url}, quote_via=quote, safe="")
    return f"defguard://addinstance?{query}"


def _holds_same_config(existing: bytes, config: ProvisioningConfig) -> bool:
    """True when an existing file (ours, or one with a UTF-8 BOM, as Windows PowerShell writes) has the same pair."""
    try:
        data = json.loads(existing.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("enrollment_url") == config.enrollment_url
        and data.get("enrollment_token") == config.enrollment_token.value
    )


def private_dir(directory: Path) -> None:
    """Create ``directory`` (and missing parents) with the last level owner-only; an existing one is left as is."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)  # independent of the umask


def write_provisioning_file(
    config: ProvisioningConfig, path: str | os.PathLike[str], *, force: bool = False
) -> WriteOutcome:
    """Write ``config`` to ``path`` as :func:`provisioning_json`, atomically and owner-only (0600; on Windows the
    folder's ACL, private in the user's ``%APPDATA%``, as the client itself relies on).

    A missing directory is created owner-only (0700). A file that already holds the same pair is left alone
    (:attr:`WriteOutcome.UNCHANGED`; on POSIX its permissions are tightened to 0600 if they were looser); a file with
    anything else is kept and :class:`ClientConfigError` (``reason="exists"``) raised, unless ``force``. Raises
    :class:`ClientConfigError` (``reason="unwritable"``) when the file system refuses.

    .. versionadded:: 0.1.0
    """
    target = Path(path)
    content = provisioning_json(config)
    if target.is_dir():
        raise ConfigurationError(f"{str(target)!r} is a directory: give the path of the file to write")
    try:
        existing = target.read_bytes() if target.exists() else None
    except OSError as exc:
        raise ClientConfigError(f"cannot read the existing {target}: {exc.strerror or exc}", "unwritable") from None
    if existing is not None:
        if existing == content or _holds_same_config(existing, config):
            _tighten(target)
            return WriteOutcome.UNCHANGED
        if not force:
            raise ClientConfigError(
                f"{target} already exists with a different configuration: kept it; pass --force to replace it "
                "(the client only reads it while it has no instances)",
                "exists",
            )
    try:
        private_dir(target.parent)
        write_private_file(target, content)
    except OSError as exc:
        raise ClientConfigError(f"cannot write {target}: {exc.strerror or exc}", "unwritable") from None
    log.info("wrote %s", target)
    return WriteOutcome.REPLACED if existing is not None else WriteOutcome.WRITTEN


def _tighten(target: Path) -> None:
    try:
        if not target.is_symlink() and open_to_others(target.stat().st_mode, sys.platform):
            target.chmod(0o600)
    except OSError as exc:  # not ours to change: the content is right, so say so and move on
        log.warning("could not make %s owner-only: %s", target, exc.strerror or exc)


# -- reading the signed-in user's attributes ------------------------------------------------------------------


def require_user_sign_in(settings: GraphSettings) -> None:
    """``fetch-config`` reads ``/me``: refuse (before any request) sign-in modes that are an application."""
    mode = settings.resolved_auth()
    if mode in _APPLICATION_MODES:
        raise ConfigurationError(
            f"fetch-config reads the signed-in user's own attributes, but --auth {mode.value} signs in as an "
            "application (no /me): use --auth interactive or device-code, or export for an admin-side "
            "roll-out"
        )


async def afetch_provisioning_config(
    entra: AsyncEntraClient, attribute_set: str = DEFAULT_ATTRIBUTE_SET
) -> ProvisioningConfig:
    """The signed-in user's enrollment URL and token from ``attribute_set`` (delegated sign-in only).

    Raises :class:`ClientConfigError` (``"missing"`` or ``"incomplete"``) with a message that names both causes of
    an empty answer, and :class:`EntraError` when Graph fails.
    """
    values = await entra.read_my_attributes(attribute_set)
    try:
        return config_from_attributes(values, attribute_set)
    except ClientConfigError as exc:
        who = await _who(entra)
        if exc.reason == "missing":
            message = (
                f"Entra returned no enrollment attributes for {who} in attribute set {attribute_set!r}: either none "
                "are assigned yet (ask your administrator to run provision for your group), or this account may not "
                "read them (it needs the Attribute Assignment Reader role and the "
                "CustomSecAttributeAssignment.Read.All scope; Graph answers both cases the same way), or the "
                "attributes are in another set (--attribute-set-name); no file was written"
            )
        else:
            message = f"{exc} for {who}: ask your administrator to run provision again; no file was written"
        raise ClientConfigError(message, exc.reason) from None


async def _who(entra: AsyncEntraClient) -> str:
    try:
        me = await entra.me()
    except EntraError:
        return "the signed-in user"
    upn = me.get("userPrincipalName")
    return f"the signed-in user {upn}" if upn else "the signed-in user"


async def _fetch_provisioning_config(
    settings: Settings,
    *,
    credential: Any = None,
    prompt: Any = None,
) -> ProvisioningConfig:
    """Sign in as the current user (``settings.graph``) and read their pair from ``settings.attribute_set``.

    Blocking; runs the async client on a private event loop, so it also works from a notebook. ``credential``
    overrides sign-in (anything with ``get_token``); ``prompt`` receives device-code instructions. Asks only for
    ``COMMAND_SCOPES["fetch-config"]``. Raises :class:`ConfigurationError`, :class:`ClientConfigError` or
    :class:`EntraError`.

    .. versionadded:: 0.1.0
    """
    from ._entra import AsyncEntraClient  # noqa: PLC0415 - msgraph: only when used

    settings.validate()
    require_user_sign_in(settings.graph)
    scopes = scopes_for("fetch-config")
    async with AsyncEntraClient.from_settings(settings, credential=credential, prompt=prompt, scopes=scopes) as entra:
        await entra.sign_in()
        return await afetch_provisioning_config(entra, settings.attribute_set)


#: The blocking form (the public one) of :func:`_fetch_provisioning_config`, on a loop thread of its own per call;
#: the client it builds owns, and closes, the credential it signs in with (unless ``credential`` is given).
fetch_provisioning_config = blocking_function(_fetch_provisioning_config, "fetch_provisioning_config")


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Validate ``fetch-config --output`` before any request: not a directory, in an existing directory."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigurationError(f"--output {str(path)!r} is a directory: give the file path, e.g. …/provisioning.json")
    if not target.parent.is_dir():
        raise ConfigurationError(f"--output {str(path)!r}: directory {str(target.parent)!r} does not exist")
    return target
