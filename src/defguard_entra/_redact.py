"""Keep secrets out of logs: a :class:`logging.Filter` that masks tokens in every record, at every verbosity."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["RedactingFilter"]

_PATTERNS = (
    re.compile(r"\bdg-[A-Za-z0-9]{32}\b"),  # Defguard API tokens
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),  # Authorization headers
    re.compile(r"\b[A-Za-z0-9]{32}\b"),  # Defguard enrollment tokens (32 alphanumerics)
    re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),  # JWT access tokens
)


class RedactingFilter(logging.Filter):
    """Masks known secrets (added with :meth:`add`) and anything shaped like a Defguard or bearer token.

    Attach it to a handler (``handler.addFilter(RedactingFilter())``) so it sees records from every logger,
    third-party ones included. The message is formatted once, masked, and frozen into the record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = {s for s in secrets if len(s) >= 8}

    def add(self, secret: str) -> None:
        if len(secret) >= 8:
            with self._lock:
                self._secrets.add(secret)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "***")
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + "***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must still not leak
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
