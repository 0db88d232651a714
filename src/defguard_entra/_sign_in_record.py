"""Who signed in last, remembered between runs: azure-identity's ``AuthenticationRecord``, saved as its JSON text.

azure-identity reads its persistent token cache silently only when a browser or device-code credential is given
the record of an earlier sign-in (``azure/identity/_internal/interactive.py``, 1.27.0: ``_acquire_token_silent``
looks up the record's account; without a record it always prompts). The record holds no secret (the account's
name and ids, the client id, the tenant, the authority), but it is written owner-only and atomically like the cache
it points into, in the same directory (``~/.IdentityService`` or ``%LOCALAPPDATA%\\.IdentityService``).

A record is only valid for the authority, tenant and client id it was made with (azure-identity lets a record
override the credential's ``client_id`` and ``authority``!), so records are kept one file per
``(authority, tenant, client id)`` and checked against the key again when read. This module stores text; the
record's class is azure-identity's, in :mod:`._credentials` (the one module that imports it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path, PureWindowsPath
from typing import Any

import attrs

from ._files import write_private_file
from ._sign_in_errors import first_line

__all__ = [
    "CACHE_FILES",
    "CACHE_NAME",
    "Forgotten",
    "RecordKey",
    "RecordStore",
    "SignedOut",
    "default_identity_dir",
    "forget_sign_ins",
]

log = logging.getLogger(__name__)

#: The name of this tool's token cache (``TokenCachePersistenceOptions(name=…)``); azure-identity appends ``.cae``
#: or ``.nocae`` (``azure/identity/_constants.py``). Never the default ``msal.cache`` other tools share.
CACHE_NAME = "defguard-entra"
_RECORD_GLOB = f"{CACHE_NAME}.*.record.json"
#: The files of our named cache (and msal-extensions' lock files beside them) in the directory.
CACHE_FILES = tuple(f"{CACHE_NAME}{suffix}{lock}" for suffix in (".nocae", ".cae") for lock in ("", ".lockfile"))


def default_identity_dir(platform: str, environ: Mapping[str, str]) -> Path | None:
    """The directory azure-identity keeps its persistent token caches in on ``platform`` (a :data:`sys.platform`
    value), from ``environ``: ``%LOCALAPPDATA%\\.IdentityService`` on Windows, ``~/.IdentityService`` elsewhere
    (``azure/identity/_persistent_cache.py``, 1.27.0). ``None`` when ``environ`` does not say where."""
    if platform.startswith("win"):
        base = environ.get("LOCALAPPDATA", "").strip()
        return Path(PureWindowsPath(base) / ".IdentityService") if base else None
    home = environ.get("HOME", "").strip()
    return Path(home) / ".IdentityService" if home else None


def _host(authority: str) -> str:
    """``https://login.microsoftonline.com/`` → ``login.microsoftonline.com`` (as a record names its authority)."""
    text = authority.strip().lower()
    return text.split("://", 1)[-1].split("/", 1)[0]


def _lower(text: str) -> str:
    return text.strip().lower()


@attrs.frozen
class RecordKey:
    """What a record is valid for: the authority host, the tenant as configured (``organizations`` too), the client."""

    authority: str = attrs.field(converter=_host)
    tenant: str = attrs.field(converter=_lower)
    client_id: str = attrs.field(converter=_lower)

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps([self.authority, self.tenant, self.client_id]).encode()).hexdigest()
        return f"{CACHE_NAME}.{digest[:16]}.record.json"

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether a serialized record (its JSON object) was made by this client at this authority."""
        return (
            str(record.get("clientId", "")).lower() == self.client_id
            and _host(str(record.get("authority", ""))) == self.authority
        )


@attrs.frozen
class Forgotten:
    """One record :meth:`RecordStore.forget_all` removed: who was signed in, with which client and tenant."""

    username: str
    client_id: str
    tenant: str


class RecordStore:
    """The records in one directory (azure-identity's cache directory). Reading never raises: an unreadable,
    foreign or corrupt record is ignored (a prompt follows, as on the first run) and replaced at the next save."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self, key: RecordKey) -> str | None:
        """The serialized record for ``key``, or ``None``."""
        path = self.directory / key.file_name()
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.info("ignoring the sign-in record %s: %s", path, exc)
            return None
        record_text = saved.get("record") if isinstance(saved, dict) else None
        try:
            record = json.loads(record_text) if isinstance(record_text, str) else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or saved.get("key") != attrs.asdict(key) or not key.matches(record):
            log.info("ignoring the sign-in record %s: not one of %s", path, key)
            return None
        return record_text

    def save(self, key: RecordKey, record: str) -> None:
        """Remember ``record`` (azure-identity's ``AuthenticationRecord.serialize()``) for ``key``; a record made
        for another client or authority is refused (``ValueError``), never stored under this key."""
        if not key.matches(json.loads(record)):
            msg = f"the sign-in record is not one of {key}"
            raise ValueError(msg)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps({"key": attrs.asdict(key), "record": record}, indent=1) + "\n"
        write_private_file(self.directory / key.file_name(), body.encode("utf-8"))

    def forget_all(self) -> list[Forgotten]:
        """Delete every record of this tool in the directory (no other file); what they were."""
        forgotten: list[Forgotten] = []
        for path in sorted(self.directory.glob(_RECORD_GLOB)) if self.directory.is_dir() else ():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                record = json.loads(saved["record"])
                forgotten.append(
                    Forgotten(str(record.get("username", "?")), str(saved["key"]["client_id"]), saved["key"]["tenant"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                forgotten.append(Forgotten("?", "?", "?"))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return forgotten


@attrs.frozen
class SignedOut:
    """What ``sign-out`` removed: the remembered sign-ins, the accounts in the token cache, the cache files."""

    records: tuple[Forgotten, ...]
    accounts: tuple[str, ...]
    files: tuple[Path, ...]
    problems: tuple[str, ...] = ()


def forget_sign_ins(directory: Path | None, open_caches: Callable[[], list[Any]]) -> SignedOut:
    """Forget this tool's records in ``directory``, empty its token caches (``open_caches``: MSAL ``TokenCache``s
    opened as the sign-in opens them) and delete their files in ``directory``. Never another tool's cache."""
    records = tuple(RecordStore(directory).forget_all()) if directory is not None else ()
    accounts: set[str] = set()
    problems: list[str] = []
    # The cache's file (the data, or the marker of a keyring entry) exists once anything was cached: without it
    # there is nothing to clear, and opening the cache would create the directory.
    if directory is None or any((directory / name).exists() for name in CACHE_FILES):
        try:
            for cache in open_caches():
                accounts |= _empty(cache)
        except Exception as exc:  # noqa: BLE001 - a keyring that will not open: say so, delete the files
            problems.append(f"cannot clear the token cache: {first_line(str(exc))}")
    files: list[Path] = []
    for path in (directory / name for name in CACHE_FILES) if directory is not None else ():
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
