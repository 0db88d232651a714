"""What the emulated Defguard core answers with, and the small parsers its handlers share: the finished-response
error, ``{"msg": …}`` and ``text/plain`` bodies, API tokens, version strings, URL normalisation (as the Rust ``url``
crate serialises), path segments and integers (as Rust's ``from_str`` parses them).
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from typing import Final, Literal
from urllib.parse import unquote_to_bytes, urlsplit

from defguard_entra.testing._server import Response

__all__ = [
    "ALNUM",
    "I64_MAX",
    "U32",
    "U64",
    "ResponseError",
    "Version",
    "decode_segment",
    "fail",
    "msg_response",
    "normalise_url",
    "parse_i64",
    "parse_u32",
    "parse_version",
    "plain",
    "random_token",
    "sha256",
]


Version = Literal["1.6", "2.0"]

ALNUM: Final = string.ascii_letters + string.digits
U64: Final = 2**64 - 1
U32: Final = 2**32 - 1
I64_MAX: Final = 2**63 - 1
_SPECIAL_SCHEMES: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}


class ResponseError(Exception):
    """Short-circuits a handler with a finished response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def msg_response(status: int, text: str) -> Response:
    return Response.json(status, {"msg": text})


def fail(status: int, text: str) -> ResponseError:
    return ResponseError(msg_response(status, text))


def plain(status: int, text: str) -> ResponseError:
    return ResponseError(Response.text(status, text))


def random_token() -> str:
    """32 characters of ``[A-Za-z0-9]``, uniformly (rejection sampling over ``os.urandom``)."""
    chars: list[str] = []
    while len(chars) < 32:
        chars.extend(ALNUM[byte % 62] for byte in os.urandom(48) if byte < 248)
    return "".join(chars[:32])


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_version(version: str) -> Version:
    text = str(version).strip()
    if text == "1.6" or re.fullmatch(r"1\.6\.(\d+|x)", text):
        return "1.6"
    if text in {"2", "2.0", "2.x"} or re.fullmatch(r"2\.0\.(\d+|x)", text):
        return "2.0"
    raise ValueError(f"unsupported Defguard version {version!r}: use 1.6 or 2.0")


def normalise_url(raw: str) -> str | None:
    """Serialise like the Rust ``url`` crate (lower-case scheme and host, no default port, ``/`` for an empty
    path); ``None`` when the crate would refuse to parse it."""
    text = raw.strip(
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17"
        "\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f "
    )
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text):
        return None  # relative URL without a base
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SPECIAL_SCHEMES:
        return text
    if not parts.netloc or not parts.hostname:
        return None  # empty host
    try:
        port = parts.port
    except ValueError:
        return None  # invalid port number
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{netloc}"
    if port is not None and port != _SPECIAL_SCHEMES[scheme]:
        netloc = f"{netloc}:{port}"
    url = f"{scheme}://{netloc}{parts.path or '/'}"
    if parts.query or text.split("#", 1)[0].endswith("?"):
        url += f"?{parts.query}"
    if parts.fragment or text.endswith("#"):
        url += f"#{parts.fragment}"
    return url


def decode_segment(segment: str, key: str) -> str:
    """Percent-decode one path parameter after routing (``%2F`` stays, ``+`` stays); invalid UTF-8 is a 400."""
    try:
        return unquote_to_bytes(segment.encode("latin-1")).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise plain(400, f"Invalid URL: Invalid UTF-8 in `{key}`") from None


def parse_u32(text: str) -> int:
    """Rust's ``u32::from_str`` (an optional ``+``, ASCII digits), with its error texts."""
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text[0] == "+" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError("invalid digit found in string")
    value = int(digits)
    if value > U32:
        raise ValueError("number too large to fit in target type")
    return value


def parse_i64(text: str) -> int | None:
    if not re.fullmatch(r"[+-]?[0-9]+", text, re.ASCII):
        return None
    value = int(text)
    return value if -(2**63) <= value <= I64_MAX else None
