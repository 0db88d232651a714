"""Presentation: summary tables, the ``check`` checklist, the export summary, JSON and CSV reports. Turns what a
command returned into text or files; never prints itself."""

from __future__ import annotations

import json
import os
import re
import textwrap
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import csv_chunks, write_private_file
from ..exceptions import ConfigurationError
from ..models import OUTCOME_FIELDS, Checklist, CheckState, Outcome, Report, TokenState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._export import ExportManifest

__all__ = [
    "check_report_path",
    "command_line",
    "fit",
    "format_checklist",
    "format_export_summary",
    "format_status_table",
    "format_summary",
    "member_event",
    "report_bytes",
    "report_chunks",
    "run_event",
    "shown_name",
    "table",
    "timespan",
    "write_report",
]

_PROBLEM_ROWS = 25

#: The longest name shown in full; longer ones are cut with an ellipsis (the report holds them whole).
_NAME_LIMIT = 60
#: Names shown without quotes: nothing a reader could misread where the name starts or ends.
_PLAIN_NAME = re.compile(r"[^\s'\"“”]+")
#: A table column is never narrowed below this (or its natural width, when smaller).
_MIN_COLUMN = 6
_NUMERIC = re.compile(r"^\d+(\.\d+)?$")
_HEADER_COLOR = "\x1b[1;32m", "\x1b[0m"


def shown_name(name: str, limit: int = _NAME_LIMIT) -> str:
    """A group (or other) name as the user typed it: bare when it reads unambiguously, else in quotes (double, or
    single when it holds a double quote, or typographic when it holds both), never escaped; control
    characters visible (``\\n``, ``\\u200b``), and a name longer than ``limit`` cut with an ellipsis."""
    cut = name if len(name) <= limit else name[: limit - 1] + "…"
    visible = "".join(
        c if unicodedata.category(c)[0] != "C" and c not in "\u2028\u2029" else repr(c)[1:-1] for c in cut
    )
    if visible and _PLAIN_NAME.fullmatch(visible) and visible == cut:
        return visible
    if '"' not in visible:
        return f'"{visible}"'
    return f"'{visible}'" if "'" not in visible else f"“{visible}”"


def table(
    rows: Sequence[Sequence[Any]], columns: Sequence[str], *, width: int | None = None, color: bool = False
) -> str:
    """A bordered table; cells wrap so that no line is wider than ``width`` (the report keeps the full text).
    The header is coloured only when ``color`` (the console decides: a terminal, no ``NO_COLOR``, no dumb TERM)."""
    data = [[str(cell).expandtabs() for cell in row] for row in rows]
    widths = [max([len(name)] + [len(row[n]) for row in data]) for n, name in enumerate(columns)]
    numeric = [bool(data) and all(_NUMERIC.match(row[n]) for row in data) for n in range(len(columns))]
    if width is not None:
        floor = [
            min(w, max(_MIN_COLUMN, len(name) if numeric[n] else 0))
            for n, (w, name) in enumerate(zip(widths, columns, strict=True))
        ]
        while sum(widths) + 3 * len(widths) + 1 > width:
            widest = max(range(len(widths)), key=lambda n: widths[n] - floor[n])
            if widths[widest] <= floor[widest]:
                break
            widths[widest] -= 1
    bar = "-" * (sum(widths) + 3 * len(widths) + 1)

    def lines_of(cells: Sequence[str], *, header: bool = False) -> list[str]:
        wrapped = [_wrap(cell, widths[n]) for n, cell in enumerate(cells)]
        out = []
        for k in range(max(len(w) for w in wrapped)):
            line = "|"
            for n, parts in enumerate(wrapped):
                part = parts[k] if k < len(parts) else ""
                pad = " " * (widths[n] - len(part))
                text = pad + part if numeric[n] and not header else part + pad
                if header and color:
                    text = _HEADER_COLOR[0] + text + _HEADER_COLOR[1]
                line += f" {text} |"
            out.append(line)
        return out

    result = [bar, *lines_of(list(columns), header=True), bar]
    for row in data:
        result.extend(lines_of(row))
    result.append(bar)
    return "\n".join(result)


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def command_line(words: Sequence[str]) -> str:
    """``python -m defguard_entra`` and ``words`` as one would type them: a word in double quotes only when it
    holds a space or a character a shell (sh or PowerShell) reads itself."""
    shown = [w if w and re.fullmatch(r"[\w@%+=:,./\\-]+", w) else '"' + w.replace('"', '\\"') + '"' for w in words]
    return " ".join(["python -m defguard_entra", *shown])


