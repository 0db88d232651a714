"""Flags + environment → :class:`~defguard_entra.config.Settings`, once: the API token from the command line, a
file or stdin; the Graph, Defguard and pace flags over ``Settings.from_env``; the per-user state directory.

The CLI is the only part of the package that reads the environment (``main`` passes it in).
"""

from __future__ import annotations

import codecs
import datetime as dt
import getpass
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._durations import parse_duration, parse_lifetime, short_lifetime_warning
from .._sign_in_record import default_identity_dir
from ..config import (
    Settings,
    is_loopback_url,
    validate_attribute_set_name,
    validate_group_name,
    validate_seconds,
)
from ..exceptions import ConfigurationError
from ..models import Secret
from ..provisioning.journal import default_state_dir
from ._options import DefguardFlags, GraphFlags, GroupOptions, Options, ProvisionOptions, SyncOptions
from ._parser import TOKEN_CACHE_CHOICES

__all__ = ["SyncValues", "identity_dir", "load_settings", "state_dir", "sync_values"]

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
    defguard: DefguardFlags, stdin: TextIO | None, warn: Callable[[str], None], stderr: TextIO | None = None
) -> Secret | None:
    literal, path = defguard.api_token, defguard.api_token_file
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


def _check_inputs(options: Options) -> None:
    """Values no file system or server takes: one line, before anything else looks at them."""
    for flag, value in options.paths().items():
        if isinstance(value, str) and "\0" in value:
            raise ConfigurationError(f"--{flag.replace('_', '-')} contains a NUL byte: give a real path")
    if isinstance(options, GroupOptions) and options.group_name is not None:
        validate_group_name(options.group_name)
    if isinstance(options, GroupOptions) and options.users is not None:
        for name in options.users:
            if not name.strip():
                raise ConfigurationError("--user is empty: give a member's Defguard username or e-mail address")
            if any(not char.isprintable() for char in name):
                raise ConfigurationError(
                    f"--user {name!r} holds a control character: give a member's Defguard username or e-mail address"
                )
    if isinstance(options, SyncOptions):
        sync_values(options)


@attrs.frozen
class SyncValues:
    """``sync``'s own values, parsed: ``--refresh-before``, ``--max-changes`` and ``--watch``."""

    refresh_before: dt.timedelta | None = None
    #: A number of members, or ``"P%"`` of the group; ``None``: the library's default.
    max_changes: int | str | None = None
    watch: dt.timedelta | None = None


_MAX_CHANGES = re.compile(r"([0-9]+)\s*(%?)")
_MAX_CHANGES_FIX = "give a positive number of members such as 25, or a percentage from 1% to 100% such as 10%"


def _max_changes(text: str) -> int | str:
    match = _MAX_CHANGES.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(
            f"--max-changes {text!r} is not a number of members or a percentage: {_MAX_CHANGES_FIX}"
        )
    number, percent = int(match[1]), bool(match[2])
    if percent and not 1 <= number <= 100:
        raise ConfigurationError(f"--max-changes {text!r} is not a percentage from 1% to 100%: {_MAX_CHANGES_FIX}")
    if number < 1:
        raise ConfigurationError(f"--max-changes {text!r} allows no change at all: {_MAX_CHANGES_FIX}")
    return f"{number}%" if percent else number


def sync_values(options: SyncOptions) -> SyncValues:
    """``sync``'s own values, checked (one line naming the option and the fix) before anything is read or sent."""
    refresh = watch = None
    if options.refresh_before is not None:
        refresh = parse_duration(options.refresh_before, "--refresh-before")
        lifetime = options.enrollment_token_expiration_time
        try:
            minted = parse_lifetime(lifetime) if lifetime is not None else None
        except ConfigurationError:  # reported as --enrollment-token-expiration-time's own error
            minted = None
        if minted is not None and refresh >= minted:
            raise ConfigurationError(
                f"--refresh-before {options.refresh_before} is not shorter than the token lifetime {lifetime}: every "
                "run would replace every token; give a shorter --refresh-before (default: a quarter of the lifetime)"
            )
    if options.watch is not None:
        watch = parse_duration(options.watch, "--watch interval")
    max_changes = _max_changes(options.max_changes) if options.max_changes is not None else None
    return SyncValues(refresh, max_changes, watch)


def _reject_conflicts(options: Options) -> None:
    """Options that contradict each other: one line naming both, before anything is read or sent."""
    if options.console.quiet and options.console.verbose:
        raise ConfigurationError("--quiet and --verbose contradict each other: give one of them")
    if isinstance(options, ProvisionOptions) and options.reveal_tokens and not options.report:
        raise ConfigurationError("--reveal-tokens needs --report PATH: full tokens go only into an owner-only file")
    report = options.report
    if report:
        target = Path(report).expanduser().resolve()
        defguard = options.defguard or DefguardFlags()
        for flag, value in (("api_token_file", defguard.api_token_file), ("ca_bundle", defguard.ca_bundle)):
            if value and Path(value).expanduser().resolve() == target:
                option = "--" + flag.replace("_", "-")
                raise ConfigurationError(f"--report {report!r} would overwrite {option}: write the report elsewhere")


