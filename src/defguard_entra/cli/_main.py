"""The entry point: parse, run the command, present its result, and the ONE map from exceptions to exit codes (one
line on stderr per error, never a traceback unless ``--debug``, never a secret)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TextIO

from .._redact import RedactingFilter, secrets_in_argv
from ..config import DEFAULT_ATTRIBUTE_SET
from ..exceptions import ConfigurationError, DefguardEntraError, DefguardError, EntraError, PreflightError
from ._argv import normalise_argv
from ._commands import Context, audited_fatal, run
from ._console import Console, Discard, install_signal_handlers, interrupt_on_sigterm, setup_logging, write
from ._demo import demo
from ._options import DemoOptions, GroupOptions, Options, SyncOptions, options_from
from ._parser import COMMANDS, UsageError, build_parser
from ._present import (
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ExportRun,
    ReportRun,
    Result,
    exit_code,
    present,
)
from ._render import run_event, write_report
from ._watch import watch

__all__ = ["as_flags", "main"]

log = logging.getLogger("defguard_entra")


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
    stdout = stdout or sys.stdout or Discard()  # sys.stdout is None when the descriptor was closed at start
    stderr = stderr or sys.stderr or Discard()
    redactor = RedactingFilter(secrets_in_argv(argv))
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout):  # --help and --version print to the injected stream
            namespace = parser.parse_args(normalise_argv(argv, parser))
    except UsageError as exc:
        # argparse echoes the words it could not place: mask token-like ones, and every value of a secret option
        for secret in secrets_in_argv(argv, shaped=True):
            redactor.add(secret)
        message = str(exc) if "--help" in str(exc) else f"{exc} (see --help)"
        if _asks_for_json(argv):
            console = Console(stdout, stderr, redactor, quiet=False, json_lines=True)
            console.error(message)
            console.event(run_event(_command_word(argv), EXIT_USAGE, 0.0, error=message))
        else:
            write(stderr, "error: " + redactor.redact(message))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print and "exit"
        return int(exc.code or 0)
    if namespace.command is None:
        parser.print_help(stdout)
        return EXIT_USAGE
    options = options_from(namespace)
    console = Console(
        stdout,
        stderr,
        redactor,
        quiet=options.console.quiet,
        width=terminal_width(environ, stdout),
        color=colors_allowed(environ, stdout),
        json_lines=options.console.json,
    )
    ctx = Context(environ, stdin or sys.stdin, console, redactor, threading.Event())
    handler = setup_logging(
        options.console.verbose, stderr, redactor, quiet=options.console.quiet, json_lines=options.console.json
    )
    watching = isinstance(options, SyncOptions) and options.watch is not None
    finish = threading.Event()
    # Commands that check the stop event get a graceful first Ctrl-C; the others stop at once (exit 130).
    if options.graceful:
        restore = install_signal_handlers(ctx.stop, console, finish=finish if watching else None)
    else:
        restore = interrupt_on_sigterm()
    try:
        if isinstance(options, SyncOptions) and watching:
            return watch(lambda cycle: _run_once(options, ctx, argv, cycle), options, finish, ctx)
        return _run_once(options, ctx, argv)
    finally:
        restore()
        logging.getLogger().removeHandler(handler)


def _asks_for_json(argv: Sequence[str]) -> bool:
    """Whether a command line argparse refused asked for ``--log-format json`` (its error is then JSON too)."""
    words = list(argv)
    return "--log-format=json" in words or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(words)
    )


def _command_word(argv: Sequence[str]) -> str:
    return next((word for word in argv if word in COMMANDS), "provision")


def _run_once(options: Options, ctx: Context, argv: Sequence[str], cycle: int | None = None) -> int:
    """Run the command once: its result presented, every exception mapped to its exit code; with ``--log-format
    json``, the run's event last."""
    started = _now()
    code, result, error = _attempt(options, ctx, argv, started)
    if ctx.console.json:
        report = result.report if isinstance(result, ReportRun) else None
        group = options.group_name if isinstance(options, GroupOptions) else None
        statuses = result.manifest.summary if isinstance(result, ExportRun) and result.manifest else None
        seconds = (_now() - started).total_seconds()
        ctx.console.event(
            run_event(
                options.command,
                code,
                seconds,
                report=report,
                group=group,
                group_source=options.group_source if isinstance(options, GroupOptions) else None,
                statuses=statuses,
                error=error,
                cycle=cycle,
            )
        )
    return code


