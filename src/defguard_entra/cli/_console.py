"""Console output: stdout for results, stderr for progress, warnings and errors, all through the redaction filter;
text degraded to what the stream's encoding can show; a closed pipe skipped; logging (text or JSON lines). The signal
handlers are :mod:`._signals`' (re-exported here)."""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import io
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, TextIO

from .._redact import RedactingFilter
from ._render import fit
from ._signals import (
    install_signal_handlers,
    interrupt_on_sigterm,
    interrupt_signal_names,
    interrupted_at_once,
    stop_signal_names,
)

__all__ = [
    "Console",
    "Discard",
    "ProgressLine",
    "install_signal_handlers",
    "interrupt_on_sigterm",
    "interrupt_signal_names",
    "interrupted_at_once",
    "json_line",
    "setup_logging",
    "stop_signal_names",
    "write",
]

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


class Discard(io.StringIO):
    """Where output goes when there is no stream (stdout or stderr closed at start, ``pythonw``)."""

    def write(self, s: str) -> int:
        return len(s)


#: Streams that failed (closed pipe): nothing more is written to them in this process.
_BROKEN: weakref.WeakSet[Any] = weakref.WeakSet()
#: Streams whose last write was a progress line without its newline (a terminal's rewritten line): the next
#: message starts on a line of its own.
_OPEN_LINE: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_broken(stream: Any) -> bool:
    try:
        return stream in _BROKEN
    except TypeError:  # a stream that cannot be weakly referenced is simply tried again
        return False


def _mark_broken(stream: Any) -> None:
    with contextlib.suppress(TypeError):
        _BROKEN.add(stream)


#: Lines a signal handler could not write because it interrupted a write to the same stream (a buffered stream
#: refuses a reentrant write): written right after the next line to that stream.
_DEFERRED: list[tuple[Any, str]] = []


def write(stream: TextIO, text: str, *, newline: bool = True) -> bool:
    """Write and flush; ``False`` (and nothing raised) when the stream is closed or its reader has gone away
    (``| head``): losing output must not abort a run half-way or change its exit code. A write from a signal
    handler that interrupted a write to the same stream is deferred to the next write (never two lines mixed)."""
    if _is_broken(stream):
        return False
    with contextlib.suppress(TypeError):
        if stream in _OPEN_LINE and not text.startswith("\r"):
            _OPEN_LINE.discard(stream)
            text = "\n" + text
    line = _encodable(text, stream) + ("\n" if newline else "")
    try:
        stream.write(line)
        stream.flush()
    except RuntimeError:  # "reentrant call inside <_io.BufferedWriter>": a signal handler interrupted a write
        _DEFERRED.append((stream, line))
        return False
    except (OSError, ValueError):  # BrokenPipeError, EIO, "I/O operation on closed file"
        _mark_broken(stream)
        _silence(stream)
        return False
    while deferred := [item for item in _DEFERRED if item[0] is stream]:
        for item in deferred:
            _DEFERRED.remove(item)
            write(stream, item[1], newline=False)
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


def json_line(event: Mapping[str, Any], redactor: RedactingFilter) -> str:
    """One ``--log-format json`` line: ``time`` (UTC, ISO 8601) first, then ``event``'s fields, redacted (a secret
    is masked in the values before they are encoded, and in the encoded line too)."""
    data = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    data.update({k: redactor.redact(v) if isinstance(v, str) else v for k, v in event.items()})
    return redactor.redact(json.dumps(data, ensure_ascii=False, allow_nan=False, default=str))


