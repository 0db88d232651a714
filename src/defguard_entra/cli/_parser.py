"""The argparse parser: every command, option, help text and epilog (docs/cli.md documents them all).

argparse here raises :class:`UsageError` instead of exiting, so that every usage error is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._version import __version__
from ..config import DEFAULT_ATTRIBUTE_SET, AuthMode, Cloud
from ..models import ENROLLED_POLICIES, GROUP_SOURCES, Status
from ._console import write
from ._help import (
    CHECK_DESCRIPTION,
    CHECK_EPILOG,
    CHECK_HELP,
    CLEAR_DESCRIPTION,
    CLEAR_EPILOG,
    CLEAR_HELP,
    DEMO_EPILOG,
    PROVISION_EPILOG,
    STATUS_DESCRIPTION,
    STATUS_EPILOG,
    STATUS_HELP,
    SYNC_DESCRIPTION,
    SYNC_EPILOG,
    SYNC_HELP,
    statuses,
)

__all__ = ["COMMANDS", "UsageError", "build_parser", "subparsers"]

COMMANDS = ("provision", "demo", "fetch-config", "export", "status", "clear", "check", "sign-out", "sync")
#: ``--token-cache``: see ``docs/cli.md``, "What is remembered where".
TOKEN_CACHE_CHOICES = ("auto", "unencrypted", "memory")
#: ``--log-format``: text (default) or one JSON object per line on stderr.
LOG_FORMATS = ("text", "json")


class UsageError(Exception):
    """A command line argparse (or the PowerShell-style normalising) refuses: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error is one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise UsageError(message)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:  # --help and --version: degrade to the stream's encoding, survive a closed pipe
            write(file if file is not None else sys.stderr, message, newline=False)

    def format_usage(self) -> str:
        return _shown_required(self, super().format_usage)

    def format_help(self) -> str:
        return _shown_required(self, super().format_help)


#: Options the usage line shows as required although argparse does not enforce them: the command checks them itself,
#: to say what is missing in its own words (``--group-name is required: the name of the group whose …``).
_SHOWN_REQUIRED = frozenset({"group_name"})


def _shown_required(parser: argparse.ArgumentParser, render: Any) -> str:
    marked = [a for a in parser._actions if a.dest in _SHOWN_REQUIRED and not a.required]  # noqa: SLF001
    for action in marked:
        action.required = True
    try:
        return str(render())
    finally:
        for action in marked:
            action.required = False


def _add_common(p: argparse.ArgumentParser, *, progress: bool = False) -> None:
    """The output options. ``--no-progress`` is offered only by a command that shows progress; the others accept
    it silently (scripts that pass it everywhere keep working) without listing it."""
    out = p.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)")
    out.add_argument(
        "-q", "--quiet", action="store_true", help="only errors on stderr; no progress, no summary, no explanation"
    )
    out.add_argument(
        "--no-progress", action="store_true", help="no progress line on stderr" if progress else argparse.SUPPRESS
    )
    out.add_argument("--debug", action="store_true", help="show tracebacks (secrets are still redacted)")
    out.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="stderr as text (default) or json: one JSON object per line, an event per member and one per run "
        "(counts, duration, exit code), and every warning, error and log line as an event; no progress line",
    )