def fit(text: str, width: int | None) -> str:
    """Free text wrapped to ``width`` at spaces (a URL or path longer than a line is kept whole)."""
    if width is None:
        return text
    lines = []
    for line in text.split("\n"):
        if len(line) <= width or line.startswith(("|", "-")):
            lines.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        lines.extend(
            textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False, subsequent_indent=indent)
        )
    return "\n".join(lines)


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


def timespan(seconds: float) -> str:
    """``1 minute and 30 seconds``: a duration in words."""
    from humanfriendly import format_timespan  # noqa: PLC0415

    return str(format_timespan(seconds))


def format_summary(
    report: Report, *, width: int | None = None, color: bool = False, report_path: Path | None = None
) -> str:
    """The end-of-run text: a status table and the members that need attention (at most ``width`` wide)."""
    from humanfriendly import format_timespan  # noqa: PLC0415

    lines: list[str] = []
    total = len(report.outcomes)
    duration = (report.finished_at - report.started_at).total_seconds()
    title = f"{report.command} {'(dry run) ' if report.dry_run else ''}of group {shown_name(report.group_name)}"
    lines.append(f"{title}: {total} member{'s' if total != 1 else ''} in {format_timespan(duration)}")
    if total:
        rows: list[list[Any]] = [[status, count] for status, count in report.summary.items()]
        lines.append(table(rows, ["status", "members"], width=width, color=color))
    if report.plan:
        actions: list[list[Any]] = [[action, count] for action, count in report.plan.items()]
        lines.append(table(actions, ["action", "members"], width=width, color=color))
    problems = [o for o in report.outcomes if o.status.is_problem or _token_needs_a_look(report, o)]
    if problems:
        shown = problems[:_PROBLEM_ROWS]
        rows = [[o.username or "-", o.email or "-", o.status.value, o.error or ""] for o in shown]
        lines.append(table(rows, ["username", "email", "status", "why"], width=width, color=color))
        if len(problems) > len(shown):
            where = str(report_path) if report_path is not None else "the report (--report PATH)"
            lines.append(f"… and {len(problems) - len(shown)} more: see {where}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


# -- --log-format json --------------------------------------------------------------------------------------------

#: What a member event carries of :meth:`Outcome.to_dict` (never the token, not even masked), under its own name.
_MEMBER_FIELDS = {
    "username": "username",
    "email": "email",
    "entra_id": "entra_id",
    "user_principal_name": "user_principal_name",
    "status": "status",
    "action": "action",
    "token_state": "token_state",
    "token_kind": "token_kind",
    "token_expires_at": "token_expires_at",
    "error": "reason",
}


def member_event(report: Report, outcome: Outcome) -> dict[str, Any]:
    """``{"event": "member", …}``: one member's outcome for a log shipper (``--log-format json``)."""
    shown = outcome.to_dict()
    event: dict[str, Any] = {"event": "member", "command": report.command, "group": report.group_name}
    event.update({name: shown.get(key) for key, name in _MEMBER_FIELDS.items()})
    event["dry_run"] = report.dry_run
    return event


def run_event(
    command: str,
    exit_code: int,
    seconds: float,
    *,
    report: Report | None = None,
    group: str | None = None,
    group_source: str | None = None,
    statuses: dict[str, int] | None = None,
    error: str | None = None,
    cycle: int | None = None,
) -> dict[str, Any]:
    """``{"event": "run", …}``: how a run ended, its counts by status and by action, for alerting."""
    event: dict[str, Any] = {"event": "run", "command": command}
    if cycle is not None:
        event["cycle"] = cycle
    event.update(
        group=report.group_name if report is not None else group,
        group_source=report.group_source if report is not None else group_source,
        exit_code=exit_code,
        duration_seconds=round(seconds, 3),
        dry_run=report.dry_run if report is not None else False,
        interrupted=report.interrupted if report is not None else False,
        held=report.held if report is not None else None,
        members=len(report.outcomes) if report is not None else None,
        statuses=report.summary if report is not None else (statuses or {}),
        actions=dict(report.plan) if report is not None else {},
        error=error if error is not None else report.fatal_error if report is not None else None,
    )
    return event


# -- status and check --------------------------------------------------------------------------------------------


def _token_needs_a_look(report: Report, outcome: Outcome) -> bool:
    """``status``: a stored token that is not usable by the records (its state and the reason are the row)."""
    return report.command == "status" and outcome.token_state not in {None, TokenState.USABLE}


def format_status_table(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """One row per member for ``status``: Defguard state, Entra match, what is stored (token masked), what the
    stored token is worth now (its state, the reason in the ``why`` table) and when it expires."""

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
                o.token_state.value if o.token_state else "-",
                o.token_expires_at.strftime("%Y-%m-%d %H:%M") if o.token_expires_at else "-",
                o.enrollment_url or "-",
            ]
        )
    columns = ["member", "active", "devices", "Entra user", "status", "would mint", "token", "state", "expires", "URL"]
    return table(rows, columns, width=width, color=color)


