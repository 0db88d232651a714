"""What a command's result prints, and the exit code it means: the one place both are decided.

The handlers in :mod:`._commands` return data (:class:`ReportRun`, a ``Checklist``, :class:`FetchRun`,
:class:`ExportRun`, :class:`DemoRun`); :func:`present` writes it to the console (and ``--report``), and
:func:`exit_code` turns it into the process's exit code.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .._files import open_to_others
from ..exceptions import ConfigurationError
from ..models import Checklist, Report, Status
from ._render import (
    command_line,
    format_checklist,
    format_export_summary,
    format_status_table,
    format_summary,
    member_event,
    shown_name,
    write_report,
)

if TYPE_CHECKING:
    from .._desktop_client import WriteOutcome
    from .._export import ExportManifest
    from .._sign_in_record import SignedOut
    from ._console import Console

__all__ = [
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_HELD",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "DemoRun",
    "ExportRun",
    "FetchRun",
    "ReportRun",
    "Result",
    "SignOutRun",
    "exit_code",
    "present",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_HELD, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


@attrs.frozen
class ReportRun:
    """A ``provision``, ``status`` or ``clear`` run: its report, where ``--report`` goes, and how to show it."""

    report: Report
    path: Path | None = None
    reveal_tokens: bool = False
    #: ``status``: one row per member before the summary.
    table: bool = False


@attrs.frozen
class FetchRun:
    """``fetch-config``: the provisioning.json written (or found identical) and the URL the client enrolls at."""

    target: Path
    outcome: WriteOutcome
    enrollment_url: str


@attrs.frozen
class ExportRun:
    """``export``: the manifest of the files written, or ``None`` when ``--provision`` did not complete."""

    output_dir: Path
    manifest: ExportManifest | None
    notes: Sequence[str] = ()
    #: With ``--provision``: that run (already presented when it ended, before the export began).
    provisioned: ReportRun | None = None
    #: Windows: the directory is outside the user's profile, so its files take an ACL that may let others read them.
    outside_profile: bool = False


@attrs.frozen
class SignOutRun:
    """``sign-out``: what was forgotten (``SignedOut`` of ``_credentials``), and where it was kept."""

    signed_out: SignedOut
    directory: Path | None


@attrs.frozen
class DemoRun:
    """``demo``: whether the sample organisation ended as expected (the demo presents itself as it goes)."""

    ok: bool
    interrupted: bool = False


Result = ReportRun | Checklist | FetchRun | ExportRun | DemoRun | SignOutRun


def exit_code(result: Result) -> int:
    """0 ok, 1 some members need attention, 3 cannot run (or not ready), 4 a ``sync`` plan held by
    ``--max-changes``, 130 interrupted."""
    if isinstance(result, ReportRun):
        return _report_code(result.report)
    if isinstance(result, Checklist):
        return EXIT_OK if result.ready else EXIT_FATAL
    if isinstance(result, FetchRun):
        return EXIT_OK
    if isinstance(result, SignOutRun):
        return EXIT_FAILED if result.signed_out.problems else EXIT_OK
    if isinstance(result, ExportRun):
        if result.manifest is None:
            return exit_code(result.provisioned) if result.provisioned is not None else EXIT_FATAL
        return EXIT_OK if result.manifest.ok else EXIT_FAILED
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


def _report_code(report: Report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.fatal_error:
        return EXIT_FATAL
    if report.held:
        return EXIT_HELD
    return EXIT_OK if report.ok else EXIT_FAILED


def present(result: Result, console: Console) -> None:
    """Write ``result`` to the console (``-q`` keeps only what must be seen) and a report to ``--report``."""
    if isinstance(result, ReportRun):
        _present_report(result, console)
    elif isinstance(result, Checklist):
        console.out(format_checklist(result, problems_only=console.quiet))
    elif isinstance(result, FetchRun):
        _present_fetch(result, console)
    elif isinstance(result, ExportRun):
        _present_export(result, console)
    elif isinstance(result, SignOutRun):
        _present_sign_out(result, console)


def _present_sign_out(run: SignOutRun, console: Console) -> None:
    """One line per kind of thing forgotten (user names and client ids: no secret), or that nothing was."""
    done = run.signed_out
    for record in done.records:
        console.out(f"forgot the sign-in of {record.username} (client {record.client_id}, tenant {record.tenant})")
    if done.accounts:
        console.out(f"removed from the token cache: {', '.join(done.accounts)} (accounts and their tokens)")
    if done.files:
        console.out(f"deleted {len(done.files)} cache file{'s' if len(done.files) != 1 else ''} in {run.directory}")
    if not (done.records or done.accounts or done.files) and not done.problems:
        where = f" in {run.directory}" if run.directory is not None else ""
        console.out(f"nothing to forget: no sign-in of this tool is remembered{where}")
    for problem in done.problems:
        console.error(problem)


def _present_report(run: ReportRun, console: Console) -> None:
    report = run.report
    width, color = console.width, console.color
    if console.json:
        for outcome in report.outcomes:
            console.event(member_event(report, outcome))
    if run.table and report.outcomes and not console.quiet:
        console.out(format_status_table(report, width=width, color=color))
    path = _write_report_somewhere(report, run.path, console, reveal=run.reveal_tokens) if run.path else None
    if not report.outcomes:
        console.out(f"group {shown_name(report.group_name)} has no members: nothing to do")
    elif not console.quiet:
        console.out(format_summary(report, width=width, color=color, report_path=path))
    if path is not None and not console.quiet:
        console.info(f"report written to {path}")
    if report.fatal_error:
        console.error(report.fatal_error)
    if report.held:
        console.warn(f"held: {report.held}")
    if report.interrupted:
        _finish_line(report, console)


def _finish_line(report: Report, console: Console) -> None:
    """The last line of an interrupted run: how many members were left, and the command that finishes the job."""
    left = sum(1 for o in report.outcomes if o.status is Status.INTERRUPTED)
    words = [report.command, "--group-name", report.group_name]
    if report.group_source != "defguard":
        words += ["--group-source", str(report.group_source)]
    options = report.audit.get("options", {})
    for name in options.get("users") or ():
        words += ["--user", name]
    if report.command == "provision":
        words.append("--only-missing")  # who got a token keeps it; the others get theirs
    elif report.command == "clear" and options.get("all"):
        words.append("--all")
    console.warn(
        f"interrupted: {left:,} of {len(report.outcomes):,} member{'s' if len(report.outcomes) != 1 else ''} "
        f"not done. To finish the job, run (with the same other options):  {command_line(words)}"
    )


def _write_report_somewhere(report: Report, path: Path, console: Console, *, reveal: bool) -> Path | None:
    """Write the report to ``path`` or, when that fails at the end of a run (the directory went away, the disk
    filled), to a fallback file that is named: everything was sent, so the exit code must stay the members'."""
    try:
        return write_report(report, path, reveal_tokens=reveal)
    except (OSError, ConfigurationError) as exc:
        stamp = report.finished_at.strftime("%Y%m%dT%H%M%SZ")
        fallback = Path(tempfile.gettempdir()) / f"defguard-entra-{report.command}-{stamp}{path.suffix or '.json'}"
        try:
            written = write_report(report, fallback, reveal_tokens=reveal)
        except (OSError, ConfigurationError) as again:
            console.warn(f"could not write the report to {path} ({exc}) nor to {fallback} ({again})")
            return None
        console.warn(f"could not write the report to {path} ({exc}): wrote it to {written} instead")
        return written


