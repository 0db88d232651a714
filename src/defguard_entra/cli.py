"""The command line: parse, call the library, print. The only module that reads ``os.environ`` or writes to stdout.

``python -m defguard_entra [provision] -Url … -ApiToken … -GroupName …`` works as the PowerShell script's example
does; ``demo`` runs the whole flow against the built-in emulators.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime as dt
import difflib
import getpass
import io
import logging
import os
import re
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from ._durations import parse_lifetime
from ._redact import RedactingFilter, secrets_in_argv
from ._scopes import scopes_for
from ._version import __version__
from .config import (
    DEFAULT_ATTRIBUTE_SET,
    AuthMode,
    Cloud,
    Settings,
    is_loopback_url,
    validate_attribute_set_name,
    validate_group_name,
    validate_seconds,
)
from .exceptions import ConfigurationError, DefguardEntraError, DefguardError, EntraError, PreflightError
from .models import ENROLLED_POLICIES, Report, Secret

__all__ = ["EXIT_FAILED", "EXIT_FATAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
COMMANDS = ("provision", "demo", "fetch-config", "export", "status", "clear", "check")

log = logging.getLogger("defguard_entra")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error is one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise _UsageError(message)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:  # --help and --version: degrade to the stream's encoding, survive a closed pipe
            _write(file if file is not None else sys.stderr, message, newline=False)


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
    _add_group_options(prov, "provision")
    run = prov.add_argument_group("what to provision")
    run.add_argument(
        "--enrollment-token-expiration-time",
        "-EnrollmentTokenExpirationTime",
        metavar="DURATION",
        help="token lifetime, e.g. 24h, 1d, 2w, 90m, 1.5h (default: the server's, usually 24h)",
    )
    _add_enrolled(run, "mint")
    run.add_argument("--dry-run", action="store_true", help="read everything, mint and write nothing")
    run.add_argument(
        "--only-missing",
        action="store_true",
        help="skip members whose attribute set already holds a token and URL (trusts what is stored: "
        "a token's validity cannot be checked from outside Defguard)",
    )
    _add_retry_options(prov, writes=True, mints=True)
    rep = prov.add_argument_group("report")
    rep.add_argument("--report", metavar="PATH", help="write a .json or .csv report (tokens masked)")
    rep.add_argument("--reveal-tokens", action="store_true", help="put full tokens in the report (owner-only file)")
    _add_common(prov)
    prov.set_defaults(handler=_cmd_provision, graceful_stop=True)

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
    demo.set_defaults(handler=_cmd_demo, graceful_stop=True)
    _add_client_config_commands(sub)
    _add_operations_commands(sub)
    return parser


# -- settings from environment + flags -------------------------------------------------------------------------


#: A token file larger than this is not a token file (a wrong path, /dev/zero, a log).
_TOKEN_FILE_LIMIT = 64 * 1024
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _check_token(text: str, source: str) -> Secret:
    """An API token as read from ``source``: one line of printable ASCII. Never echoes it."""
    token = text.strip()
    if not token:
        raise ConfigurationError(f"{source} is empty: give the Defguard API token")
    if not token.isascii():
        raise ConfigurationError(
            f"{source} holds a non-ASCII character, which no Defguard API token has: copy the token again "
            "(a smart quote or a non-breaking space may have slipped in)"
        )
    if any(not char.isprintable() or char.isspace() for char in token):
        raise ConfigurationError(
            f"{source} holds a space or control character, which no Defguard API token has: copy the token again"
        )
    return Secret(token)


def _read_token_file(path: str) -> Secret:
    """The token in ``path``: UTF-8 (BOM or not) or UTF-16 with a BOM, as Windows PowerShell 5.1's ``Out-File``
    and ``>`` write it; surrounding whitespace and CRLF stripped; exactly one non-empty line."""
    source = f"--api-token-file {path!r}"
    try:
        with Path(path).expanduser().open("rb") as file:
            data = file.read(_TOKEN_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigurationError(f"{source}: {exc.strerror or exc}") from None
    if len(data) > _TOKEN_FILE_LIMIT:
        raise ConfigurationError(f"{source} is larger than 64 KiB: it is not a token file; check the path")
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{source} is not UTF-8 or UTF-16 text: save the token as UTF-8, e.g. "
            "Set-Content -Encoding utf8 -NoNewline, or printf '%s' TOKEN > FILE"
        ) from None
    if "\0" in text:
        raise ConfigurationError(
            f"{source} holds NUL characters (UTF-16 without a byte order mark?): save the token as UTF-8, e.g. "
            "Set-Content -Encoding utf8 -NoNewline"
        )
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines:
        raise ConfigurationError(f"{source} is empty: put the Defguard API token in it")
    if len(lines) > 1:
        raise ConfigurationError(f"{source} has {len(lines)} non-empty lines: it must hold only the API token")
    return _check_token(lines[0], source)


def _read_stdin_token(stdin: TextIO | None, stderr: TextIO) -> Secret:
    """``--api-token -``: prompt without echo on a terminal, else the first line of stdin."""
    missing = "--api-token -: nothing on stdin; pipe the token in (e.g. < token.txt) or run it in a terminal"
    if stdin is None:
        raise ConfigurationError(missing)
    try:
        interactive = stdin.isatty()
    except (OSError, ValueError):  # closed
        raise ConfigurationError(missing) from None
    try:
        if interactive:
            text = getpass.getpass("Defguard API token (input hidden): ", stream=stderr)
        else:
            text = stdin.readline()
    except EOFError:
        raise ConfigurationError("--api-token -: no token entered") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise ConfigurationError(missing) from None
    if not text.strip():
        raise ConfigurationError(missing)
    return _check_token(text, "--api-token -")


def _read_api_token(
    args: argparse.Namespace, stdin: TextIO | None, warn: Callable[[str], None], stderr: TextIO | None = None
) -> Secret | None:
    literal, path = getattr(args, "api_token", None), getattr(args, "api_token_file", None)
    if literal is not None and path is not None:
        raise ConfigurationError("give the API token once: --api-token or --api-token-file, not both")
    if path is not None:
        return _read_token_file(path)
    if literal == "-":
        return _read_stdin_token(stdin, stderr or sys.stderr)
    if literal is not None:
        if not literal.strip():
            raise ConfigurationError("--api-token is empty")
        token = _check_token(literal, "--api-token")
        warn(
            "the API token on the command line is visible to other local users (process list, shell history): "
            "prefer DEFGUARD_API_TOKEN or --api-token-file"
        )
        return token
    return None


_PATH_OPTIONS = ("report", "output", "output_dir", "api_token_file", "ca_bundle")


def _check_inputs(args: argparse.Namespace) -> None:
    """Values no file system or server takes: one line, before anything else looks at them."""
    for flag in _PATH_OPTIONS:
        value = getattr(args, flag, None)
        if isinstance(value, str) and "\0" in value:
            raise ConfigurationError(f"--{flag.replace('_', '-')} contains a NUL byte: give a real path")
    if getattr(args, "group_name", None) is not None:
        validate_group_name(args.group_name)


def _reject_conflicts(args: argparse.Namespace) -> None:
    """Options that contradict each other: one line naming both, before anything is read or sent."""
    if getattr(args, "quiet", False) and getattr(args, "verbose", 0):
        raise ConfigurationError("--quiet and --verbose contradict each other: give one of them")
    if getattr(args, "reveal_tokens", False) and not getattr(args, "report", None):
        raise ConfigurationError("--reveal-tokens needs --report PATH: full tokens go only into an owner-only file")
    report = getattr(args, "report", None)
    if report:
        target = Path(report).expanduser().resolve()
        for flag in ("api_token_file", "ca_bundle"):
            value = getattr(args, flag, None)
            if value and Path(value).expanduser().resolve() == target:
                option = "--" + flag.replace("_", "-")
                raise ConfigurationError(f"--report {report!r} would overwrite {option}: write the report elsewhere")


def load_settings(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    stdin: TextIO | None,
    warn: Callable[[str], None],
    stderr: TextIO | None = None,
) -> Settings:
    _check_inputs(args)
    _reject_conflicts(args)
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
    token = _read_api_token(args, stdin, warn, stderr)
    if token is None and base.defguard_token is not None:
        token = _check_token(base.defguard_token.value, "DEFGUARD_API_TOKEN")
    changes: dict[str, Any] = {"graph": graph, "defguard_token": token}
    if not hasattr(args, "url"):  # fetch-config: Defguard is not contacted, DEFGUARD_URL does not matter
        changes["defguard_url"] = None
    elif args.url:
        changes["defguard_url"] = args.url
    changes["allow_insecure_http"] = bool(getattr(args, "allow_insecure_http", False))
    if getattr(args, "ca_bundle", None):
        if not Path(args.ca_bundle).expanduser().is_file():
            raise ConfigurationError(f"--ca-bundle {args.ca_bundle!r} is not a file")
        changes["ca_bundle"] = str(Path(args.ca_bundle).expanduser())
    if getattr(args, "attribute_set_name", None) is not None:
        changes["attribute_set"] = validate_attribute_set_name(args.attribute_set_name)
    if getattr(args, "enrollment_token_expiration_time", None) is not None:
        try:
            changes["token_lifetime"] = parse_lifetime(args.enrollment_token_expiration_time)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--enrollment-token-expiration-time: {exc}") from None
    if getattr(args, "timeout", None) is not None:
        changes["timeout"] = validate_seconds("--timeout", args.timeout)
    if getattr(args, "graph_write_rate", None) is not None:
        changes["graph_write_rate"] = validate_seconds(
            "--graph-write-rate", args.graph_write_rate, zero="no limit", unit="writes per second"
        )
    if getattr(args, "concurrency", None) is not None:
        changes["concurrency"] = args.concurrency
    retries, retry_time = getattr(args, "retries", None), getattr(args, "max_retry_time", None)
    if retries is not None or retry_time is not None:
        if retries is not None and retries < 0:
            raise ConfigurationError("--retries must be 0 or more")
        if retry_time is not None:
            validate_seconds("--max-retry-time", retry_time)
        changes["retry"] = attrs.evolve(
            base.retry,
            **({"attempts": retries + 1} if retries is not None else {}),
            **({"timeout": retry_time} if retry_time is not None else {}),
        )
    settings = attrs.evolve(base, **changes).validate()
    url = settings.defguard_url
    if url and url.strip().lower().startswith("http://") and not is_loopback_url(url):
        warn(
            f"--allow-insecure-http: the API token and the enrollment tokens go to {url} unencrypted; anyone on "
            "the network path can read them"
        )
    return settings


# -- output ----------------------------------------------------------------------------------------------------


#: What a console that cannot show a character gets instead (Windows code pages, PYTHONIOENCODING=ascii).
_FALLBACKS = {
    "…": "...",
    "–": "-",
    "—": "-",
    "‘": "'",
    "’": "'",
    "“": '"',
    "”": '"',
    "→": "->",
    "←": "<-",
    "×": "x",
    "≥": ">=",
    "≤": "<=",
    "µ": "u",
    "✓": "ok",
    "✗": "x",
    "\u00a0": " ",
}
_DEGRADE = "defguard_entra.degrade"


def _degrade_error(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(_FALLBACKS.get(char, "?") for char in text), error.end


codecs.register_error(_DEGRADE, _degrade_error)


def _encodable(text: str, stream: Any) -> str:
    """``text`` as ``stream`` can show it: unchanged on UTF-8 (and on in-memory streams), else with ``…`` as
    ``...`` and other characters the encoding lacks as ``?``, instead of a UnicodeEncodeError mid-run."""
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str) or encoding.lower().replace("-", "").replace("_", "") in {"utf8", "utf16"}:
        return text
    try:
        return text.encode(encoding, _DEGRADE).decode(encoding, "replace")
    except (LookupError, UnicodeError):
        return text.encode("ascii", _DEGRADE).decode("ascii")


class _Discard(io.StringIO):
    """Where output goes when there is no stream (stdout or stderr closed at start, ``pythonw``)."""

    def write(self, s: str) -> int:
        return len(s)


#: Streams that failed (closed pipe): nothing more is written to them in this process.
_BROKEN: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_broken(stream: Any) -> bool:
    try:
        return stream in _BROKEN
    except TypeError:  # a stream that cannot be weakly referenced is simply tried again
        return False


def _mark_broken(stream: Any) -> None:
    with contextlib.suppress(TypeError):
        _BROKEN.add(stream)


def _write(stream: TextIO, text: str, *, newline: bool = True) -> bool:
    """Write and flush; ``False`` (and nothing raised) when the stream is closed or its reader has gone away
    (``| head``): losing output must not abort a run half-way or change its exit code."""
    if _is_broken(stream):
        return False
    try:
        stream.write(_encodable(text, stream) + ("\n" if newline else ""))
        stream.flush()
    except (OSError, ValueError):  # BrokenPipeError, EIO, "I/O operation on closed file"
        _mark_broken(stream)
        _silence(stream)
        return False
    return True


def _silence(stream: TextIO) -> None:
    """Point a broken standard stream's descriptor at the null device, so that the interpreter's final flush of
    what is still buffered neither prints "Exception ignored … BrokenPipeError" nor turns the exit code into 120."""
    if stream not in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


class _Console:
    """stdout for results, stderr for progress, warnings and errors; everything through the redaction filter.

    Text the stream's encoding cannot show is degraded (``…`` → ``...``), and a closed stream is skipped."""

    def __init__(self, stdout: TextIO, stderr: TextIO, redactor: RedactingFilter, *, quiet: bool) -> None:
        self.stdout, self.stderr, self.redactor, self.quiet = stdout, stderr, redactor, quiet

    def out(self, text: str) -> None:
        _write(self.stdout, self.redactor.redact(text))

    def info(self, text: str) -> None:
        if not self.quiet:
            _write(self.stderr, self.redactor.redact(text))

    def warn(self, text: str) -> None:
        _write(self.stderr, "warning: " + self.redactor.redact(text))

    def error(self, text: str) -> None:
        _write(self.stderr, "error: " + self.redactor.redact(text))