_MARKS = {CheckState.OK: "ok  ", CheckState.FAIL: "FAIL", CheckState.WARN: "warn", CheckState.SKIP: "skip"}


def format_checklist(checklist: Checklist, *, problems_only: bool = False) -> str:
    """The ``check`` output: one line per item, a fix hint under each failure, and the verdict last."""
    title = (
        f"check of group {shown_name(checklist.group_name)} ({checklist.group_source}), attribute set "
        f"{shown_name(checklist.attribute_set)}: Defguard {checklist.defguard_url}, "
        f"Microsoft Graph {checklist.graph_url}"
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


def format_export_summary(
    manifest: ExportManifest, notes: Sequence[str], *, width: int | None = None, color: bool = False
) -> str:
    """The end-of-export text: files written per kind, a status table, the members that need attention."""
    entries = manifest.entries
    files = [e for e in entries if e.status == "exported"]
    changes = ", ".join(
        f"{sum(1 for e in files if e.file is not None and e.file.value == kind)} {kind}"
        for kind in ("written", "replaced", "unchanged")
    )
    plural = "s" if len(entries) != 1 else ""
    title = (
        f"export of group {shown_name(manifest.group_name)} to {manifest.output_dir}: {len(files)} of {len(entries)} "
        f"member{plural} have a provisioning.json ({changes})"
    )
    lines = [title]
    if entries:
        summary = [[k, v] for k, v in manifest.summary.items()]
        lines.append(table(summary, ["status", "members"], width=width, color=color))
    problems = [e for e in entries if not e.ok]
    if problems:
        rows = [[e.username or e.user_principal_name or "-", e.status, e.error or ""] for e in problems[:_PROBLEM_ROWS]]
        lines.append(table(rows, ["member", "status", "why"], width=width, color=color))
        if len(problems) > _PROBLEM_ROWS:
            lines.append(f"… and {len(problems) - _PROBLEM_ROWS} more: see manifest.csv")
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"manifest: {manifest.output_dir / 'manifest.json'} and manifest.csv (owner-only)")
    return "\n".join(lines)