def _attempt(
    options: Options, ctx: Context, argv: Sequence[str], started: dt.datetime
) -> tuple[int, Result | None, str | None]:
    """The exit code, the result (``None`` when an exception ended the run) and the error's one line."""
    console = ctx.console
    try:
        result: Result = demo(options, ctx) if isinstance(options, DemoOptions) else run(options, ctx)
        present(result, console)
        return exit_code(result), result, None
    except ConfigurationError as exc:  # a usage error too: a token pasted into the wrong option is not echoed
        for secret in secrets_in_argv(argv, shaped=True):
            ctx.redactor.add(secret)
        message = as_flags(str(exc))
        console.error(message)
        return EXIT_USAGE, None, message
    except (PreflightError, DefguardError, EntraError) as exc:
        console.error(str(exc))
        if options.console.debug:
            log.exception("details")
        _write_fatal_report(options, exc, started, ctx)
        return EXIT_FATAL, None, str(exc)
    except DefguardEntraError as exc:
        console.error(str(exc))
        return EXIT_FAILED, None, str(exc)
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED, None, "interrupted"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def terminal_width(environ: Mapping[str, str], stream: TextIO) -> int | None:
    """The width output is fitted to: ``COLUMNS`` when it is a positive number, else the terminal's (``stty cols``);
    ``None`` for a pipe or a file (nothing is cut that a script might read)."""
    columns = environ.get("COLUMNS", "").strip()
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return max(int(columns), 20)
    if not _isatty(stream):
        return None
    try:
        size = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return max(size, 20) if size > 0 else None


def colors_allowed(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` (https://no-color.org) or ``TERM=dumb``."""
    return _isatty(stream) and not environ.get("NO_COLOR") and environ.get("TERM", "") != "dumb"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_fatal_report(options: Options, exc: Exception, started: dt.datetime, ctx: Context) -> None:
    """A run that could not start still replaces ``--report`` (no members, ``fatal_error`` set), so automation
    never reads an earlier run's results as this one's; it keeps what was known (the Defguard URL, the options)."""
    path = options.report
    if not path:
        return
    from ..provisioning.report import Run  # noqa: PLC0415 - only when a run could not start

    group = options if isinstance(options, GroupOptions) else None
    run = Run(
        command=options.command,
        group_name=(group.group_name if group is not None else None) or "",
        group_source=group.group_source if group is not None else "defguard",
        attribute_set=options.graph.attribute_set_name or DEFAULT_ATTRIBUTE_SET,
        defguard_url=ctx.settings.defguard_url if ctx.settings is not None else _flag_url(options),
        timed=False,
        started=started,
    )
    report = audited_fatal(run.report((), fatal=str(exc)), options, ctx)
    try:
        write_report(report, path)
    except (OSError, ConfigurationError) as error:
        ctx.console.warn(f"could not write the report {path!r}: {error}")


def _flag_url(options: Options) -> str | None:
    return options.defguard.url if options.defguard is not None else None


#: The library's messages speak of its parameters; the CLI's of the flags that set them.
_FLAG_OF = {
    "group_name": "--group-name",
    "group_id": "--group-id",
    "group_source": "--group-source",
    "enrolled": "--enrolled",
    "lifetime": "--enrollment-token-expiration-time",
    "users": "--user",
    "refresh_before": "--refresh-before",
    "max_changes": "--max-changes",
}
_PARAMETER = re.compile(r"\b(" + "|".join(_FLAG_OF) + r")\b(?= (?:is|must|holds|=))")


def as_flags(message: str) -> str:
    """A library error message with its parameter names (``group_name is empty``) turned into flags."""
    return _PARAMETER.sub(lambda m: _FLAG_OF[m.group(1)], message)