class _ProgressLine:
    """Members done, on stderr: a rewritten line on a terminal, a plain line every 10 % (or 5 s) otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        try:
            self.tty = stream.isatty()
        except (OSError, ValueError):
            self.tty = False
        self._last_pct = -1
        self._last_time = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        with self._lock:
            now = time.monotonic()
            if self.tty:
                end = "\n" if done >= total else ""
                line = f"\r{self.label}: {done}/{total} ({pct}%){end}"
            elif done >= total or pct >= self._last_pct + 10 or now - self._last_time >= 5:
                line = f"{self.label}: {done}/{total} ({pct}%)\n"
            else:
                return
            self._last_pct, self._last_time = pct, now
            _write(self.stream, line, newline=False)  # a closed stderr only loses the progress line


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines degraded to the stream's encoding; a failing stream drops the line instead of printing
    logging's "--- Logging error ---" traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record must not end the run (the filter already redacted it)
            return
        _write(self.stream, text)


def _setup_logging(args: argparse.Namespace, stderr: TextIO, redactor: RedactingFilter) -> logging.Handler:
    level = logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    elif getattr(args, "verbose", 0) == 1:
        level = logging.INFO
    handler = _StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, level))
    if level > logging.DEBUG:  # the SDKs are chatty at INFO: keep them to warnings unless -vv
        for name in ("azure", "msal", "httpx", "urllib3", "kiota_http"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
        # stamina warns on every scheduled retry; retries are expected and counted in the report, so its lines
        # only show at -vv (our own INFO lines at -v say what is being retried and why).
        logging.getLogger("stamina").setLevel(logging.ERROR)
    return handler


# -- commands --------------------------------------------------------------------------------------------------


def _state_dir(ctx: _Context) -> Path | None:
    """The per-user state directory (journal of tokens in flight, run locks): DEFGUARD_ENTRA_STATE_DIR, else the
    platform's (``provisioning.journal.default_state_dir``)."""
    from .provisioning.journal import default_state_dir  # noqa: PLC0415

    explicit = ctx.environ.get("DEFGUARD_ENTRA_STATE_DIR", "").strip()
    return Path(explicit).expanduser() if explicit else default_state_dir(sys.platform, ctx.environ)


