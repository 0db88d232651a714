"""The command line: parse, call the library, print. The only module that reads ``os.environ`` or writes to stdout.

``python -m defguard_entra [provision] -Url … -ApiToken … -GroupName …`` works as the PowerShell script's example
does; ``demo`` runs the whole flow against the built-in emulators.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from ._durations import parse_lifetime
from ._redact import RedactingFilter
from ._version import __version__
from .config import DEFAULT_ATTRIBUTE_SET, AuthMode, Cloud, Settings, validate_attribute_set_name
from .exceptions import ConfigurationError, DefguardEntraError, DefguardError, EntraError, PreflightError
from .models import Report, Secret

__all__ = ["EXIT_FAILED", "EXIT_FATAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
COMMANDS = ("provision", "demo")

log = logging.getLogger("defguard_entra")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error is one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise _UsageError(message)


def _add_common(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)")
    out.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr; no summary table")
    out.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    out.add_argument("--debug", action="store_true", help="show tracebacks (secrets are still redacted)")


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
        "--api-token",
        "-ApiToken",
        metavar="TOKEN",
        help="Defguard API token; '-' reads it from stdin. Prefer env DEFGUARD_API_TOKEN or "
        "--api-token-file: a token on the command line is visible to other local users",
    )
    d.add_argument("--api-token-file", metavar="PATH", help="read the Defguard API token from this file")
    d.add_argument("--ca-bundle", metavar="PATH", help="PEM file with the CA that signed Defguard's certificate")
    d.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per-request timeout (default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="defguard-entra",
        allow_abbrev=False,
        description="Provision Defguard desktop VPN clients for Microsoft Entra ID users: mint enrollment tokens "
        "in Defguard and store them as custom security attributes in Entra.",
        epilog="With no command, 'provision' is implied, so the PowerShell example works as written: "
        "python -m defguard_entra -Url https://defguard.example.com -ApiToken dg-… -GroupName DgProvisioning. "
        "Exit codes: 0 ok, 1 some members need attention, 2 usage error, 3 cannot run, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    prov = sub.add_parser(
        "provision",
        help="mint enrollment tokens for a group and store them in Entra",
        description="Mint a Defguard enrollment token for every member of a group and store it, "
        "with the enrollment URL, in the member's Entra custom security attributes.",
        allow_abbrev=False,
    )
    _add_defguard(prov)
    _add_graph(prov)
    run = prov.add_argument_group("what to provision")
    run.add_argument("--group-name", "-GroupName", metavar="NAME", help="the group to provision (required)")
    run.add_argument(
        "--group-source",
        choices=["defguard", "entra"],
        default="defguard",
        help="where the group lives: a Defguard group (default) or an Entra group by displayName",
    )
    run.add_argument(
        "--enrollment-token-expiration-time",
        "-EnrollmentTokenExpirationTime",
        metavar="DURATION",
        help="token lifetime, e.g. 24h, 1d, 2w, 90m, 1.5h (default: the server's, usually 24h)",
    )
    run.add_argument(
        "--enrolled",
        choices=["skip", "desktop"],
        default="skip",
        help="already-enrolled users: skip them (default) or give them a desktop-configuration token "
        "(server-default lifetime)",
    )
    run.add_argument("--dry-run", action="store_true", help="read everything, mint and write nothing")
    run.add_argument(
        "--only-missing",
        action="store_true",
        help="skip members whose attribute set already holds a token and URL (trusts what is stored: "
        "a token's validity cannot be checked from outside Defguard)",
    )
    perf = prov.add_argument_group("pace")
    perf.add_argument(
        "--concurrency", type=int, default=None, metavar="N", help="parallel Defguard token requests (default 16)"
    )
    perf.add_argument(
        "--graph-write-rate",
        type=float,
        default=None,
        metavar="W",
        help="Graph attribute writes per second (default 20, Graph's 3,000 per 150 s; 0: no limit)",
    )
    perf.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="retries per request on throttling, 5xx and dropped connections (default 7)",
    )
    perf.add_argument(
        "--max-retry-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up on a request (and report its member failed) after this long (default 120)",
    )
    rep = prov.add_argument_group("report")
    rep.add_argument("--report", metavar="PATH", help="write a .json or .csv report (tokens masked)")
    rep.add_argument("--reveal-tokens", action="store_true", help="put full tokens in the report (owner-only file)")
    _add_common(prov)
    prov.set_defaults(handler=_cmd_provision)

    demo = sub.add_parser(
        "demo",
        help="run provision against built-in emulators (no tenant needed)",
        description="Start the Defguard and Graph emulators with a sample organisation, run "
        "provision against them over real HTTP, and explain the result.",
        allow_abbrev=False,
    )
    demo.add_argument("--defguard-version", choices=["1.6", "2.0"], default="2.0", help="emulated Defguard line")
    demo.add_argument("--report", metavar="PATH", help="also write the report here (.json or .csv)")
    _add_common(demo)
    demo.set_defaults(handler=_cmd_demo)
    return parser


# -- settings from environment + flags -------------------------------------------------------------------------


def _read_api_token(args: argparse.Namespace, stdin: TextIO, warn: Callable[[str], None]) -> Secret | None:
    literal, path = getattr(args, "api_token", None), getattr(args, "api_token_file", None)
    if literal is not None and path is not None:
        raise ConfigurationError("give the API token once: --api-token or --api-token-file, not both")
    if path is not None:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"--api-token-file {path!r}: {exc.strerror or exc}") from None
        if not text:
            raise ConfigurationError(f"--api-token-file {path!r} is empty")
        return Secret(text)
    if literal == "-":
        text = stdin.readline().strip()
        if not text:
            raise ConfigurationError("--api-token -: nothing on stdin; pipe the token in, e.g. < token.txt")
        return Secret(text)
    if literal is not None:
        if not literal.strip():
            raise ConfigurationError("--api-token is empty")
        warn(
            "the API token on the command line is visible to other local users (process list, shell history): "
            "prefer DEFGUARD_API_TOKEN or --api-token-file"
        )
        return Secret(literal.strip())
    return None


def load_settings(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO, warn: Callable[[str], None]
) -> Settings:
    base = Settings.from_env(environ)
    graph = base.graph
    graph = attrs.evolve(
        graph,
        auth=AuthMode(args.auth) if getattr(args, "auth", None) else graph.auth,
        tenant_id=getattr(args, "tenant_id", None) or graph.tenant_id,
        client_id=getattr(args, "client_id", None) or graph.client_id,
        cloud=Cloud(args.cloud) if getattr(args, "cloud", None) else graph.cloud,
        graph_url=getattr(args, "graph_url", None) or graph.graph_url,
    )
    token = _read_api_token(args, stdin, warn) or base.defguard_token
    changes: dict[str, Any] = {"graph": graph, "defguard_token": token}
    if getattr(args, "url", None):
        changes["defguard_url"] = args.url
    if getattr(args, "ca_bundle", None):
        if not Path(args.ca_bundle).expanduser().is_file():
            raise ConfigurationError(f"--ca-bundle {args.ca_bundle!r} is not a file")
        changes["ca_bundle"] = str(Path(args.ca_bundle).expanduser())
    if getattr(args, "attribute_set_name", None) is not None:
        changes["attribute_set"] = validate_attribute_set_name(args.attribute_set_name)
    if getattr(args, "enrollment_token_expiration_time", None) is not None:
        changes["token_lifetime"] = parse_lifetime(args.enrollment_token_expiration_time)
    for flag, key in (("timeout", "timeout"), ("concurrency", "concurrency"), ("graph_write_rate", "graph_write_rate")):
        if getattr(args, flag, None) is not None:
            changes[key] = getattr(args, flag)
    retries, retry_time = getattr(args, "retries", None), getattr(args, "max_retry_time", None)
    if retries is not None or retry_time is not None:
        if retries is not None and retries < 0:
            raise ConfigurationError("--retries must be 0 or more")
        if retry_time is not None and retry_time <= 0:
            raise ConfigurationError("--max-retry-time must be a positive number of seconds")
        changes["retry"] = attrs.evolve(
            base.retry,
            **({"attempts": retries + 1} if retries is not None else {}),
            **({"timeout": retry_time} if retry_time is not None else {}),
        )
    return attrs.evolve(base, **changes).validate()


# -- output ----------------------------------------------------------------------------------------------------


class _Console:
    """stdout for results, stderr for progress, warnings and errors; everything through the redaction filter."""

    def __init__(self, stdout: TextIO, stderr: TextIO, redactor: RedactingFilter, *, quiet: bool) -> None:
        self.stdout, self.stderr, self.redactor, self.quiet = stdout, stderr, redactor, quiet

    def out(self, text: str) -> None:
        print(self.redactor.redact(text), file=self.stdout, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            print(self.redactor.redact(text), file=self.stderr, flush=True)

    def warn(self, text: str) -> None:
        print("warning: " + self.redactor.redact(text), file=self.stderr, flush=True)

    def error(self, text: str) -> None:
        print("error: " + self.redactor.redact(text), file=self.stderr, flush=True)


class _ProgressLine:
    """Members done, on stderr: a rewritten line on a terminal, a plain line every 10 % (or 5 s) otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.tty = stream.isatty()
        self._last_pct = -1
        self._last_time = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        with self._lock:
            now = time.monotonic()
            if self.tty:
                end = "\n" if done >= total else ""
                self.stream.write(f"\r{self.label}: {done}/{total} ({pct}%){end}")
            elif done >= total or pct >= self._last_pct + 10 or now - self._last_time >= 5:
                self.stream.write(f"{self.label}: {done}/{total} ({pct}%)\n")
            else:
                return
            self._last_pct, self._last_time = pct, now
            self.stream.flush()