def load_settings(
    options: Options,
    environ: Mapping[str, str],
    stdin: TextIO | None,
    warn: Callable[[str], None],
    stderr: TextIO | None = None,
) -> Settings:
    """The run's settings: ``Settings.from_env(environ)`` with the flags of ``options`` over it, validated."""
    _check_inputs(options)
    _reject_conflicts(options)
    base = Settings.from_env(environ)
    flags, pace = options.graph, options.pace
    graph = attrs.evolve(
        base.graph,
        auth=flags.auth or base.graph.auth,
        tenant_id=flags.tenant_id or base.graph.tenant_id,
        client_id=flags.client_id or base.graph.client_id,
        cloud=flags.cloud or base.graph.cloud,
        graph_url=flags.graph_url or base.graph.graph_url,
        **_sign_in_options(flags, environ),
    )
    defguard = options.defguard
    token = _read_api_token(defguard or DefguardFlags(), stdin, warn, stderr)
    if token is None and base.defguard_token is not None:
        token = _check_token(base.defguard_token.value, "DEFGUARD_API_TOKEN")
    changes: dict[str, Any] = {"graph": graph, "defguard_token": token}
    if defguard is None:  # fetch-config: Defguard is not contacted, DEFGUARD_URL does not matter
        changes["defguard_url"] = None
        defguard = DefguardFlags()
    elif defguard.url:
        changes["defguard_url"] = defguard.url
    changes["allow_insecure_http"] = defguard.allow_insecure_http
    if defguard.ca_bundle:
        if not Path(defguard.ca_bundle).expanduser().is_file():
            raise ConfigurationError(f"--ca-bundle {defguard.ca_bundle!r} is not a file")
        changes["ca_bundle"] = str(Path(defguard.ca_bundle).expanduser())
    if flags.attribute_set_name is not None:
        changes["attribute_set"] = validate_attribute_set_name(flags.attribute_set_name)
    if options.enrollment_token_expiration_time is not None:
        try:
            changes["token_lifetime"] = parse_lifetime(options.enrollment_token_expiration_time)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--enrollment-token-expiration-time: {exc}") from None
        if (short := short_lifetime_warning(changes["token_lifetime"])) is not None:
            warn(f"--enrollment-token-expiration-time: {short}")
    if defguard.timeout is not None:
        changes["timeout"] = validate_seconds("--timeout", defguard.timeout)
    if pace.graph_write_rate is not None:
        changes["graph_write_rate"] = validate_seconds(
            "--graph-write-rate", pace.graph_write_rate, zero="no limit", unit="writes per second"
        )
    if pace.concurrency is not None:
        changes["concurrency"] = pace.concurrency
    if pace.stall_timeout is not None:
        changes["stall_timeout"] = validate_seconds("--stall-timeout", pace.stall_timeout)
    retries, retry_time = pace.retries, pace.max_retry_time
    if retries is not None or retry_time is not None:
        if retries is not None and retries < 0:
            raise ConfigurationError("--retries must be 0 or more")
        if retry_time is not None:
            validate_seconds("--max-retry-time", retry_time)
        retry = base.retry
        if retries is not None:
            retry = attrs.evolve(retry, attempts=retries + 1)
        if retry_time is not None:
            retry = attrs.evolve(retry, timeout=retry_time)
        changes["retry"] = retry
    settings = attrs.evolve(base, **changes).validate()
    url = settings.defguard_url
    if url and url.strip().lower().startswith("http://") and not is_loopback_url(url):
        warn(
            f"--allow-insecure-http: the API token and the enrollment tokens go to {url} unencrypted; anyone on "
            "the network path can read them"
        )
    return settings


def _sign_in_options(flags: GraphFlags, environ: Mapping[str, str]) -> dict[str, Any]:
    """``--token-cache`` (or ``DEFGUARD_ENTRA_TOKEN_CACHE``), ``--browser-timeout``, and where sign-ins are
    remembered: azure-identity's cache directory for this platform (``default_identity_dir``)."""
    mode = flags.token_cache or environ.get("DEFGUARD_ENTRA_TOKEN_CACHE", "").strip().lower() or "auto"
    if mode not in TOKEN_CACHE_CHOICES:
        raise ConfigurationError(
            f"DEFGUARD_ENTRA_TOKEN_CACHE={mode!r} is not a token cache mode: use {', '.join(TOKEN_CACHE_CHOICES)}"
        )
    options: dict[str, Any] = {
        "token_cache": mode != "memory",
        "unencrypted_token_cache": mode == "unencrypted",
        "sign_in_dir": identity_dir(environ),
    }
    if flags.browser_timeout is not None:
        options["browser_timeout"] = validate_seconds("--browser-timeout", flags.browser_timeout)
    return options


def identity_dir(environ: Mapping[str, str]) -> Path | None:
    """Where azure-identity keeps token caches on this machine, and this tool its sign-in records."""
    return default_identity_dir(sys.platform, environ)


def state_dir(environ: Mapping[str, str]) -> Path | None:
    """The per-user state directory (journal of tokens in flight, run locks): DEFGUARD_ENTRA_STATE_DIR, else the
    platform's (``provisioning.journal.default_state_dir``)."""
    explicit = environ.get("DEFGUARD_ENTRA_STATE_DIR", "").strip()
    return Path(explicit).expanduser() if explicit else default_state_dir(sys.platform, environ)