def _exit_code(report: Report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.fatal_error:
        return EXIT_FATAL
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_provision(args: argparse.Namespace, ctx: _Context) -> int:
    settings = load_settings(args, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
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
    from .provisioning import ProvisioningService  # noqa: PLC0415

    scopes = scopes_for("provision", args.group_source)
    with ProvisioningService.from_settings(
        settings, prompt=ctx.console.info, delegated_scopes=scopes, state_dir=_state_dir(ctx)
    ) as service:
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
    report = _audited(report, args, settings, ctx.environ)
    return _finish(report, ctx, report_path, reveal=args.reveal_tokens, quiet=args.quiet)


def _finish(report: Report, ctx: _Context, report_path: Path | None, *, reveal: bool, quiet: bool) -> int:
    from ._render import format_summary  # noqa: PLC0415

    if report_path is not None:
        report_path = _write_report_somewhere(report, report_path, ctx, reveal=reveal)
    if not report.outcomes:
        ctx.console.out(f"group {report.group_name!r} has no members: nothing to do")
    elif not quiet:
        ctx.console.out(format_summary(report))
    if report_path is not None and not quiet:
        ctx.console.info(f"report written to {report_path}")
    if report.fatal_error:
        ctx.console.error(report.fatal_error)
    return _exit_code(report)


def _write_report_somewhere(report: Report, path: Path, ctx: _Context, *, reveal: bool) -> Path | None:
    """Write the report to ``path`` or, when that fails at the end of a run (the directory went away, the disk
    filled), to a fallback file that is named: everything was sent, so the exit code must stay the members'."""
    import tempfile  # noqa: PLC0415

    from ._render import write_report  # noqa: PLC0415

    try:
        return write_report(report, path, reveal_tokens=reveal)
    except (OSError, ConfigurationError) as exc:
        stamp = report.finished_at.strftime("%Y%m%dT%H%M%SZ")
        fallback = Path(tempfile.gettempdir()) / f"defguard-entra-{report.command}-{stamp}{path.suffix or '.json'}"
        try:
            written = write_report(report, fallback, reveal_tokens=reveal)
        except (OSError, ConfigurationError) as again:
            ctx.console.warn(f"could not write the report to {path} ({exc}) nor to {fallback} ({again})")
            return None
        ctx.console.warn(f"could not write the report to {path} ({exc}): wrote it to {written} instead")
        return written


_DEMO_EXPLAIN = {
    "already_enrolled": "has a device in Defguard: skipped, nothing to do (--enrolled desktop would give a "
    "desktop-activation token for another device)",
    "disabled": "disabled in Defguard: skipped, no token minted",
    "no_email": "no e-mail in Defguard, so no way to find them in Entra: skipped",
    "not_found": "no Entra user with that mail, UPN or other mail: no token minted (their old one survives)",
    "ambiguous": "two Entra users share the address: reported instead of guessing, no token minted",
}


def _demo_end_user_step(ctx: _Context, defguard: Any, graph: Any, entra_id: str, *, quiet: bool) -> str | None:
    """Step 5 of the documented flow: on alice's machine, read her attributes and write provisioning.json."""
    import json  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from .testing import environment  # noqa: PLC0415

    token = graph.add_principal(
        "alice-laptop", user=entra_id, read_users=False, write_attributes=False, read_definitions=False
    )
    with tempfile.TemporaryDirectory(prefix="defguard-entra-demo-") as tmp:
        target = Path(tmp) / "provisioning.json"
        ctx.console.info(f"demo: on alice's machine:  python -m defguard_entra fetch-config --output {target}")
        fetch_args = build_parser().parse_args(["fetch-config", "--output", str(target), *(["-q"] if quiet else [])])
        env = {**environment(defguard, graph), "DEFGUARD_ENTRA_GRAPH_TOKEN": token}
        if _cmd_fetch_config(fetch_args, attrs.evolve(ctx, environ=env)) != EXIT_OK or not target.exists():
            return None
        written: dict[str, str] = json.loads(target.read_text(encoding="utf-8"))
        return written.get("enrollment_token")


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
            (token := defguard.current_token(name)) is not None
            and graph.attributes(scenario.entra_ids[name]).get("Defguard", {}).get("EnrollmentToken") == token
            and defguard.token_kind(token) == scenario.token_kinds[name]
            for name, status in scenario.expected.items()
            if status == "provisioned"
        )
        untouched = all(
            not graph.attributes(entra_id)
            for name, entra_id in scenario.entra_ids.items()
            if scenario.expected[name] != "provisioned"
        )
        if code == EXIT_INTERRUPTED:
            return code
        end_user = _demo_end_user_step(ctx, defguard, graph, scenario.entra_ids["alice"], quiet=args.quiet)
        end_user_ok = end_user == defguard.current_token("alice")
    console.out("\nWhat happened:")
    by_kind: dict[tuple[str, str], list[str]] = {}
    for name, kind in sorted(scenario.token_kinds.items()):
        by_kind.setdefault((scenario.kinds_of_user[name], kind), []).append(name)
    for (origin, kind), names in by_kind.items():
        token = "an enrollment token" if kind == "enrollment" else "a desktop-activation token"
        console.out(f"  {'provisioned':<17} {', '.join(names)}: {origin}; got {token}, stored in Entra")
    for status, meaning in _DEMO_EXPLAIN.items():
        names = sorted(n for n, s in scenario.expected.items() if s == status)
        console.out(f"  {status:<17} {', '.join(names)}: {meaning}")
    console.out(
        "  end user          alice: fetch-config, signed in as alice, wrote the desktop client's provisioning.json "
        f"(owner-only) with her URL and token{'' if end_user_ok else ' - FAILED'}"
    )
    ok = code == EXIT_FAILED and consistent and untouched and end_user_ok  # the org has members needing attention
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
    fetch.set_defaults(handler=_cmd_fetch_config)

    export = sub.add_parser(
        "export",
        help="admin side: one provisioning.json per group member, for device management",
        description="Read the enrollment URL and token provision stored for each member of a group and write "
        "DIR/<userPrincipalName>/provisioning.json for each, plus manifest.json and manifest.csv accounting for "
        "every member. Files are owner-only and hold live tokens: hand them to your device management, not to "
        "a share.",
        epilog="Exit codes: 0 every member exported or needs no file (disabled, already enrolled), 1 some "
        "members need attention, 2 usage error, 3 the run could not start.",
        allow_abbrev=False,
    )
    _add_defguard(export)
    _add_graph(export)
    _add_group_options(export, "export")
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
    mint.add_argument(
        "--enrollment-token-expiration-time",
        "-EnrollmentTokenExpirationTime",
        metavar="DURATION",
        help="with --provision: token lifetime, e.g. 24h, 1d (default: the server's)",
    )
    mint.add_argument(
        "--only-missing",
        action="store_true",
        help="with --provision: mint only for members whose attributes hold no token yet",
    )
    _add_retry_options(export, writes=True, mints=True)
    _add_common(export)
    export.set_defaults(handler=_cmd_export)


def _cmd_fetch_config(args: argparse.Namespace, ctx: _Context) -> int:
    from ._desktop_client import (  # noqa: PLC0415
        WriteOutcome,
        check_output_file,
        default_provisioning_path,
        require_user_sign_in,
    )

    settings = load_settings(args, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
    require_user_sign_in(settings.graph)
    target = check_output_file(args.output) if args.output else default_provisioning_path(sys.platform, ctx.environ)
    if target.is_dir():
        raise ConfigurationError(f"{str(target)!r} is a directory: remove it or pass --output PATH")
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    from ._desktop_client import fetch_provisioning_config, write_provisioning_file  # noqa: PLC0415

    config = fetch_provisioning_config(settings, prompt=ctx.console.info)
    ctx.redactor.add(config.enrollment_token.value)
    outcome = write_provisioning_file(config, target, force=args.force)
    if not args.quiet:
        if outcome is WriteOutcome.UNCHANGED:
            ctx.console.out(f"{target} already holds this configuration: nothing to do")
        else:
            verb = "replaced" if outcome is WriteOutcome.REPLACED else "wrote"
            ctx.console.out(
                f"{verb} {target}: the Defguard client enrolls at {config.enrollment_url} on its next start "
                "(it reads the file only while it has no instances)"
            )
    return EXIT_OK


def _cmd_export(args: argparse.Namespace, ctx: _Context) -> int:
    settings = load_settings(args, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
    if not args.group_name or not args.group_name.strip():
        raise ConfigurationError("--group-name is required: the name of the group whose members to export")
    if not args.provision and (args.only_missing or args.enrollment_token_expiration_time is not None):
        raise ConfigurationError("--only-missing and --enrollment-token-expiration-time apply only with --provision")
    from ._export import check_output_dir, write_export  # noqa: PLC0415

    output_dir = check_output_dir(args.output_dir)
    settings.require_defguard()
    if settings.defguard_token is not None:
        ctx.redactor.add(settings.defguard_token.value)
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    from .provisioning import ProvisioningService  # noqa: PLC0415

    scopes = scopes_for("provision" if args.provision else "export", args.group_source)
    with ProvisioningService.from_settings(
        settings, prompt=ctx.console.info, delegated_scopes=scopes, state_dir=_state_dir(ctx)
    ) as service:
        provisioned = None
        if args.provision:
            progress = None if (args.no_progress or args.quiet) else _ProgressLine(ctx.console.stderr, "provisioning")
            provisioned = service.provision(
                args.group_name,
                group_source=args.group_source,
                lifetime=settings.token_lifetime,
                enrolled=args.enrolled,
                only_missing=args.only_missing,
                progress=progress,
                stop=ctx.stop,
            )
            code = _finish(provisioned, ctx, None, reveal=False, quiet=args.quiet)
            if provisioned.fatal_error or provisioned.interrupted:
                ctx.console.error("nothing exported: provision did not complete")
                return code
        report = service.export(
            args.group_name, group_source=args.group_source, enrolled=args.enrolled, after=provisioned
        )
    manifest = write_export(report, output_dir, deep_links=args.deep_links)
    if not args.quiet:
        ctx.console.out(_export_summary(manifest, report.notes))
    if manifest.stale:
        shown = ", ".join(manifest.stale[:5]) + (" …" if len(manifest.stale) > 5 else "")
        ctx.console.warn(
            f"{len(manifest.stale)} member director{'ies' if len(manifest.stale) != 1 else 'y'} in {output_dir} "
            f"are not part of this export (left from an earlier run? their tokens are likely dead): {shown}; "
            "remove them before distributing"
        )
    if output_dir.stat().st_mode & 0o077:
        ctx.console.warn(
            f"{output_dir} is open to other local users (the files inside are owner-only): consider chmod 700"
        )
    return EXIT_OK if manifest.ok else EXIT_FAILED


def _export_summary(manifest: Any, notes: Sequence[str]) -> str:
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
        rows = [[e.username or e.user_principal_name or "-", e.status, e.error or ""] for e in problems[:25]]
        lines.append(format_pretty_table(rows, ["member", "status", "why"]))
        if len(problems) > 25:
            lines.append(f"… and {len(problems) - 25} more: see manifest.csv")
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"manifest: {manifest.output_dir / 'manifest.json'} and manifest.csv (owner-only)")
    return "\n".join(lines)


# -- status, clear and check --------------------------------------------------------------------------------------

_STATUS_EPILOG = (
    "Statuses: set (EnrollmentToken and EnrollmentUrl stored), partial (only one of them: provision "
    "--only-missing re-provisions it), not_set (nothing stored, or this sign-in may not read the attributes: Graph "
    "answers both the same way), no_email, not_found, ambiguous, not_in_defguard, failed, interrupted. The columns "
    "active and enrolled are the Defguard user's state; tokens are masked (first 4 characters). "
    "Exit codes: 0 every member looked up, 1 some member could not be (no_email, not_found, ambiguous, "
    "not_in_defguard, failed), 2 usage error, 3 cannot run, 130 interrupted."
)
_CLEAR_EPILOG = (
    "Statuses: cleared, not_set (nothing stored), kept (not enrolled in Defguard yet, without --all), planned "
    "(--dry-run), not_found (also for a member without e-mail), ambiguous, failed, interrupted. Only "
    "EnrollmentToken and EnrollmentUrl are set to null; other attributes of the set are left alone. "
    "Exit codes: 0 done, 1 a member is failed, not_found or ambiguous, 2 usage error, 3 cannot run, 130 interrupted."
)
_CHECK_EPILOG = (
    "Nothing is changed: no token is minted and no attribute written. Write (and read) permission on the "
    "attributes is judged from the Graph access token's claims when it is a JWT (roles, scp, wids); otherwise it "
    "is reported 'not verified' (Graph shows it only by writing). Exit codes: 0 ready (warnings allowed), 2 usage "
    "error, 3 not ready."
)


def _add_group_options(p: argparse.ArgumentParser, verb: str) -> None:
    g = p.add_argument_group("which group")
    g.add_argument("--group-name", "-GroupName", metavar="NAME", help=f"the group to {verb} (required)")
    g.add_argument(
        "--group-source",
        choices=["defguard", "entra"],
        default="defguard",
        help="where the group lives: a Defguard group (default) or an Entra group by displayName",
    )


def _add_retry_options(p: argparse.ArgumentParser, *, writes: bool, mints: bool = False) -> None:
    pace = p.add_argument_group("pace")
    if mints:
        pace.add_argument(
            "--concurrency", type=int, default=None, metavar="N", help="parallel Defguard token requests (default 16)"
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
    status = sub.add_parser(
        "status",
        help="where each member stands: Defguard state, Entra match, stored attributes (read-only)",
        description="Show, for every member of a group, the Defguard user's state (active, enrolled), the "
        "matching Entra user, and whether EnrollmentToken and EnrollmentUrl are stored (token masked). "
        "Read-only.",
        epilog=_STATUS_EPILOG,
        allow_abbrev=False,
    )
    _add_defguard(status)
    _add_graph(status)
    _add_group_options(status, "show")
    _add_enrolled(status, "judge would_mint")
    _add_retry_options(status, writes=False)
    status.add_argument_group("report").add_argument(
        "--report", metavar="PATH", help="write a .json or .csv report (tokens masked)"
    )
    _add_common(status)
    status.set_defaults(handler=_cmd_status, graceful_stop=True)

    clear = sub.add_parser(
        "clear",
        help="set EnrollmentToken and EnrollmentUrl to null for enrolled members (or all with --all)",
        description="Remove the stored enrollment token and URL (an enrollment token in a directory attribute is a "
        "secret) for members who are already enrolled in Defguard, or for every member with --all.",
        epilog=_CLEAR_EPILOG,
        allow_abbrev=False,
    )
    _add_defguard(clear)
    _add_graph(clear)
    _add_group_options(clear, "clear")
    what = clear.add_argument_group("what to clear")
    what.add_argument(
        "--all",
        dest="all_members",
        action="store_true",
        help="clear every member's attributes, also of members not enrolled yet (their tokens stop being usable "
        "by the desktop client)",
    )
    what.add_argument("--dry-run", action="store_true", help="read everything, write nothing: who would be cleared")
    _add_retry_options(clear, writes=True)
    clear.add_argument_group("report").add_argument(
        "--report", metavar="PATH", help="write a .json or .csv report (tokens masked)"
    )
    _add_common(clear)
    clear.set_defaults(handler=_cmd_clear, graceful_stop=True)

    check = sub.add_parser(
        "check",
        help="verify a setup end to end without changing anything; a fix hint for each failure",
        description="Check that provision can run: Defguard reachable (and its version), the API token honoured "
        "(license), valid and an admin's, the group found and its size; Microsoft Graph sign-in, permission to "
        "read users, the attribute set and both attributes defined as single-valued String without "
        "predefined-values-only, and the permissions to write and read them.",
        epilog=_CHECK_EPILOG,
        allow_abbrev=False,
    )
    _add_defguard(check)
    _add_graph(check)
    _add_group_options(check, "check")
    check.add_argument_group("write permission").add_argument(
        "--probe-write",
        action="store_true",
        help="prove write permission with a write that changes nothing (the first member's current values written "
        "back), as provision does before its first token; without it, write permission is judged from the access "
        "token's claims only",
    )
    _add_retry_options(check, writes=False)
    _add_common(check)
    check.set_defaults(handler=_cmd_check)


def _prepare(args: argparse.Namespace, ctx: _Context, verb: str) -> tuple[Settings, Path | None]:
    """Settings and the report path, validated before any request; secrets registered with the redactor."""
    settings = load_settings(args, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
    if not args.group_name or not args.group_name.strip():
        raise ConfigurationError(f"--group-name is required: the name of the group whose members to {verb}")
    report_path = None
    if getattr(args, "report", None):
        from ._render import check_report_path  # noqa: PLC0415

        report_path = check_report_path(args.report)
    settings.require_defguard()
    if settings.defguard_token is not None:
        ctx.redactor.add(settings.defguard_token.value)
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    return settings, report_path


def _cmd_status(args: argparse.Namespace, ctx: _Context) -> int:
    settings, report_path = _prepare(args, ctx, "show")
    from ._render import format_status_table  # noqa: PLC0415
    from .provisioning import ProvisioningService  # noqa: PLC0415

    scopes = scopes_for("status", args.group_source)
    with ProvisioningService.from_settings(
        settings, prompt=ctx.console.info, delegated_scopes=scopes, state_dir=_state_dir(ctx)
    ) as service:
        report = service.status(args.group_name, group_source=args.group_source, enrolled=args.enrolled, stop=ctx.stop)
    report = _audited(report, args, settings, ctx.environ)
    if report.outcomes and not args.quiet:
        ctx.console.out(format_status_table(report))
    return _finish(report, ctx, report_path, reveal=False, quiet=args.quiet)


def _cmd_clear(args: argparse.Namespace, ctx: _Context) -> int:
    settings, report_path = _prepare(args, ctx, "clear")
    from .provisioning import ProvisioningService  # noqa: PLC0415

    scopes = scopes_for("clear", args.group_source)
    with ProvisioningService.from_settings(
        settings, prompt=ctx.console.info, delegated_scopes=scopes, state_dir=_state_dir(ctx)
    ) as service:
        progress = None if (args.no_progress or args.quiet) else _ProgressLine(ctx.console.stderr, "clearing")
        report = service.clear(
            args.group_name,
            group_source=args.group_source,
            all_members=args.all_members,
            dry_run=args.dry_run,
            progress=progress,
            stop=ctx.stop,
        )
    report = _audited(report, args, settings, ctx.environ)
    return _finish(report, ctx, report_path, reveal=False, quiet=args.quiet)


def _cmd_check(args: argparse.Namespace, ctx: _Context) -> int:
    settings, _ = _prepare(args, ctx, "check")
    from ._render import format_checklist  # noqa: PLC0415
    from .provisioning import ProvisioningService  # noqa: PLC0415

    scopes = scopes_for("check", args.group_source)
    with ProvisioningService.from_settings(
        settings, prompt=ctx.console.info, delegated_scopes=scopes, state_dir=_state_dir(ctx)
    ) as service:
        checklist = service.check(args.group_name, group_source=args.group_source, probe_write=args.probe_write)
    ctx.console.out(format_checklist(checklist, problems_only=args.quiet))
    return EXIT_OK if checklist.ready else EXIT_FATAL


_NOT_OPTIONS = frozenset({"handler", "command", "api_token", "verbose", "quiet", "no_progress", "debug"})


def _audited(report: Report, args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> Report:
    """The report with the options of this run in ``audit["options"]`` (never a secret: the API token's value is
    left out, only where it came from is recorded)."""
    secrets = {s.value for s in (settings.defguard_token, settings.graph.static_token) if s is not None}
    options: dict[str, Any] = {
        key: value
        for key, value in sorted(vars(args).items())
        if key not in _NOT_OPTIONS and value not in (None, False) and not (isinstance(value, str) and value in secrets)
    }
    literal = getattr(args, "api_token", None)
    source: str | None
    if literal == "-":
        source = "stdin"
    elif literal is not None:
        source = "command line"
    elif getattr(args, "api_token_file", None):
        source = "file"
    else:
        source = "environment" if environ.get("DEFGUARD_API_TOKEN") else None
    options.update(
        command=report.command,
        api_token_source=source,
        defguard_url=settings.defguard_url,
        graph_url=settings.graph.base_url,
        graph_auth=settings.graph.resolved_auth().value,
        attribute_set=settings.attribute_set,
    )
    return attrs.evolve(report, audit={**report.audit, "options": {**report.audit.get("options", {}), **options}})


@attrs.define
class _Context:
    environ: Mapping[str, str]
    stdin: TextIO
    console: _Console
    redactor: RedactingFilter
    stop: threading.Event


# -- entry point -----------------------------------------------------------------------------------------------


#: The PowerShell script's parameters, by lower-case name (PowerShell matches them case-insensitively).
_POWERSHELL = {
    "url": ("--url", "-Url"),
    "apitoken": ("--api-token", "-ApiToken"),
    "groupname": ("--group-name", "-GroupName"),
    "attributesetname": ("--attribute-set-name", "-AttributeSetName"),
    "enrollmenttokenexpirationtime": ("--enrollment-token-expiration-time", "-EnrollmentTokenExpirationTime"),
}
_SINGLE_DASH = re.compile(r"-([A-Za-z][A-Za-z0-9_-]*)(?:[:=](.*))?", re.DOTALL)
_DOUBLE_DASH = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:([:=])(.*))?", re.DOTALL)


def _key(name: str) -> str:
    return name.lstrip("-").lower().replace("-", "").replace("_", "")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public way to the subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _unknown_command(word: str) -> str:
    if word.lower().strip("-/") in {"help", "?", "h"}:
        return f"unknown command {word!r}: for help run defguard-entra --help, or defguard-entra COMMAND --help"
    close = [c for c in COMMANDS if c == word.lower()] or difflib.get_close_matches(word.lower(), COMMANDS, n=1)
    if close:
        return f"unknown command {word!r}: did you mean {close[0]!r}? (see --help)"
    return (
        f"unknown command {word!r}: the commands are {', '.join(COMMANDS)}; without one, provision is implied "
        "(see --help)"
    )


def _closest(key: str, candidates: Mapping[str, str]) -> str | None:
    """The candidate (by normalised name) ``key`` most likely meant: one it starts, else the closest spelling."""
    if not key:
        return None
    starts = [name for name in candidates if name.startswith(key)]
    if starts:
        return candidates[min(starts, key=len)]
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return candidates[close[0]] if close else None


def _unknown_option(
    name: str, command: str, options: Mapping[str, argparse.Action], elsewhere: Mapping[str, Sequence[str]]
) -> str:
    """One line for an option ``command`` does not have: what it probably meant, never the value given."""
    key = _key(name)
    if key.endswith("graphtoken"):
        return f"unrecognized arguments: {name} (a Graph access token is read only from DEFGUARD_ENTRA_GRAPH_TOKEN)"
    known = _POWERSHELL[key][0] if name[1] != "-" and key in _POWERSHELL else name.lower()
    if known not in options and known in elsewhere:
        return (
            f"unrecognized arguments: {name} ({command} does not take {known}; "
            f"{', '.join(elsewhere[known])} do{'es' if len(elsewhere[known]) == 1 else ''})"
        )
    aliases = {k: f"{long} / {alias}" for k, (long, alias) in _POWERSHELL.items() if long in options}
    longs = {_key(o): o for o in options if o.startswith("--")}
    for long, alias in _POWERSHELL.values():
        if long in options:
            longs[_key(long)] = f"{long} / {alias}"
    hint = (_closest(key, aliases) if not name.startswith("--") else None) or _closest(key, longs)
    if hint:
        return f"unrecognized arguments: {name} (did you mean {hint}?)"
    return f"unrecognized arguments: {name} ({command} has no such option; see {command} --help)"


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _powershell_words(
    command: str, sub: argparse.ArgumentParser, words: Sequence[str], elsewhere: Mapping[str, Sequence[str]]
) -> list[str]:
    """PowerShell habits made exact: ``-url``, ``-GROUPNAME``, ``-Url:VALUE`` and ``-ApiToken=VALUE`` become
    ``--url``, ``--group-name``, ``--url=VALUE``; long options are matched case-insensitively. A single-dash word
    that is not one of the five parameters (nor a cluster of short flags such as ``-vv``) is refused, naming what
    it probably meant, instead of argparse guessing or echoing the value after it. Option values pass untouched."""
    options = {o: action for action in sub._actions for o in action.option_strings}  # noqa: SLF001
    shorts = {o[1] for o in options if len(o) == 2 and o[1] != "-"}
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            out.extend(words[index - 1 :])
            break
        canonical: str | None = None
        value: str | None = None
        if (match := _DOUBLE_DASH.fullmatch(word)) is not None:
            name = "--" + match[1]
            canonical = name if name in options else name.lower() if name.lower() in options else None
            if canonical is None:
                raise _UsageError(_unknown_option(name, command, options, elsewhere))
            value = match[3] if match[2] else None
        elif (match := _SINGLE_DASH.fullmatch(word)) is not None and not set(match[1]) <= shorts:
            name = "-" + match[1]
            known = _POWERSHELL.get(match[1].lower())
            if known is None or known[0] not in options:
                raise _UsageError(_unknown_option(name, command, options, elsewhere))
            canonical, value = known[0], match[2]
        else:  # a short flag (-v, -vv, -q, -h), "-", a negative number, or a stray word: argparse decides
            out.append(word)
            continue
        action = options[canonical]
        if value is not None:
            if not _takes_value(action):
                raise _UsageError(f"argument {canonical}: takes no value (got one after ':' or '=')")
            out.append(f"{canonical}={value}")
        elif _takes_value(action) and index < len(words):
            following = words[index]
            index += 1
            # argparse takes "-inf" or "-1e3" for an option; a word that is an option name stays one (a forgotten
            # value must not swallow --dry-run)
            out.extend([f"{canonical}={following}"] if _is_number(following) else [canonical, following])
        else:
            out.append(canonical)
    return out


def _normalise_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``provision`` inserted when the first word is an option; an unknown command refused with a suggestion;
    the PowerShell spellings of the options made exact (:func:`_powershell_words`)."""
    args = list(argv)
    if not args or args[0] in {"-h", "--help", "--version"}:
        return args
    if args[0] in COMMANDS:
        command, rest = args[0], args[1:]
    elif args[0].startswith("-"):
        command, rest = "provision", args
    else:
        raise _UsageError(_unknown_command(args[0]))
    subparsers = _subparsers(parser)
    elsewhere: dict[str, list[str]] = {}
    for name, other in subparsers.items():
        for action in other._actions:  # noqa: SLF001
            for option in action.option_strings:
                elsewhere.setdefault(option, []).append(name)
    sub = subparsers.get(command)
    return [command, *(_powershell_words(command, sub, rest, elsewhere) if sub is not None else rest)]


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
    stdout = stdout or sys.stdout or _Discard()  # sys.stdout is None when the descriptor was closed at start
    stderr = stderr or sys.stderr or _Discard()
    redactor = RedactingFilter(secrets_in_argv(argv))
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout):  # --help and --version print to the injected stream
            args = parser.parse_args(_normalise_argv(argv, parser))
    except _UsageError as exc:
        # argparse echoes the words it could not place: mask token-like ones, and every value of a secret option
        for secret in secrets_in_argv(argv, shaped=True):
            redactor.add(secret)
        message = str(exc) if "--help" in str(exc) else f"{exc} (see --help)"
        _write(stderr, "error: " + redactor.redact(message))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print and "exit"
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(stdout)
        return EXIT_USAGE
    console = _Console(stdout, stderr, redactor, quiet=getattr(args, "quiet", False))
    ctx = _Context(environ, stdin or sys.stdin, console, redactor, threading.Event())
    handler = _setup_logging(args, stderr, redactor)
    started = _now()
    # Commands that check the stop event get a graceful first Ctrl-C; the others stop at once (exit 130).
    graceful = getattr(args, "graceful_stop", False) or getattr(args, "provision", False) is True
    restore = _install_signal_handlers(ctx.stop, console) if graceful else _interrupt_on_sigterm()
    try:
        code: int = args.handler(args, ctx)
    except ConfigurationError as exc:  # a usage error too: a token pasted into the wrong option is not echoed
        for secret in secrets_in_argv(argv, shaped=True):
            redactor.add(secret)
        console.error(_as_flags(str(exc)))
        return EXIT_USAGE
    except (PreflightError, DefguardError, EntraError) as exc:
        console.error(str(exc))
        if getattr(args, "debug", False):
            log.exception("details")
        _write_fatal_report(args, exc, started, console)
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_fatal_report(args: argparse.Namespace, exc: Exception, started: dt.datetime, console: _Console) -> None:
    """A run that could not start still replaces ``--report`` (no members, ``fatal_error`` set), so automation
    never reads an earlier run's results as this one's."""
    path = getattr(args, "report", None)
    if not path:
        return
    from ._render import write_report  # noqa: PLC0415

    report = Report(
        command=str(args.command),
        started_at=started,
        finished_at=_now(),
        group_name=getattr(args, "group_name", None) or "",
        group_source=getattr(args, "group_source", "defguard"),
        attribute_set=getattr(args, "attribute_set_name", None) or DEFAULT_ATTRIBUTE_SET,
        outcomes=(),
        fatal_error=str(exc),
    )
    try:
        write_report(report, path)
    except (OSError, ConfigurationError) as error:
        console.warn(f"could not write the report {path!r}: {error}")


def _interrupt_on_sigterm() -> Callable[[], None]:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt → exit 130) for commands with nothing to finish."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _handle)

    def _restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return _restore


#: The library's messages speak of its parameters; the CLI's of the flags that set them.
_FLAG_OF = {
    "group_name": "--group-name",
    "group_source": "--group-source",
    "enrolled": "--enrolled",
    "lifetime": "--enrollment-token-expiration-time",
}
_PARAMETER = re.compile(r"\b(" + "|".join(_FLAG_OF) + r")\b(?= (?:is|must|=))")


def _as_flags(message: str) -> str:
    """A library error message with its parameter names (``group_name is empty``) turned into flags."""
    return _PARAMETER.sub(lambda m: _FLAG_OF[m.group(1)], message)


#: What stops a run gracefully: Ctrl-C, SIGTERM, and SIGHUP (an SSH session dropping) where it exists.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
#: The third signal aborts at once (the journal still holds what was in flight).
_SIGNALS_TO_ABORT = 3


def _install_signal_handlers(stop: threading.Event, console: _Console) -> Callable[[], None]:
    """First Ctrl-C/SIGTERM: stop starting new work and finish what is in flight; the second: stop now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    signals = 0

    def _handle(signum: int, frame: object) -> None:  # noqa: ARG001
        nonlocal signals
        signals += 1
        if signals >= _SIGNALS_TO_ABORT:
            raise KeyboardInterrupt
        if stop.is_set():
            console.warn(
                "still stopping: the writes in flight finish in seconds and the journal records any token they "
                "leave unstored; once more aborts without a report"
            )
            return
        stop.set()
        console.warn("stopping: finishing the writes in flight, then writing the report")

    previous = {sig: signal.signal(sig, _handle) for sig in _STOP_SIGNALS}

    def _restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return _restore
