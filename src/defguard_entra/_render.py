"""Presentation: summary tables, JSON and CSV reports. Used by the CLI and by notebooks; never prints itself."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .exceptions import ConfigurationError
from .models import OUTCOME_FIELDS, Report

__all__ = ["check_report_path", "format_summary", "report_bytes", "write_private_file", "write_report"]

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


def report_bytes(report: Report, fmt: str, *, reveal_tokens: bool = False) -> bytes:
    data = report.to_dict(reveal_tokens=reveal_tokens)
    if fmt == "json":
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(OUTCOME_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in data["users"]:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


def write_private_file(path: Path, content: bytes) -> None:
    """Write atomically (temp file + rename in the same directory) with owner-only permissions (0600)."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def write_report(report: Report, path: str | Path, *, reveal_tokens: bool = False) -> Path:
    """Write ``report`` as JSON or CSV (by extension), atomically and owner-only (it may hold URLs and, with
    ``reveal_tokens``, live tokens)."""
    target = check_report_path(str(path))
    fmt = target.suffix.lower().lstrip(".")
    write_private_file(target, report_bytes(report, fmt, reveal_tokens=reveal_tokens))
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