def _setup_logging(args: argparse.Namespace, stderr: TextIO, redactor: RedactingFilter) -> logging.Handler:
    level = logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    elif getattr(args, "verbose", 0) == 1:
        level = logging.INFO
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, level))
    if level > logging.DEBUG:  # the SDKs are chatty at INFO: keep them to warnings unless -vv
        for name in ("azure", "msal", "httpx", "urllib3", "kiota_http", "stamina"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return handler


# -- commands --------------------------------------------------------------------------------------------------


def _exit_code(report: Report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.fatal_error:
        return EXIT_FATAL
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_provision(args: argparse.Namespace, ctx: _Context) -> int:
    settings = load_settings(args, ctx.environ, ctx.stdin, ctx.console.warn)
    if not args.group_name or not args.group_name.strip():
        raise ConfigurationError("--group-name is required: the name of the group whose members to provision")
    if args.dry_run and args.reveal_tokens:
        raise ConfigurationError("--reveal-tokens has nothing to reveal in a --dry-run")
    report_path = None
    if args.report:
        from ._render import check_report_path  # noqa: PLC0415

        report_path = check_report_path(args.report)
    settings.require_defguard()
    if settings.defguard_token is not None:
        ctx.redactor.add(settings.defguard_token.value)
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    from ._service import GROUP_SCOPES, PROVISION_SCOPES, ProvisioningService  # noqa: PLC0415

    scopes = PROVISION_SCOPES + (GROUP_SCOPES if args.group_source == "entra" else ())
    with ProvisioningService.from_settings(settings, prompt=ctx.console.info, delegated_scopes=scopes) as service:
        progress = None if (args.no_progress or args.quiet) else _ProgressLine(ctx.console.stderr, "provisioning")
        report = service.provision(
            args.group_name,
            group_source=args.group_source,
            lifetime=settings.token_lifetime,
            enrolled=args.enrolled,
            dry_run=args.dry_run,
            only_missing=args.only_missing,
            progress=progress,
            stop=ctx.stop,
        )
    return _finish(report, ctx, report_path, reveal=args.reveal_tokens, quiet=args.quiet)


def _finish(report: Report, ctx: _Context, report_path: Path | None, *, reveal: bool, quiet: bool) -> int:
    from ._render import format_summary, write_report  # noqa: PLC0415

    for outcome in report.outcomes:
        if outcome.enrollment_token is not None:
            ctx.redactor.add(outcome.enrollment_token.value)
    if report_path is not None:
        write_report(report, report_path, reveal_tokens=reveal)
    if not report.outcomes:
        ctx.console.out(f"group {report.group_name!r} has no members: nothing to do")
    elif not quiet:
        ctx.console.out(format_summary(report))
    if report_path is not None and not quiet:
        ctx.console.info(f"report written to {report_path}")
    if report.fatal_error:
        ctx.console.error(report.fatal_error)
    return _exit_code(report)


_DEMO_EXPLAIN = {
    "provisioned": "got a fresh enrollment token, stored with the URL in their Entra attributes",
    "already_enrolled": "already enrolled in Defguard: skipped (--enrolled desktop would give a desktop token)",
    "disabled": "disabled in Defguard: skipped, no token minted",
    "no_email": "no e-mail in Defguard, so no way to find them in Entra: skipped",
    "not_found": "no Entra user with that mail, UPN or other mail: no token minted (their old one survives)",
    "ambiguous": "two Entra users share the address: reported instead of guessing, no token minted",
}


def _cmd_demo(args: argparse.Namespace, ctx: _Context) -> int:
    from .testing import environment, running_emulators  # noqa: PLC0415

    console = ctx.console
    with running_emulators(args.defguard_version) as (defguard, graph, scenario):
        assert scenario is not None
        console.info(
            f"demo: Defguard {defguard.version} emulator at {defguard.url}, Microsoft Graph emulator at "
            f"{graph.url}; group {scenario.group!r} has {len(scenario.expected)} members"
        )
        console.info(
            "demo: running  python -m defguard_entra provision --group-name "
            f"{scenario.group!r}  against them (real HTTP on 127.0.0.1)"
        )
        argv = ["provision", "--group-name", scenario.group, "--enrollment-token-expiration-time", "1d"]
        argv += ["--report", args.report] if args.report else []
        argv += (
            ["-v"] * args.verbose
            + (["--quiet"] if args.quiet else [])
            + (["--no-progress"] if args.no_progress else [])
        )
        provision_args = build_parser().parse_args(argv)
        code = _cmd_provision(provision_args, attrs.evolve(ctx, environ=environment(defguard, graph)))
        consistent = all(
            graph.attributes(scenario.entra_ids[name]).get("Defguard", {}).get("EnrollmentToken")
            == defguard.current_token(name)
            for name, status in scenario.expected.items()
            if status == "provisioned"
        )
        untouched = all(
            not graph.attributes(entra_id)
            for name, entra_id in scenario.entra_ids.items()
            if scenario.expected[name] != "provisioned"
        )
    console.out("\nWhat happened:")
    for status, meaning in _DEMO_EXPLAIN.items():
        names = sorted(n for n, s in scenario.expected.items() if s == status)
        console.out(f"  {status:<17} {', '.join(names)}: {meaning}")
    ok = code == EXIT_FAILED and consistent and untouched  # the sample org has members that need attention
    verdict = (
        "every provisioned member's Entra attributes hold exactly the token Defguard considers valid; no other "
        "member was touched"
        if ok
        else "the result differs from what the sample organisation expects"
    )
    console.out(f"\nCheck: {verdict}.")
    console.out(
        "provision itself exits 1 on this organisation: not_found, ambiguous and no_email members need an "
        "admin's attention. The demo exits 0 because that is the expected outcome."
    )
    return EXIT_OK if ok else EXIT_FAILED


@attrs.define
class _Context:
    environ: Mapping[str, str]
    stdin: TextIO
    console: _Console
    redactor: RedactingFilter
    stop: threading.Event


# -- entry point -----------------------------------------------------------------------------------------------


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if args and args[0] not in COMMANDS and args[0] not in {"-h", "--help", "--version"}:
        args.insert(0, "provision")
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the CLI; returns the exit code. Every stream and the environment can be injected (tests do)."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    redactor = RedactingFilter()
    parser = build_parser()
    try:
        args = parser.parse_args(_normalise_argv(argv))
    except _UsageError as exc:
        print(f"error: {exc} (see --help)", file=stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print and "exit"
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(stdout)
        return EXIT_USAGE
    console = _Console(stdout, stderr, redactor, quiet=getattr(args, "quiet", False))
    ctx = _Context(environ, stdin or sys.stdin, console, redactor, threading.Event())
    handler = _setup_logging(args, stderr, redactor)
    restore = _install_signal_handlers(ctx.stop, console)
    try:
        code: int = args.handler(args, ctx)
    except ConfigurationError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except (PreflightError, DefguardError, EntraError) as exc:
        console.error(str(exc))
        if getattr(args, "debug", False):
            log.exception("details")
        return EXIT_FATAL
    except DefguardEntraError as exc:
        console.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    finally:
        restore()
        logging.getLogger().removeHandler(handler)
    return code


def _install_signal_handlers(stop: threading.Event, console: _Console) -> Callable[[], None]:
    """First Ctrl-C/SIGTERM: stop starting new work and finish what is in flight; the second: stop now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.warn("stopping: finishing the writes in flight, then writing the report (again to abort)")

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return _restore