class Console:
    """stdout for results, stderr for progress, warnings and errors; everything through the redaction filter.

    Text the stream's encoding cannot show is degraded (``…`` → ``...``), and a closed stream is skipped. With
    ``json_lines`` (``--log-format json``) every stderr line is one JSON object (:meth:`event`): messages become
    ``{"event": "log", "level": …, "message": …}``."""

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        redactor: RedactingFilter,
        *,
        quiet: bool,
        width: int | None = None,
        color: bool = False,
        json_lines: bool = False,
    ) -> None:
        self.stdout, self.stderr, self.redactor, self.quiet = stdout, stderr, redactor, quiet
        #: ``--log-format json``: stderr carries only JSON objects, one per line.
        self.json = json_lines
        #: The terminal's width (``COLUMNS``, else the terminal's size); ``None``: lines are not fitted.
        self.width = width
        #: Whether tables may use colour: stdout is a terminal, ``NO_COLOR`` is unset, ``TERM`` is not ``dumb``.
        self.color = color

    def out(self, text: str) -> None:
        write(self.stdout, fit(self.redactor.redact(text), self.width))

    def event(self, data: Mapping[str, Any]) -> None:
        """One JSON object on stderr (``--log-format json``; member and run events are shown with ``-q`` too)."""
        write(self.stderr, json_line(data, self.redactor))

    def _message(self, level: str, prefix: str, text: str) -> None:
        if self.json:
            self.event({"event": "log", "level": level, "message": text})
        else:
            write(self.stderr, prefix + self.redactor.redact(text))

    def info(self, text: str) -> None:
        if self.quiet:
            return
        if self.json:
            self._message("info", "", text)
        else:
            write(self.stderr, fit(self.redactor.redact(text), self.width))

    def notice(self, text: str) -> None:
        """What the user must see to go on, ``-q`` or not (the device-code sign-in's instructions), on stderr."""
        self._message("notice", "", text)

    def warn(self, text: str) -> None:
        self._message("warning", "warning: ", text)

    def error(self, text: str) -> None:
        self._message("error", "error: ", text)


class ProgressLine:
    """Members done, on stderr: a rewritten line on a terminal, a plain line every 10 % (or 5 s) otherwise.

    Once ``stop`` is set (Ctrl-C), the line says how many members were done and how many were not started: the
    service counts only the members it worked on, so an interrupted run never shows 100 %."""

    def __init__(self, stream: TextIO, label: str, stop: threading.Event | None = None) -> None:
        self.stream, self.label, self.stop = stream, label, stop
        try:
            self.tty = stream.isatty()
        except (OSError, ValueError):
            self.tty = False
        self._last_pct = -1
        self._last_time = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        stopping = self.stop is not None and self.stop.is_set() and done < total
        text = f"{self.label}: {done}/{total} ({pct}%)"
        if stopping:
            text = f"{self.label}: {done}/{total} done, stopping: {total - done} not started"
        with self._lock:
            now = time.monotonic()
            if self.tty:
                end = "\n" if done >= total else ""
                line = f"\r{text}{end}"  # longer than any line before it: nothing of those is left
            elif stopping or done >= total or pct >= self._last_pct + 10 or now - self._last_time >= 5:
                line = f"{text}\n"
            else:
                return
            self._last_pct, self._last_time = pct, now
            # a closed stderr only loses the progress line
            if write(self.stream, line, newline=False) and not line.endswith("\n"):
                with contextlib.suppress(TypeError):
                    _OPEN_LINE.add(self.stream)


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines degraded to the stream's encoding; a failing stream drops the line instead of printing
    logging's "--- Logging error ---" traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record must not end the run (the filter already redacted it)
            return
        write(self.stream, text)


#: Loggers whose lines only ``-vv`` shows: azure-identity's warnings repeat the sign-in error over several lines
#: with trace ids and raw JSON (``DeviceCodeCredential.get_token failed: …``, ChainedTokenCredential's summary),
#: and MSAL's and msal-extensions' are for debugging; the error itself is one line of ours.
_SIGN_IN_SDKS = ("azure.identity", "msal")


def _without_sign_in_sdks(record: logging.LogRecord) -> bool:
    return not any(record.name == name or record.name.startswith((f"{name}.", f"{name}_")) for name in _SIGN_IN_SDKS)


class _JsonFormatter(logging.Formatter):
    """``--log-format json``: a log record as one JSON line (the handler's filter has already redacted it)."""

    def __init__(self, redactor: RedactingFilter) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            event["traceback"] = record.exc_text
        return json_line(event, self.redactor)


def setup_logging(
    verbose: int, stderr: TextIO, redactor: RedactingFilter, *, quiet: bool, json_lines: bool = False
) -> logging.Handler:
    """A redacting stderr handler on the root logger at the level ``-v``/``-vv``/``-q`` ask for (``json_lines``:
    each record one JSON object); the caller removes it when the command ends."""
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    handler = _StreamHandler(stderr)
    handler.setFormatter(
        _JsonFormatter(redactor) if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    if level > logging.DEBUG:
        handler.addFilter(_without_sign_in_sdks)
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
