"""Presentation: summary tables, the ``check`` checklist, the export summary, JSON and CSV reports. Turns what a
command returned into text or files; never prints itself."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import csv_chunks, write_private_file
from ..exceptions import ConfigurationError
from ..models import OUTCOME_FIELDS, Checklist, CheckState, Report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._export import ExportManifest

__all__ = [
    "check_report_path",
    "format_checklist",
    "format_export_summary",
    "format_status_table",
    "format_summary",
    "report_bytes",
    "report_chunks",
    "write_report",
]

_PROBLEM_ROWS = 25


def check_report_path(path: str) -> Path:
    """Validate ``--report`` before the run: a ``.json`` or ``.csv`` file in a writable directory."""
    target = Path(path).expanduser()
    if target.suffix.lower() not in {".json", ".csv"}:
        raise ConfigurationError(f"--report {path!r} must end in .json or .csv (the format follows the extension)")
    parent = target.parent.resolve()
    if not parent.is_dir():
        raise ConfigurationError(f"--report {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--report {path!r}: directory {str(parent)!r} is not writable")
    if target.is_dir():
        raise ConfigurationError(f"--report {path!r} is a directory: give a file name ending in .json or .csv")
    return target


def report_chunks(report: Report, fmt: str, *, reveal_tokens: bool = False) -> Iterator[bytes]:
    """The report as JSON or CSV, a member at a time (50,000 members never become one string in memory)."""
    users = (o.to_dict(reveal_tokens=reveal_tokens) for o in report.outcomes)
    if fmt != "json":
        yield from csv_chunks(OUTCOME_FIELDS, users)
        return
    head = json.dumps(
        report.to_dict(reveal_tokens=reveal_tokens, include_users=False), indent=2, ensure_ascii=False, allow_nan=False
    )
    yield (head[: -len("\n}")] + ',\n  "users": [').encode("utf-8")
    separator = "\n    "
    for n, user in enumerate(users):
        item = json.dumps(user, indent=2, ensure_ascii=False, allow_nan=False).replace("\n", "\n    ")
        yield (("," if n else "") + separator + item).encode("utf-8")
    yield ("\n  ]\n}\n" if report.outcomes else "]\n}\n").encode("utf-8")


def report_bytes(report: Report, fmt: str, *, reveal_tokens: bool = False) -> bytes:
    return b"".join(report_chunks(report, fmt, reveal_tokens=reveal_tokens))


def write_report(report: Report, path: str | Path, *, reveal_tokens: bool = False) -> Path:
    """Write ``report`` as JSON or CSV (by extension), atomically and owner-only (it may hold URLs and, with
    ``reveal_tokens``, live tokens)."""
    target = check_report_path(str(path))
    fmt = target.suffix.lower().lstrip(".")
    write_private_file(target, report_chunks(report, fmt, reveal_tokens=reveal_tokens))
    return target


def format_summary(report: Report) -> str:
    """The end-of-run text: a status table and the members that need attention."""
    from humanfriendly import format_timespan  # noqa: PLC0415
    from humanfriendly.tables import format_pretty_table  # noqa: PLC0415

    lines: list[str] = []
    total = len(report.outcomes)
    duration = (report.finished_at - report.started_at).total_seconds()
    title = f"{report.command} {'(dry run) ' if report.dry_run else ''}of group {report.group_name!r}"
    lines.append(f"{title}: {total} member{'s' if total != 1 else ''} in {format_timespan(duration)}")
    if total:
        rows: list[list[Any]] = [[status, count] for status, count in report.summary.items()]
        lines.append(format_pretty_table(rows, ["status", "members"]))
    problems = [o for o in report.outcomes if o.status.is_problem]
    if problems:
        shown = problems[:_PROBLEM_ROWS]
        rows = [[o.username or "-", o.email or "-", o.status.value, o.error or ""] for o in shown]
        lines.append(format_pretty_table(rows, ["username", "email", "status", "why"]))
        if len(problems) > len(shown):
            lines.append(f"… and {len(problems) - len(shown)} more: see the report (--report PATH)")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


# -- status and check --------------------------------------------------------------------------------------------


def format_status_table(report: Report) -> str:
    """One row per member for ``status``: Defguard state, Entra match, what is stored (token masked)."""
    from humanfriendly.tables import format_pretty_table  # noqa: PLC0415

    def flag(value: bool | None) -> str:
        return "-" if value is None else "yes" if value else "no"

    rows = []
    for o in report.outcomes:
        token = o.enrollment_token.masked() if o.enrollment_token else "-"
        rows.append(
            [
                o.username or "-",
                flag(o.defguard_active),
                "-" if o.devices is None else o.devices,
                o.user_principal_name or "-",
                o.status.value,
                o.would_mint.value if o.would_mint else "-",
                token,
                o.enrollment_url or "-",
            ]
        )
    columns = ["member", "active", "devices", "Entra user", "status", "would mint", "token", "URL"]
    return str(format_pretty_table(rows, columns))


_MARKS = {CheckState.OK: "ok  ", CheckState.FAIL: "FAIL", CheckState.WARN: "warn", CheckState.SKIP: "skip"}


def format_checklist(checklist: Checklist, *, problems_only: bool = False) -> str:
    """The ``check`` output: one line per item, a fix hint under each failure, and the verdict last."""
    title = (
        f"check of group {checklist.group_name!r} ({checklist.group_source}), attribute set "
        f"{checklist.attribute_set!r}: Defguard {checklist.defguard_url}, Microsoft Graph {checklist.graph_url}"
    )
    lines = [title]
    for item in checklist.items:
        if problems_only and item.state in {CheckState.OK, CheckState.SKIP}:
            continue
        detail = f": {item.detail}" if item.detail else ""
        lines.append(f"  {_MARKS[item.state]}  {item.title}{detail}")
        if item.hint and item.state in {CheckState.FAIL, CheckState.WARN}:
            label = "fix" if item.state is CheckState.FAIL else "hint"
            lines.append(f"        {label}: {item.hint}")
    failures = checklist.failures
    if failures:
        lines.append(
            f"not ready: {len(failures)} problem{'s' if len(failures) != 1 else ''} "
            f"({', '.join(item.title for item in failures)})"
        )
    else:
        warnings = sum(1 for item in checklist.items if item.state is CheckState.WARN)
        extra = f" ({warnings} item{'s' if warnings != 1 else ''} not verified: see the hints)" if warnings else ""
        lines.append(f"ready: provision can run for this group{extra}")
    return "\n".join(lines)


# -- export ------------------------------------------------------------------------------------------------------


def format_export_summary(manifest: ExportManifest, notes: Sequence[str]) -> str:
    """The end-of-export text: files written per kind, a status table, the members that need attention."""
    from humanfriendly.tables import format_pretty_table  # noqa: PLC0415

    entries = manifest.entries
    files = [e for e in entries if e.status == "exported"]
    changes = ", ".join(
        f"{sum(1 for e in files if e.file is not None and e.file.value == kind)} {kind}"
        for kind in ("written", "replaced", "unchanged")
    )
    plural = "s" if len(entries) != 1 else ""
    title = (
        f"export of group {manifest.group_name!r} to {manifest.output_dir}: {len(files)} of {len(entries)} "
        f"member{plural} have a provisioning.json ({changes})"
    )
    lines = [title]
    if entries:
        lines.append(format_pretty_table([[k, v] for k, v in manifest.summary.items()], ["status", "members"]))
    problems = [e for e in entries if not e.ok]
    if problems:
        rows = [[e.username or e.user_principal_name or "-", e.status, e.error or ""] for e in problems[:_PROBLEM_ROWS]]
        lines.append(format_pretty_table(rows, ["member", "status", "why"]))
        if len(problems) > _PROBLEM_ROWS:
            lines.append(f"… and {len(problems) - _PROBLEM_ROWS} more: see manifest.csv")
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"manifest: {manifest.output_dir / 'manifest.json'} and manifest.csv (owner-only)")
    return "\n".join(lines)