def _add_graph(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Microsoft Graph")
    g.add_argument(
        "--auth",
        choices=[m.value for m in AuthMode],
        default=None,
        help="how to sign in (default auto: DEFGUARD_ENTRA_GRAPH_TOKEN if set, else a service principal "
        "from AZURE_* variables, else interactive browser sign-in falling back to a device code)",
    )
    g.add_argument("--tenant-id", metavar="ID", help="Entra tenant (env AZURE_TENANT_ID)")
    g.add_argument(
        "--client-id",
        metavar="ID",
        help="application (client) id (env AZURE_CLIENT_ID); interactive sign-in defaults to "
        "Microsoft Graph Command Line Tools, like Connect-MgGraph",
    )
    g.add_argument("--cloud", choices=[c.value for c in Cloud], default=None, help="national cloud (default global)")
    g.add_argument(
        "--graph-url",
        metavar="URL",
        help="Graph API base URL with version, e.g. https://graph.microsoft.us/v1.0 "
        "(env DEFGUARD_ENTRA_GRAPH_URL); http only for loopback emulators",
    )
    g.add_argument(
        "--token-cache",
        choices=TOKEN_CACHE_CHOICES,
        default=None,
        help="where a user's sign-in is remembered between runs (env DEFGUARD_ENTRA_TOKEN_CACHE): auto (default) "
        "the platform's encrypted store, or memory only where there is none; unencrypted: an owner-only plain "
        "file where there is no encrypted store (anyone who can read it can act as you); memory: never on disk",
    )
    g.add_argument(
        "--browser-timeout",
        type=float,
        metavar="SECONDS",
        default=None,
        help="how long a browser sign-in may wait for the redirect before a device code is used instead (default 60)",
    )
    g.add_argument(
        "--attribute-set-name",
        "-AttributeSetName",
        metavar="NAME",
        default=None,
        help=f"custom security attribute set (default {DEFAULT_ATTRIBUTE_SET})",
    )


def _add_defguard(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("Defguard")
    d.add_argument("--url", "-Url", metavar="URL", help="Defguard core base URL (env DEFGUARD_URL)")
    d.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept an http:// Defguard URL on a non-loopback host (the API token and enrollment tokens then "
        "cross the network unencrypted; a warning is printed). Loopback http:// needs no flag",
    )
    d.add_argument(
        "--api-token",
        "-ApiToken",
        metavar="TOKEN",
        help="Defguard API token; '-' reads it from stdin (prompting without echo on a terminal). Prefer env "
        "DEFGUARD_API_TOKEN or --api-token-file: a token on the command line is visible to other local users",
    )
    d.add_argument(
        "--api-token-file",
        metavar="PATH",
        help="read the Defguard API token from this file (UTF-8, or UTF-16 with a BOM; one line)",
    )
    d.add_argument("--ca-bundle", metavar="PATH", help="PEM file with the CA that signed Defguard's certificate")
    d.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per-request timeout (default 30)")


def _group_command(sub: Any, name: str, verb: str, *, users: bool = True, **texts: str) -> argparse.ArgumentParser:
    """A command that works on a group's members: its parser with the Defguard, Graph and group options (and
    ``--user``, unless the command looks at the group as a whole)."""
    command: argparse.ArgumentParser = sub.add_parser(name, allow_abbrev=False, **texts)
    _add_defguard(command)
    _add_graph(command)
    _add_group_options(command, verb, users=users)
    return command


def _add_report(p: argparse.ArgumentParser) -> Any:
    """``--report PATH`` in its own group (returned, for options that go with it)."""
    report = p.add_argument_group("report")
    report.add_argument("--report", metavar="PATH", help="write a .json or .csv report (tokens masked)")
    return report


def _add_tail(
    p: argparse.ArgumentParser, *, writes: bool, mints: bool = False, report: bool = False, progress: bool = False
) -> None:
    """The groups that close a group command's options: pace, ``--report`` (if it writes one), output."""
    _add_retry_options(p, writes=writes, mints=mints)
    if report:
        _add_report(p)
    _add_common(p, progress=progress)


def _add_lifetime(group: Any, help_text: str) -> None:
    """``--enrollment-token-expiration-time`` (``-EnrollmentTokenExpirationTime``, as the PowerShell script)."""
    group.add_argument(
        "--enrollment-token-expiration-time",
        "--lifetime",
        "-EnrollmentTokenExpirationTime",
        metavar="DURATION",
        help=help_text,
    )


def _add_only_missing(group: Any, help_text: str) -> None:
    group.add_argument("--only-missing", action="store_true", help=help_text)


def _add_enrolled(group: Any, verb: str) -> None:
    """``--enrolled``: one definition for every command that decides who gets a token."""
    group.add_argument(
        "--enrolled",
        choices=ENROLLED_POLICIES,
        default="auto",
        metavar="{auto,desktop,skip}",
        help=f"whom to {verb} for: auto (default) every member without a device, with an enrollment token where "
        "Defguard accepts one, else a desktop-activation token (directory-synced and SSO users); desktop: also "
        "members who have a device; skip: only members Defguard does not flag enrolled (misses directory-synced "
        "users). Desktop-activation tokens always get the server's default lifetime",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="defguard-entra",
        allow_abbrev=False,
        description="Provision Defguard desktop VPN clients for Microsoft Entra ID users: mint enrollment tokens "
        "in Defguard and store them as custom security attributes in Entra.",
        epilog="With no command, 'provision' is implied, so the PowerShell example works as written: "
        "python -m defguard_entra -Url https://defguard.example.com -ApiToken dg-… -GroupName DgProvisioning. "
        "Exit codes: 0 ok, 1 some members need attention, 2 usage error, 3 cannot run, 4 a sync plan held by "
        "--max-changes, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    prov = _group_command(
        sub,
        "provision",
        "provision",
        help="mint enrollment tokens for a group and store them in Entra",
        description="Mint a Defguard enrollment token for every member of a group and store it, "
        "with the enrollment URL, in the member's Entra custom security attributes.",
        epilog=PROVISION_EPILOG,
    )
    run = prov.add_argument_group("what to provision")
    _add_lifetime(run, "token lifetime, e.g. 24h, 1d, 2w, 90m, 1.5h (default: the server's, usually 24h)")
    _add_enrolled(run, "mint")
    run.add_argument("--dry-run", action="store_true", help="read everything, mint and write nothing")
    _add_only_missing(
        run,
        "skip members whose attribute set already holds a token and URL (trusts what is stored: "
        "a token's validity cannot be checked from outside Defguard)",
    )
    _add_retry_options(prov, writes=True, mints=True)
    _add_report(prov).add_argument(
        "--reveal-tokens", action="store_true", help="put full tokens in the report (owner-only file)"
    )
    _add_common(prov, progress=True)
    _add_sync_command(sub)

    demo = sub.add_parser(
        "demo",
        help="run provision against built-in emulators (no tenant needed)",
        description="Start the Defguard and Graph emulators with a sample organisation, run "
        "provision against them over real HTTP, and explain the result.",
        epilog=DEMO_EPILOG,
        allow_abbrev=False,
    )
    demo.add_argument("--defguard-version", choices=["1.6", "2.0"], default="2.0", help="emulated Defguard line")
    demo.add_argument("--report", metavar="PATH", help="also write the report here (.json or .csv)")
    _add_common(demo, progress=True)
    _add_client_config_commands(sub)
    _add_operations_commands(sub)
    return parser


def _add_sync_command(sub: Any) -> None:
    sync = _group_command(sub, "sync", "sync", help=SYNC_HELP, description=SYNC_DESCRIPTION, epilog=SYNC_EPILOG)
    what = sync.add_argument_group("what to keep true")
    _add_lifetime(what, "lifetime of the tokens minted, e.g. 24h, 1d, 2w (default: the server's, usually 24h)")
    _add_enrolled(what, "mint")
    what.add_argument(
        "--refresh-before",
        metavar="DURATION",
        help="replace a stored token that expires within this long, e.g. 6h (default: a quarter of the lifetime)",
    )
    what.add_argument(
        "--max-changes",
        metavar="N|P%",
        help="the most destructive changes (clears, and re-mints that replace a stored token) a run may make, as "
        "a number of members or a percentage of the group; a plan beyond it changes nothing and exits 4 (default: "
        "10%% of the group or 25 members, whichever is larger)",
    )
    what.add_argument("--dry-run", action="store_true", help="read everything, change nothing: print the plan")
    what.add_argument(
        "--watch",
        metavar="INTERVAL",
        help="run again every INTERVAL (e.g. 15m, 1h) until stopped; SIGTERM or Ctrl-C finishes the cycle in "
        "flight, then exits (a second one stops the cycle too). Intervals below a minute are allowed (drills, "
        "tests) but warned about",
    )
    _add_tail(sync, writes=True, mints=True, report=True, progress=True)


# -- fetch-config and export: the desktop client's provisioning.json -------------------------------------------


def _add_client_config_commands(sub: Any) -> None:
    fetch = sub.add_parser(
        "fetch-config",
        help="on the user's machine: write the Defguard client's provisioning.json from Entra",
        description="Sign in as the current user, read the enrollment URL and token that provision stored in "
        "their Entra custom security attributes, and write provisioning.json where the Defguard desktop client "
        "reads it on its next start: Windows %APPDATA%\\net.defguard, macOS (sandboxed) ~/Library/Containers/"
        "net.defguard/Data/Library/Application Support/"
        "net.defguard, Linux $XDG_DATA_HOME/net.defguard (default ~/.local/share). The token is never shown.",
        epilog="Exit codes: 0 written (or already identical), 1 attributes missing, incomplete or unreadable, or a "
        "different file present without --force, 2 usage error, 3 sign-in or Graph failure.",
        allow_abbrev=False,
    )
    _add_graph(fetch)
    target = fetch.add_argument_group("file")
    target.add_argument(
        "--output", metavar="PATH", help="write here instead of the client's data directory for this OS"
    )
    target.add_argument(
        "--force", action="store_true", help="replace an existing provisioning.json that holds something else"
    )
    _add_common(fetch)

    export = _group_command(
        sub,
        "export",
        "export",
        help="admin side: one provisioning.json per group member, for device management",
        description="Read the enrollment URL and token provision stored for each member of a group and write "
        "DIR/<userPrincipalName>/provisioning.json for each, plus manifest.json and manifest.csv accounting for "
        "every member. Files are owner-only and hold live tokens: hand them to your device management, not to "
        "a share.",
        epilog="Manifest statuses: exported (a provisioning.json written, replaced or unchanged), else the "
        "member's status: "
        + statuses(
            dict.fromkeys(
                (
                    Status.ALREADY_ENROLLED,
                    Status.DISABLED,
                    Status.NO_EMAIL,
                    Status.NOT_FOUND,
                    Status.AMBIGUOUS,
                    Status.NOT_IN_DEFGUARD,
                    Status.FAILED,
                    Status.NOT_SET,
                ),
                "",
            )
        )
        + ". Exit codes: 0 every member exported or needs no file (disabled, already enrolled), 1 some "
        "members need attention, 2 usage error, 3 the run could not start, 130 interrupted (with --provision).",
    )
    what = export.add_argument_group("what to export")
    what.add_argument(
        "--output-dir", metavar="DIR", required=True, help="where to write the files (created owner-only if missing)"
    )
    what.add_argument(
        "--deep-links",
        action="store_true",
        help="add each member's defguard://addinstance link to the manifest (it holds the token)",
    )
    _add_enrolled(what, "export")
    mint = export.add_argument_group("mint first (--provision)")
    mint.add_argument(
        "--provision", action="store_true", help="run provision for the group first, in the same run, then export"
    )
    _add_lifetime(mint, "with --provision: token lifetime, e.g. 24h, 1d (default: the server's)")
    _add_only_missing(mint, "with --provision: mint only for members whose attributes hold no token yet")
    _add_tail(export, writes=True, mints=True, progress=True)


# -- status, clear and check --------------------------------------------------------------------------------------


def _add_group_options(p: argparse.ArgumentParser, verb: str, *, users: bool = True) -> None:
    g = p.add_argument_group("which group")
    g.add_argument("--group-name", "-GroupName", metavar="NAME", help=f"the group to {verb} (required, or --group-id)")
    g.add_argument(
        "--group-id",
        metavar="ID",
        help="instead of --group-name, the group's id: the Defguard group id (as GET /api/v1/group-info lists it) "
        "or, with --group-source entra, the Entra group's object id",
    )
    g.add_argument(
        "--group-source",
        choices=GROUP_SOURCES,
        default="defguard",
        help="where the group lives: a Defguard group (default) or an Entra group by displayName",
    )
    if users:
        g.add_argument(
            "--user",
            dest="users",
            action="append",
            metavar="NAME",
            help=f"{verb} only this member: a Defguard username or e-mail address (case-insensitive); repeat for "
            "more. A name that is no member's is refused with the closest member names, before anything is sent",
        )


def _add_retry_options(p: argparse.ArgumentParser, *, writes: bool, mints: bool = False) -> None:
    pace = p.add_argument_group("pace")
    if mints:
        pace.add_argument(
            "--concurrency",
            type=int,
            default=None,
            metavar="N",
            help="the most Defguard token requests in flight (default 32; starts at 16 and adapts to the server)",
        )
        pace.add_argument(
            "--stall-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="end the run when neither Defguard nor Graph has answered for this long, the members in flight "
            "failed (default: twice the longest one request may take, plus the longest back-off: 90 at --timeout 30)",
        )
    if writes:
        pace.add_argument(
            "--graph-write-rate",
            type=float,
            default=None,
            metavar="W",
            help="the most Graph attribute writes per second (default: no ceiling; writes start at full speed and "
            "slow to Graph's sustainable 20/s only when Graph signals its budget is nearly spent)",
        )
    pace.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="retries per request on throttling, 5xx and dropped connections (default 7)",
    )
    pace.add_argument(
        "--max-retry-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up on a request (and report its member failed) after this long (default 120)",
    )


