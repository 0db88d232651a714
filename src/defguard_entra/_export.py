"""``export``: one ``provisioning.json`` per group member, for device management roll-outs, and the manifest
(``manifest.json``, ``manifest.csv``) that accounts for every member.

Each file is what :mod:`defguard_entra._desktop_client` writes for one user; the directories are named by
userPrincipalName (:func:`member_directory_name`). Nothing here prints or logs a token; the deep links, which hold
one, are in the manifest only when asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from ._desktop_client import PROVISIONING_FILENAME, WriteOutcome, deep_link, private_dir, write_provisioning_file
from ._files import csv_bytes, write_private_file
from ._version import __version__
from .exceptions import ClientConfigError, ConfigurationError
from .models import ProvisioningConfig, Report, Secret, Status

__all__ = [
    "MANIFEST_CSV",
    "MANIFEST_FIELDS",
    "MANIFEST_JSON",
    "ExportEntry",
    "ExportManifest",
    "check_output_dir",
    "member_directory_name",
    "write_export",
]

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
#: Manifest statuses that need no admin action (every other one makes ``export`` exit 1).
_EXPORT_FINE = frozenset({"exported", Status.DISABLED.value, Status.ALREADY_ENROLLED.value})
_NAME_LIMIT = 255


def member_directory_name(user_principal_name: str) -> str:
    """A userPrincipalName as one safe directory name on Windows, macOS and Linux.

    Letters, digits, ``. _ - ~ @ +`` are kept; anything else is percent-encoded (a guest's
    ``jane_contoso.com#EXT#@tenant.onmicrosoft.com`` becomes ``…%23EXT%23@…``), which is reversible, so two UPNs
    never share a directory. Refuses (:class:`ValueError`) names with ``/`` or ``\\``, control characters, a
    leading or trailing dot, ``.``/``..``, and names longer than 255 bytes.
    """
    upn = user_principal_name.strip()
    if not upn:
        raise ValueError("the Entra user has no userPrincipalName")
    if "/" in upn or "\\" in upn or any(ord(ch) < 32 or ord(ch) == 127 for ch in upn):
        raise ValueError(f"userPrincipalName {upn!r} contains a path separator or control character")
    if upn.startswith(".") or upn.endswith("."):
        raise ValueError(f"userPrincipalName {upn!r} starts or ends with a dot")
    name = quote(upn, safe="@+")
    if len(name.encode("utf-8")) > _NAME_LIMIT:
        raise ValueError(f"userPrincipalName {upn!r} is too long for a directory name")
    return name


@attrs.frozen
class ExportEntry:
    """One group member in the export manifest. ``path`` is relative to the output directory (POSIX form)."""

    username: str | None
    email: str | None
    status: str  # "exported", or the member's status (not_set, failed, disabled, not_found, …)
    user_principal_name: str | None = None
    path: str | None = None
    file: WriteOutcome | None = None
    error: str | None = None
    deep_link: Secret | None = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in _EXPORT_FINE

    def to_dict(self, *, deep_links: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {
            "username": self.username,
            "email": self.email,
            "status": self.status,
            "user_principal_name": self.user_principal_name,
            "path": self.path,
            "file": self.file.value if self.file else None,
            "error": self.error,
        }
        if deep_links:
            row["deep_link"] = self.deep_link.value if self.deep_link else None
        return row


MANIFEST_FIELDS = ("username", "email", "status", "user_principal_name", "path", "file", "error")


@attrs.frozen
class ExportManifest:
    """What ``export`` wrote: every member of the group once, and directories left from earlier runs."""

    output_dir: Path
    group_name: str
    group_source: str
    attribute_set: str
    entries: tuple[ExportEntry, ...]
    deep_links: bool = False
    stale: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every member was exported or needs no file (disabled, already enrolled): exit code 0."""
        return all(e.ok for e in self.entries)

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.status] = counts.get(entry.status, 0) + 1
        order = {s.value: n for n, s in enumerate(Status)}  # "exported" first, then the order of Status
        return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], -1), kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool_version": __version__,
            "group": {"name": self.group_name, "source": self.group_source},
            "attribute_set": self.attribute_set,
            "file_name": PROVISIONING_FILENAME,
            "summary": self.summary,
            "members": [e.to_dict(deep_links=self.deep_links) for e in self.entries],
        }

    def json_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def csv_bytes(self) -> bytes:
        fields = [*MANIFEST_FIELDS, *(("deep_link",) if self.deep_links else ())]
        return csv_bytes(fields, (entry.to_dict(deep_links=self.deep_links) for entry in self.entries))


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Validate ``--output-dir`` before any request: a directory, or a new one whose parent exists and is writable."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigurationError(f"--output-dir {str(path)!r} is a file: give a directory (it is created if missing)")
    existing = target if target.is_dir() else target.parent
    if not existing.is_dir():
        raise ConfigurationError(f"--output-dir {str(path)!r}: directory {str(existing)!r} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--output-dir {str(path)!r}: directory {str(existing)!r} is not writable")
    return target