def _present_fetch(run: FetchRun, console: Console) -> None:
    if console.quiet:
        return
    if run.outcome.value == "unchanged":
        console.out(f"{run.target} already holds this configuration: nothing to do")
    else:
        verb = "replaced" if run.outcome.value == "replaced" else "wrote"
        console.out(
            f"{verb} {run.target}: the Defguard client enrolls at {run.enrollment_url} on its next start "
            "(it reads the file only while it has no instances)"
        )


def _present_export(run: ExportRun, console: Console) -> None:
    manifest = run.manifest
    if manifest is None:
        console.error("nothing exported: provision did not complete")
        return
    if console.json:
        for entry in manifest.entries:
            console.event(
                {
                    "event": "member",
                    "command": "export",
                    "group": manifest.group_name,
                    "username": entry.username,
                    "email": entry.email,
                    "user_principal_name": entry.user_principal_name,
                    "status": entry.status,
                    "reason": entry.error,
                }
            )
    if not console.quiet:
        console.out(format_export_summary(manifest, run.notes, width=console.width, color=console.color))
    if manifest.stale:
        shown = ", ".join(manifest.stale[:5]) + (" …" if len(manifest.stale) > 5 else "")
        console.warn(
            f"{len(manifest.stale)} member director{'ies' if len(manifest.stale) != 1 else 'y'} in {run.output_dir} "
            f"are not part of this export (left from an earlier run? their tokens are likely dead): {shown}; "
            "remove them before distributing"
        )
    if open_to_others(run.output_dir.stat().st_mode, sys.platform):
        console.warn(
            f"{run.output_dir} is open to other local users (the files inside are owner-only): consider chmod 700"
        )
    elif run.outside_profile:
        console.warn(
            f"{run.output_dir} is outside your user profile: on Windows the files inside take that folder's "
            "permissions, which may let other local users read them; export under %USERPROFILE%, or restrict the "
            "folder to yourself"
        )