def _add_operations_commands(sub: Any) -> None:
    status = _group_command(
        sub, "status", "show", help=STATUS_HELP, description=STATUS_DESCRIPTION, epilog=STATUS_EPILOG
    )
    _add_enrolled(status, "judge would_mint")
    _add_tail(status, writes=False, report=True)

    clear = _group_command(sub, "clear", "clear", help=CLEAR_HELP, description=CLEAR_DESCRIPTION, epilog=CLEAR_EPILOG)
    what = clear.add_argument_group("what to clear")
    what.add_argument(
        "--all",
        dest="all_members",
        action="store_true",
        help="clear every member's attributes, also of members not enrolled yet (their tokens stop being usable "
        "by the desktop client)",
    )
    what.add_argument("--dry-run", action="store_true", help="read everything, write nothing: who would be cleared")
    _add_tail(clear, writes=True, report=True, progress=True)

    check = _group_command(
        sub, "check", "check", users=False, help=CHECK_HELP, description=CHECK_DESCRIPTION, epilog=CHECK_EPILOG
    )
    check.add_argument_group("write permission").add_argument(
        "--probe-write",
        action="store_true",
        help="prove write permission with a write that changes nothing (the first member's current values written "
        "back), as provision does before its first token; without it, write permission is judged from the access "
        "token's claims only",
    )
    _add_tail(check, writes=False)

    sign_out = sub.add_parser(
        "sign-out",
        help="forget the remembered Microsoft Entra sign-in",
        description="Forget every sign-in this tool remembered on this machine: the sign-in records and the "
        "accounts and tokens in this tool's own token cache (other tools' caches are left alone). Says what it "
        "removed; nothing remembered is not an error.",
        epilog="Exit codes: 0 signed out (or nothing was remembered), 1 something could not be removed, 130 "
        "interrupted.",
        allow_abbrev=False,
    )
    _add_common(sign_out)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command, by name."""
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public way to the subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}