def write_export(report: Report, output_dir: str | os.PathLike[str], *, deep_links: bool = False) -> ExportManifest:
    """Write ``DIR/<userPrincipalName>/provisioning.json`` for each member ``report`` holds a pair for, then
    ``manifest.json`` and ``manifest.csv`` accounting for every member (all owner-only; directories 0700).

    ``report`` is what :meth:`ProvisioningService.export` returns: members with status ``set`` carry their URL
    and token. A file from an earlier export is replaced: Entra's pair is the current one (Defguard cancels a
    member's older unused tokens when it issues a new one). Directories of members who are not in this export are
    reported in :attr:`ExportManifest.stale`, not deleted.

    .. versionadded:: 0.1.0
    """
    root = check_output_dir(output_dir)
    try:
        private_dir(root)
    except OSError as exc:
        raise ClientConfigError(f"cannot create {root}: {exc.strerror or exc}", "unwritable") from None
    entries: list[ExportEntry] = []
    used: set[str] = set()
    for outcome in report.outcomes:
        base = ExportEntry(
            username=outcome.username,
            email=outcome.email,
            status=outcome.status.value,
            user_principal_name=outcome.user_principal_name,
            error=outcome.error,
        )
        if outcome.status is not Status.SET or outcome.enrollment_url is None or outcome.enrollment_token is None:
            entries.append(base)
            continue
        config = ProvisioningConfig(outcome.enrollment_url, outcome.enrollment_token)
        try:
            name = member_directory_name(outcome.user_principal_name or "")
        except ValueError as exc:
            entries.append(attrs.evolve(base, status=Status.FAILED.value, error=f"{exc}: no file written"))
            continue
        if name.lower() in used:  # cannot happen with unique UPNs; never let two members share a file
            error = f"directory {name!r} is already used by another member: no file written"
            entries.append(attrs.evolve(base, status=Status.FAILED.value, error=error))
            continue
        used.add(name.lower())
        relative = f"{name}/{PROVISIONING_FILENAME}"
        try:
            written = write_provisioning_file(config, root / name / PROVISIONING_FILENAME, force=True)
        except (ClientConfigError, ConfigurationError) as exc:
            entries.append(attrs.evolve(base, status=Status.FAILED.value, error=str(exc)))
            continue
        entries.append(
            attrs.evolve(
                base,
                status="exported",
                path=relative,
                file=written,
                error=None,
                deep_link=Secret(deep_link(config)) if deep_links else None,
            )
        )
    manifest = ExportManifest(
        output_dir=root,
        group_name=report.group_name,
        group_source=report.group_source,
        attribute_set=report.attribute_set,
        entries=tuple(entries),
        deep_links=deep_links,
        stale=_stale(root, used),
    )
    try:
        write_private_file(root / MANIFEST_JSON, manifest.json_bytes())
        write_private_file(root / MANIFEST_CSV, manifest.csv_bytes())
    except OSError as exc:
        raise ClientConfigError(f"cannot write the manifest in {root}: {exc.strerror or exc}", "unwritable") from None
    return manifest


def _stale(root: Path, used: set[str]) -> tuple[str, ...]:
    try:
        children: Sequence[Path] = sorted(root.iterdir())
    except OSError:
        return ()
    return tuple(
        child.name for child in children if child.name.lower() not in used and (child / PROVISIONING_FILENAME).is_file()
    )
