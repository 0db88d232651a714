"""Keep secrets out of logs: a :class:`logging.Filter` that masks tokens in every record, at every verbosity."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence

from .models import live_secret_values

__all__ = ["RedactingFilter", "secrets_in_argv"]

#: Where a Defguard enrollment token (32 alphanumerics, no prefix of its own) is masked: after a word that says it is
#: one (``token``, ``EnrollmentToken``, ``enrollment_token``, ``enrol``, ``secret``, ``key``…) and a few separators
#: (``=``, ``:``, quotes, a space, ``/``), as in ``token=…``, ``"enrollment_token": "…"``, ``/enrollment/…``. Anywhere
#: else a 32-character word is shown: a group or user may be named so (known secrets are masked wherever they are).
_CONTEXT = r"\b\w*(?:token|enrol|secret|passw|pwd|key|credential|bearer)\w*[\s:=\"'/]{0,4}"
#: The OAuth fields that carry a secret, whatever their format (``key=value`` or ``"key": "value"``).
_OAUTH_KEYS = (
    "code_verifier|code_challenge|device_code|user_code|refresh_token|access_token|id_token|client_assertion"
    "|client_secret|assertion|password"
)
_PATTERNS = (
    re.compile(r"\bdg-[A-Za-z0-9]{32}\b"),  # Defguard API tokens: the prefix is the context
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),  # Authorization headers
    re.compile(rf"(?i)({_CONTEXT})[A-Za-z0-9]{{32}}\b"),  # Defguard enrollment tokens, where named as such
    re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),  # JWT access tokens
    # OAuth values in MSAL's debug lines (msal 1.39): its token-cache event (``"data": {"code": …,
    # "code_verifier": …, "device_code": …}``, JSON), the redirect it receives (``Got auth response: {'code': …}``, a
    # dict, and the local server's request line ``GET /?code=…&state=…``), and forms and URLs in general.
    re.compile(rf"(?i)(\b(?:{_OAUTH_KEYS})=)[^&\s\"',;]+"),
    re.compile(rf"""(?i)(["'](?:{_OAUTH_KEYS})["']\s*:\s*["'])[^"']+"""),
    # ``code`` alone is also an OData error's field ("Request_ResourceNotFound"): masked when it looks like an
    # authorization code (16 characters or more, with a digit, a dot or a dash).
    re.compile(r"(\bcode=)(?=[^&\s\"',;]{16})(?=[^&\s\"',;]*[\d.\-])[^&\s\"',;]+"),
    re.compile(r"""(["']code["']\s*:\s*["'])(?=[^"']{16})(?=[^"']*[\d.\-])[^"']+"""),
)
#: Words that could be a live :class:`~defguard_entra.models.Secret` (a minted or stored token, a key): each is
#: masked when it is one, wherever it stands.
_CANDIDATE = re.compile(r"[A-Za-z0-9\-._~+]{8,}")


#: An option whose name, lower-cased without ``-`` and ``_``, ends like this carries a secret: ``--api-token``,
#: ``-ApiToken:…``, ``--graph-token``, ``--client-secret``, ``--password`` (``--api-token-file`` and
#: ``--enrollment-token-expiration-time`` do not end so).
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "pwd", "key", "credential", "credentials", "bearer")
_OPTION = re.compile(r"(-{1,2})([A-Za-z][A-Za-z0-9_-]*)(?:[:=](.*))?", re.DOTALL)
_RANDOM_CHARS = re.compile(r"[A-Za-z0-9+/=_\-.~]+")
_PATH_LIKE = re.compile(r"[/~.]|[A-Za-z]:[/\\]|.*/.*\.[A-Za-z0-9]{1,5}$")  # absolute, home, relative, a file
#: Secrets shorter than this are masked only as whole words (a 3-letter password must not mangle every message).
_SUBSTRING_MIN = 8
_WORD_MIN = 3


def _ends_secret(name: str) -> bool:
    key = name.lower().replace("-", "").replace("_", "")
    return key.endswith(_SECRET_ENDINGS)


def _looks_random(word: str) -> bool:
    """Long, token alphabet only, letters and digits mixed, and high entropy: an API key or bearer token pasted in
    the wrong place (paths, URLs and names do not qualify)."""
    if len(word) < 20 or "://" in word or not _RANDOM_CHARS.fullmatch(word) or _PATH_LIKE.match(word):
        return False
    if not (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)):
        return False
    counts = Counter(word)
    entropy = -sum(n / len(word) * math.log2(n / len(word)) for n in counts.values())
    return entropy >= 3.5  # bits per character; English words and paths stay below


def secrets_in_argv(argv: Sequence[str], *, shaped: bool = False) -> list[str]:
    """Values on a command line that must never be echoed, for :meth:`RedactingFilter.add`.

    Always the value following, or attached to (``=``, ``:``), an option whose name says it is a secret (``api-token``,
    ``apitoken``, ``graph-token``, ``token``, ``secret``, ``password``, ``client-secret``, any case, one or two
    dashes). With ``shaped``: also every word, or value attached to an option, that looks like a token (long, mixed
    and random); meant for usage errors, which echo the words argparse could not place.
    """
    found: list[str] = []
    words = list(argv)
    for index, word in enumerate(words):
        match = _OPTION.fullmatch(word)
        if match is not None and _ends_secret(match[2]):
            if match[3] is not None:
                found.append(match[3])
            elif index + 1 < len(words) and not _OPTION.fullmatch(words[index + 1]):
                found.append(words[index + 1])
        if shaped:
            value = match[3] if match is not None and match[3] is not None else word
            if _looks_random(value):
                found.append(value)
    return [s for s in found if len(s.strip()) >= _WORD_MIN]


class RedactingFilter(logging.Filter):
    """Masks known secrets (added with :meth:`add`, and every live :class:`~defguard_entra.Secret`: the tokens this
    library minted or read) wherever they appear, and token shapes in their context: a
    Defguard API token (``dg-…``), a bearer token, a JWT, and a 32-character enrollment token where the text names
    it (``token=…``, ``"enrollment_token": "…"``); a 32-character word elsewhere (a group name) stays visible.

    Attach it to a handler (``handler.addFilter(RedactingFilter())``) so it sees records from every logger,
    third-party ones included. The message is formatted once, masked, and frozen into the record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._words: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on: anywhere when it has 8 characters or more, as a whole word when shorter
        (down to 3; shorter values are not masked)."""
        secret = secret.strip()
        with self._lock:
            if len(secret) >= _SUBSTRING_MIN:
                self._secrets.add(secret)
            elif len(secret) >= _WORD_MIN:
                self._words.add(secret)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
            words = sorted(self._words, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "***")
        for word in words:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", "***", text)
        live = live_secret_values()
        if live:
            text = _CANDIDATE.sub(lambda m: "***" if m.group() in live else m.group(), text)
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
