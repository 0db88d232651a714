"""A Defguard core emulator (1.6.x and 2.x) on top of :class:`~._server.EmulatorServer`.

It reproduces the REST contract in ``defguard-api.md`` (sections 2 to 7 and the checklist in section 10): the
license gate and the authentication order, the user and group endpoints in both version shapes, ``start_enrollment``
and ``start_desktop`` with their check order, humantime parsing and token bookkeeping, the axum routing quirks (the
web UI answering every unknown ``GET``), the ``text/plain`` extractor rejections, and seeded faults.

Standard library only. State lives in dictionaries keyed by username (and by token), guarded by ``self.lock``, so the
hot paths stay O(1) however many users are seeded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import os
import random
import re
import string
import time
from collections.abc import Iterable
from http import HTTPStatus
from types import EllipsisType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

from ._server import DROP, EmulatorServer, Faults, Handler, Request, Response

__all__ = ["DefguardEmulator", "Device", "EnrollmentToken", "HumantimeError", "RateLimit", "parse_humantime"]

Version = Literal["1.6", "2.0"]
TokenKind = Literal["enrollment", "desktop"]

_ALNUM: Final = string.ascii_letters + string.digits
_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
_U64: Final = 2**64 - 1
_U32: Final = 2**32 - 1
_I64_MAX: Final = 2**63 - 1
_BODY_LIMIT_V2: Final = 256 * 1024
_STRUCT_NAME: Final = "struct StartEnrollmentRequest"
_SEQ_FIELDS: Final = ("send_enrollment_notification", "email", "token_expiration_time")
_SPECIAL_SCHEMES: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}
_WEB_UI: Final = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>defguard</title></head>'
    '<body><div id="root"></div><script type="module" src="/assets/index.js"></script></body></html>'
)
_LICENSE_GRACE_DAYS: Final = 14
_MAIL_SUBJECTS: Final = {"enrollment": "Defguard user enrollment", "desktop": "Defguard desktop client configuration"}


# -- humantime 2.3.0 -----------------------------------------------------------------------------------------------

# Rust's char::is_whitespace (the Unicode White_Space property); Python's str.isspace() differs (U+001C..U+001F).
_RUST_WS: Final = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# unit -> (seconds per unit, nanoseconds per unit); exactly one of the two is non-zero
_UNITS: Final[dict[str, tuple[int, int]]] = {
    **dict.fromkeys(("nanos", "nsec", "ns"), (0, 1)),
    **dict.fromkeys(("usec", "us", "µs"), (0, 1_000)),
    **dict.fromkeys(("millis", "msec", "ms"), (0, 1_000_000)),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), (1, 0)),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), (60, 0)),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), (3_600, 0)),
    **dict.fromkeys(("days", "day", "d"), (86_400, 0)),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), (604_800, 0)),
    **dict.fromkeys(("months", "month", "M"), (2_630_016, 0)),  # 30.44 days
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), (31_557_600, 0)),  # 365.25 days
}
# how a fraction of each unit is added: (seconds, nanoseconds) multiplier, as in humantime's parse_unit
_FRACTION_SCALE: Final[dict[tuple[int, int], tuple[int, int]]] = {
    (0, 1_000): (0, 1_000),
    (0, 1_000_000): (0, 1_000_000),
    (1, 0): (0, 1_000_000_000),
    (60, 0): (0, 60_000_000_000),
    (3_600, 0): (3_600, 0),
    (86_400, 0): (86_400, 0),
    (604_800, 0): (604_800, 0),
    (2_630_016, 0): (2_630_016, 0),
    (31_557_600, 0): (31_557_600, 0),
}


class HumantimeError(ValueError):
    """The text is not a duration humantime 2.3.0 accepts (the server answers 400)."""


class _PanicError(Exception):
    """The server would panic (the worker dies and the connection drops without an answer)."""


def _checked(value: int) -> int:
    if value > _U64:
        raise HumantimeError("number is too large")
    return value


def _is_unit_char(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z" or char == "µ"


class _HumantimeParser:
    """A line-by-line port of ``humantime::parse_duration`` 2.3.0 (u64 overflow checks included)."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.secs = 0
        self.nanos = 0

    def first_digit(self) -> int | None:
        while self.pos < len(self.src):
            char = self.src[self.pos]
            self.pos += 1
            if "0" <= char <= "9":
                return ord(char) - 48
            if char not in _RUST_WS:
                raise HumantimeError(f"expected number at {self.pos - 1}")
        return None

    def fraction(self, off: int) -> tuple[int, int, int]:
        """Digits after the decimal point: (numerator, denominator, offset), like ``parse_fractional_part``."""
        numerator, denominator = 0, 1
        while self.pos < len(self.src):
            char = self.src[self.pos]
            self.pos += 1
            if "0" <= char <= "9":
                denominator = _checked(denominator * 10)
                numerator = _checked(numerator * 10 + ord(char) - 48)
            elif char in _RUST_WS:
                pass
            elif _is_unit_char(char):
                break
            else:
                raise HumantimeError(f"invalid character at {off}")
            off = self.pos
        if denominator == 1:
            raise HumantimeError(f"invalid character at {off}")  # "1." has no digits after the point
        return numerator, denominator, off

    def add(self, secs: int, nanos: int) -> None:
        nanos = _checked(self.nanos + nanos)
        if nanos > 1_000_000_000:
            secs = _checked(secs + nanos // 1_000_000_000)
            nanos %= 1_000_000_000
        secs = _checked(self.secs + secs)
        if nanos == 1_000_000_000:  # Duration::new carries the second, and panics on overflow
            if secs == _U64:
                raise _PanicError
            secs, nanos = secs + 1, 0
        self.secs, self.nanos = secs, nanos

    def unit(self, number: int, frac: tuple[int, int] | None, start: int, end: int) -> None:
        name = self.src[start:end]
        scale = _UNITS.get(name)
        if scale is None:
            raise HumantimeError(f"unknown time unit {name!r}")
        self.add(_checked(number * scale[0]), _checked(number * scale[1]))
        if frac is None:
            return
        numerator, denominator = frac
        if scale == (0, 1):
            raise HumantimeError("values below 1ns are not supported")
        frac_secs, frac_nanos = _FRACTION_SCALE[scale]
        scaled = _checked(numerator * (frac_secs or frac_nanos))
        if scaled % denominator:
            raise HumantimeError("cannot be represented without a lack of precision")
        if frac_secs:
            self.add(scaled // denominator, 0)
        else:
            self.add(0, scaled // denominator)

    def parse(self) -> tuple[int, int]:
        number = self.first_digit()
        if number is None:
            raise HumantimeError("value was empty")
        src = self.src
        while True:
            frac: tuple[int, int] | None = None
            off = self.pos
            while self.pos < len(src):
                char = src[self.pos]
                self.pos += 1
                if "0" <= char <= "9":
                    number = _checked(number * 10 + ord(char) - 48)
                elif char in _RUST_WS:
                    pass
                elif _is_unit_char(char):
                    break
                elif char == ".":
                    numerator, denominator, off = self.fraction(off)
                    frac = (numerator, denominator)
                    break
                else:
                    raise HumantimeError(f"invalid character at {off}")
                off = self.pos
            start = off
            off = self.pos
            next_number: int | None = None
            while self.pos < len(src):
                char = src[self.pos]
                self.pos += 1
                if "0" <= char <= "9":
                    next_number = ord(char) - 48
                    break
                if char in _RUST_WS:
                    break
                if not _is_unit_char(char):
                    raise HumantimeError(f"invalid character at {off}")
                off = self.pos
            self.unit(number, frac, start, off)
            if next_number is None:
                next_number = self.first_digit()
                if next_number is None:
                    return self.secs, self.nanos
            number = next_number


def parse_humantime(text: str) -> tuple[int, int]:
    """Parse ``text`` exactly like ``humantime::parse_duration`` 2.3.0: ``(seconds, nanoseconds)``.

    Units are case-sensitive; a number needs a unit (except the literal ``"0"``); fractions such as ``1.5h`` are
    accepted when they come out exact to the nanosecond (whole seconds for hours and longer units).

    Raises:
        HumantimeError: the server would answer ``400 Failed to parse token expiration time``.
    """
    try:
        return _parse_duration(text)
    except _PanicError:
        raise HumantimeError("overflow in Duration::new") from None


def _parse_duration(text: str) -> tuple[int, int]:
    """:func:`parse_humantime`, but a case that panics in Rust raises :class:`_PanicError`."""
    if text == "0":
        return 0, 0
    return _HumantimeParser(text).parse()


# -- chrono bounds (the token expiry is computed with chrono, which panics out of range) ---------------------------


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (also for years chrono allows and Python not)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


_CHRONO_MAX_TS: Final = _days_from_civil(262_143, 1, 1) * 86_400  # exclusive; NaiveDate::MAX is 262142-12-31
_CHRONO_MIN_TS: Final = _days_from_civil(-262_143, 1, 1) * 86_400
_TIMEDELTA_MAX_SECS: Final = _I64_MAX // 1000  # TimeDelta::seconds panics beyond i64::MAX milliseconds
_UTC_MIN: Final = dt.datetime.min.replace(tzinfo=dt.UTC)
_UTC_MAX: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def _expiry(now: dt.datetime, seconds: int) -> dt.datetime:
    """``now + TimeDelta::seconds(seconds as i64)`` as the server computes it; raises :class:`_PanicError`."""
    signed = seconds if seconds <= _I64_MAX else seconds - 2**64  # `as i64` wraps
    if abs(signed) > _TIMEDELTA_MAX_SECS:
        raise _PanicError
    if not _CHRONO_MIN_TS <= int(now.timestamp()) + signed < _CHRONO_MAX_TS:
        raise _PanicError
    try:
        return now + dt.timedelta(seconds=signed)
    except OverflowError:  # fine for chrono, past Python's year 9999: clamp
        return _UTC_MAX if signed > 0 else _UTC_MIN


# -- small helpers -------------------------------------------------------------------------------------------------


class _ResponseError(Exception):
    """Short-circuits a handler with a finished response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _msg(status: int, text: str) -> Response:
    return Response.json(status, {"msg": text})


def _fail(status: int, text: str) -> _ResponseError:
    return _ResponseError(_msg(status, text))


def _plain(status: int, text: str) -> _ResponseError:
    return _ResponseError(Response.text(status, text))


def _random_token() -> str:
    """32 characters of ``[A-Za-z0-9]``, uniformly (rejection sampling over ``os.urandom``)."""
    chars: list[str] = []
    while len(chars) < 32:
        chars.extend(_ALNUM[byte % 62] for byte in os.urandom(48) if byte < 248)
    return "".join(chars[:32])


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _parse_version(version: str) -> Version:
    text = str(version).strip()
    if text == "1.6" or re.fullmatch(r"1\.6\.(\d+|x)", text):
        return "1.6"
    if text in {"2", "2.0", "2.x"} or re.fullmatch(r"2\.0\.(\d+|x)", text):
        return "2.0"
    raise ValueError(f"unsupported Defguard version {version!r}: use 1.6 or 2.0")


def _normalise_url(raw: str) -> str | None:
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


def _decode_segment(segment: str, key: str) -> str:
    """Percent-decode one path parameter after routing (``%2F`` stays, ``+`` stays); invalid UTF-8 is a 400."""
    try:
        return unquote_to_bytes(segment.encode("latin-1")).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise _plain(400, f"Invalid URL: Invalid UTF-8 in `{key}`") from None


def _is_json_content_type(value: str | None) -> bool:
    """axum's check: a parseable mime type ``application/json`` or ``application/<anything>+json``."""
    if value is None:
        return False
    essence = value.split(";", 1)[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    if not kind or not subtype or " " in essence:
        return False
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _parse_u32(text: str) -> int:
    """Rust's ``u32::from_str`` (an optional ``+``, ASCII digits), with its error texts."""
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text[0] == "+" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError("invalid digit found in string")
    value = int(digits)
    if value > _U32:
        raise ValueError("number too large to fit in target type")
    return value


def _parse_i64(text: str) -> int | None:
    if not re.fullmatch(r"[+-]?[0-9]+", text, re.ASCII):
        return None
    value = int(text)
    return value if -(2**63) <= value <= _I64_MAX else None


# -- the JSON body of the token endpoints (axum's Json extractor over serde_json) ----------------------------------


class _JsonSyntaxError(Exception):
    def __init__(self, message: str, index: int, *, eof: bool = False, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.eof, self.path = message, index, eof, path


class _JsonDataError(Exception):
    def __init__(self, message: str, index: int, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.path = message, index, path


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _checked_float(text: str) -> float:
    value = float(text)
    if value in {float("inf"), float("-inf")}:
        raise OverflowError(text)
    return value


_DROP: Final[Response] = DROP  # the base class closes the connection without answering

_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_checked_float, strict=True)
_JSON_WS: Final = " \t\n\r"


def _rust_debug_str(text: str) -> str:
    out = []
    for char in text:
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif char == "\0":
            out.append("\\0")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _rust_float(value: float) -> str:
    text = format(decimal.Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def _unexpected(value: Any) -> str:
    """serde's ``Unexpected`` display for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        if -(2**63) <= value <= _U64:
            return f"integer `{value}`"
        return f"floating point `{_rust_float(float(value))}`"
    if isinstance(value, float):
        return f"floating point `{_rust_float(value)}`"
    if isinstance(value, str):
        return f"string {_rust_debug_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


class _BodyParser:
    """Deserialises ``StartEnrollmentRequest`` like serde_json + serde_path_to_error, first error wins."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: dict[str, Any] = {}

    def skip_ws(self, index: int) -> int:
        text, size = self.text, len(self.text)
        while index < size and text[index] in _JSON_WS:
            index += 1
        return index

    def value(self, index: int, path: str | None) -> tuple[Any, int]:
        """One JSON value at ``index``: (value, end index)."""
        try:
            value, end = _DECODER.raw_decode(self.text, index)
        except json.JSONDecodeError as exc:
            raise self._syntax_from(exc, path) from None
        except OverflowError:  # a float past f64
            raise _JsonSyntaxError("number out of range", index, path=path) from None
        except ValueError:  # NaN, Infinity: not JSON
            raise _JsonSyntaxError("expected value", index, path=path) from None
        except RecursionError:
            raise _JsonSyntaxError("recursion limit exceeded", index, path=path) from None
        if "\\u" in self.text[index:end].lower() and _has_surrogate(value):
            raise _JsonSyntaxError("lone leading surrogate in hex escape", end - 1, path=path)
        return value, end

    def _syntax_from(self, exc: json.JSONDecodeError, path: str | None) -> _JsonSyntaxError:
        at_end = exc.pos >= len(self.text)
        message = exc.msg
        if message.startswith("Unterminated string"):
            return _JsonSyntaxError("EOF while parsing a string", len(self.text), eof=True, path=path)
        if at_end:
            return _JsonSyntaxError("EOF while parsing a value", len(self.text), eof=True, path=path)
        translated = {
            "Expecting value": "expected value",
            "Expecting property name enclosed in double quotes": "key must be a string",
            "Expecting ':' delimiter": "expected `:`",
            "Expecting ',' delimiter": "expected `,` or `}`",
            "Invalid control character at": "control character (\\u0000-\\u001F) found while parsing a string",
        }.get(message)
        if translated is None:
            translated = "invalid escape" if "escape" in message else "trailing comma"
        return _JsonSyntaxError(translated, exc.pos, path=path)

    def field(self, name: str, value: Any, start: int, end: int, path: str) -> None:
        if name == "send_enrollment_notification":
            if not isinstance(value, bool):
                raise self._invalid(value, "a boolean", start, end, path)
        elif value is not None and not isinstance(value, str):
            raise self._invalid(value, "a string", start, end, path)
        self.fields[name] = value

    def _invalid(self, value: Any, expected: str, start: int, end: int, path: str | None) -> _JsonDataError:
        index = start if isinstance(value, (list, dict)) else end
        return _JsonDataError(f"invalid type: {_unexpected(value)}, expected {expected}", index, path)

    def parse(self) -> tuple[bool, str | None, str | None]:
        text = self.text
        index = self.skip_ws(0)
        if index >= len(text):
            raise _JsonSyntaxError("EOF while parsing a value", len(text), eof=True)
        if text[index] == "{":
            end = self.parse_object(index + 1)
        elif text[index] == "[":
            end = self.parse_array(index + 1)
        else:
            value, end = self.value(index, None)
            raise self._invalid(value, _STRUCT_NAME, index, end, None)
        end = self.skip_ws(end)
        if end < len(text):
            raise _JsonSyntaxError("trailing characters", end)
        return (
            bool(self.fields.get("send_enrollment_notification", False)),
            self.fields.get("email"),
            self.fields.get("token_expiration_time"),
        )

    def parse_object(self, index: int) -> int:
        text = self.text
        first = True
        while True:
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            char = text[index]
            if char == "}":
                if not first:
                    raise _JsonSyntaxError("trailing comma", index)
                return index + 1
            if char != '"':
                raise _JsonSyntaxError("key must be a string", index)
            key, index = self.value(index, None)
            after_key = self.skip_ws(index)
            if key in _SEQ_FIELDS and key in self.fields:
                raise _JsonDataError(f"duplicate field `{key}`", after_key)
            if after_key >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            if text[after_key] != ":":
                raise _JsonSyntaxError("expected `:`", after_key)
            start = self.skip_ws(after_key + 1)
            value, index = self.value(start, key)
            if key in _SEQ_FIELDS:
                self.field(key, value, start, index, key)
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            if text[index] == "}":
                return index + 1
            if text[index] != ",":
                raise _JsonSyntaxError("expected `,` or `}`", index)
            index += 1
            first = False
            if self.skip_ws(index) < len(text) and text[self.skip_ws(index)] == "}":
                raise _JsonSyntaxError("trailing comma", self.skip_ws(index))

    def parse_array(self, index: int) -> int:
        """The sequence form serde derives for a struct: fields by position."""
        text = self.text
        for position, name in enumerate(_SEQ_FIELDS):
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing a list", len(text), eof=True)
            if text[index] == "]":
                if position == 0:  # send_enrollment_notification has a default; email has none
                    position = 1  # noqa: PLW2901
                raise _JsonDataError(
                    f"invalid length {position}, expected {_STRUCT_NAME} with {len(_SEQ_FIELDS)} elements",
                    index + 1,
                )
            if position:
                if text[index] != ",":
                    raise _JsonSyntaxError("expected `,` or `]`", index)
                index = self.skip_ws(index + 1)
                if index < len(text) and text[index] == "]":
                    raise _JsonSyntaxError("trailing comma", index)
            value, end = self.value(index, str(position))
            self.field(name, value, index, end, str(position))
            index = end
        index = self.skip_ws(index)
        if index >= len(text):
            raise _JsonSyntaxError("EOF while parsing a list", len(text), eof=True)
        if text[index] == "]":
            return index + 1
        if text[index] == ",":
            nxt = self.skip_ws(index + 1)
            if nxt < len(text) and text[nxt] == "]":
                raise _JsonSyntaxError("trailing comma", nxt)
            raise _JsonSyntaxError("trailing characters", nxt)
        raise _JsonSyntaxError("trailing characters", index)


def _position(text: str, index: int, *, peek: bool) -> str:
    """serde_json's ``at line L column C`` (columns count bytes; a peeked error points one past the offender)."""
    line = text.count("\n", 0, index) + 1
    line_start = text.rfind("\n", 0, index) + 1
    column = len(text[line_start:index].encode("utf-8")) + (1 if peek else 0)
    return f" at line {line} column {column}"


def _parse_start_body(request: Request, version: Version) -> tuple[bool, str | None, str | None]:
    """The ``Json<StartEnrollmentRequest>`` extractor: 415, (413 on 2.x), 400, 422, as ``text/plain``."""
    if not _is_json_content_type(request.header("content-type")):
        raise _plain(415, "Expected request with `Content-Type: application/json`")
    if version == "2.0" and len(request.body) > _BODY_LIMIT_V2:
        raise _plain(413, "Failed to buffer the request body: length limit exceeded")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = request.body[: exc.start].decode("utf-8")
        raise _plain(
            400,
            "Failed to parse the request body as JSON: invalid unicode code point"
            + _position(prefix, len(prefix), peek=True),
        ) from None
    try:
        return _BodyParser(text).parse()
    except _JsonSyntaxError as exc:
        where = _position(text, exc.index, peek=not exc.eof)
        detail = f"{exc.path}: " if exc.path else ""
        raise _plain(400, f"Failed to parse the request body as JSON: {detail}{exc.message}{where}") from None
    except _JsonDataError as exc:
        where = _position(text, exc.index, peek=False)
        detail = f"{exc.path}: " if exc.path else ""
        raise _plain(
            422, f"Failed to deserialize the JSON body into the target type: {detail}{exc.message}{where}"
        ) from None


# -- state ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """One row of Defguard's ``token`` table, as the emulator keeps it.

    ``kind`` records which endpoint issued it; server-side both are ``token_type = "ENROLLMENT"``.
    """

    token: str
    username: str
    user_id: int
    kind: TokenKind
    email: str | None
    admin: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None
    token_type: str = "ENROLLMENT"  # noqa: S105 - a token type, not a secret
    device_id: int | None = None

    @property
    def used(self) -> bool:
        return self.used_at is not None

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at < (now or dt.datetime.now(dt.UTC))


@dataclasses.dataclass(slots=True)
class _User:
    id: int
    username: str
    email: str
    first_name: str
    last_name: str
    is_active: bool
    has_password: bool
    openid: bool
    ldap: bool
    openid_sub: str | None = None  # directory sync: the Entra object id; SSO sign-in: the provider's subject
    enrollment_pending: bool = False
    ldap_remote_enrollment_completed: bool = False
    groups: list[str] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)  # live enrollment tokens, oldest first
    devices: list[int] = dataclasses.field(default_factory=list)  # ids of the user's devices, oldest first


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """One row of Defguard's ``device`` table (``crates/defguard_core/src/db/models/device.rs``)."""

    id: int
    name: str
    user_id: int
    username: str
    wireguard_pubkey: str
    created: dt.datetime
    device_type: Literal["user", "network"] = "user"
    description: str | None = None
    configured: bool = True

    def to_api(self) -> dict[str, Any]:
        """The ``Device`` JSON of ``GET /api/v1/device`` (``created`` is a naive UTC timestamp)."""
        return {
            "id": self.id,
            "name": self.name,
            "wireguard_pubkey": self.wireguard_pubkey,
            "user_id": self.user_id,
            "created": self.created.replace(tzinfo=None).isoformat(),
            "device_type": self.device_type,
            "description": self.description,
            "configured": self.configured,
        }


@dataclasses.dataclass(slots=True)
class _Group:
    id: int
    name: str
    is_admin: bool
    members: dict[str, None] = dataclasses.field(default_factory=dict)  # an ordered set of usernames
    vpn_locations: list[str] = dataclasses.field(default_factory=list)


class RateLimit:
    """Defguard 2.x's optional rate limiter: tower_governor 0.8 (``DEFGUARD_RATELIMIT_PERSECOND`` and
    ``DEFGUARD_RATELIMIT_BURST``; v2.0.1 ``crates/defguard_core/src/lib.rs`` 640-676).

    ``per_second(n)`` sets the *period*: one request every ``period`` seconds, after a burst of ``burst``; one
    bucket per client IP (``SmartIpKeyExtractor``) for every ``/api/v1`` request, reads included. The 429 says
    ``Too Many Requests! Wait for {n}s`` with the wait truncated to whole seconds (often ``0``), in
    ``x-ratelimit-after`` and ``retry-after`` too, and carries no Content-Type (tower_governor ``src/errors.rs``).
    The real server's shortest period is one second; shorter ones are allowed here so tests run fast.
    """

    def __init__(self, period: float, burst: int) -> None:
        if period <= 0 or burst < 1:
            raise ValueError("a rate limit needs period > 0 and burst >= 1")
        self.period = period
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # client IP -> (tokens, stamp)
        self.refused = 0

    def take(self, client: str, now: float) -> float | None:
        """``None`` when the request may go, else the seconds until it could (callers hold the emulator lock)."""
        tokens, stamp = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) / self.period)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return None
        self._buckets[client] = (tokens, now)
        self.refused += 1
        return (1.0 - tokens) * self.period


# -- the emulator --------------------------------------------------------------------------------------------------


class DefguardEmulator(EmulatorServer):
    """Defguard core (1.6.x or 2.x) as far as ``defguard-entra`` uses it; a context manager like its base.

    Endpoint names (for counts, logs and fault filters): ``health``, ``me``, ``group-info``, ``group-list``,
    ``group``, ``user-list``, ``user``, ``start_enrollment``, ``start_desktop``, ``web-ui`` (``GET`` on an unknown
    path), ``method-not-allowed``, and ``not-emulated`` (a method the real server has on that route but this
    emulator does not implement; it answers 501).

    Deployment states (``docs/reference/defguard-deployments.md`` names the source of each): ``openid_provider``
    (an external OpenID provider is configured: ``GET /api/v1/info``), users created by directory sync
    (:meth:`prefetch_user`) or by SSO sign-in (:meth:`sso_sign_in`), devices (:meth:`add_device`), the license
    ``license_overdue_days`` past its end (2.x closes the API-token gate after 14 days), and ``page_churn``: the
    chance that, between two page reads of ``GET /api/v1/user`` (2.x), some user is updated and so moves in the
    unordered list, which can make a later page skip a user.

    Options beyond the reference: ``ldap_remote_enrollment_enabled`` (the 2.x setting behind ``enrolled`` for LDAP
    users) and ``paginated_content_type``. The 2.x source builds paginated responses (``GET /user``, ``GET /group``)
    with ``Response::new(Body::from(json))``, which carries no ``Content-Type`` at all; the reference implies JSON,
    so that is the default, and ``paginated_content_type=None`` reproduces the bare response.
    """

    server_header = "defguard-core-emulator"

    def __init__(
        self,
        version: str = "1.6",
        *,
        enrollment_url: str = "http://localhost:8080",
        license_gate: bool = True,
        default_token_lifetime: dt.timedelta = dt.timedelta(hours=24),
        component_version: str | None = None,
        faults: Faults | None = None,
        shuffle: bool = False,
        seed: int = 0,
        ldap_remote_enrollment_enabled: bool = False,
        paginated_content_type: str | None = "application/json",
        openid_provider: bool = False,
        license_overdue_days: float | None = None,
        page_churn: float = 0.0,
        rate_limit: RateLimit | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.version: Version = _parse_version(version)
        if component_version is None:
            semver = str(version).strip()
            if not re.fullmatch(r"\d+\.\d+\.\d+", semver):
                semver = "1.6.6" if self.version == "1.6" else "2.0.1"
            sha = hashlib.sha1(f"defguard-core v{semver}".encode(), usedforsecurity=False).hexdigest()
            component_version = f"{semver}+{sha}"
        if default_token_lifetime < dt.timedelta(0):
            raise ValueError("default_token_lifetime must not be negative")
        self._settings: dict[str, Any] = {
            "enrollment_url": enrollment_url,
            "license_gate": license_gate,
            "default_token_lifetime": default_token_lifetime,
            "component_version": component_version,
            "faults": self.faults,
            "shuffle": shuffle,
            "seed": seed,
            "ldap_remote_enrollment_enabled": ldap_remote_enrollment_enabled,
            "paginated_content_type": paginated_content_type,
            "openid_provider": openid_provider,
            "license_overdue_days": license_overdue_days,
            "page_churn": page_churn,
            "rate_limit": rate_limit,
        }
        self._enrollment_url_raw = ""
        self._enrollment_url: str | None = None
        self._setup()

    def _setup(self, *, again: bool = False) -> None:
        """(Re)apply the constructor's settings and seed the initial data: the admin group, user and token."""
        settings = self._settings
        self.component_version: str = settings["component_version"]
        self.license_gate: bool = settings["license_gate"]
        self.default_token_lifetime: dt.timedelta = settings["default_token_lifetime"]
        self.shuffle: bool = settings["shuffle"]
        self.ldap_remote_enrollment_enabled: bool = settings["ldap_remote_enrollment_enabled"]
        self.paginated_content_type: str | None = settings["paginated_content_type"]
        self.openid_provider: bool = settings["openid_provider"]
        self.license_overdue_days: float | None = settings["license_overdue_days"]
        self.page_churn: float = settings["page_churn"]
        self.rate_limit: RateLimit | None = settings["rate_limit"]
        if again:  # same rates and seed, the random sequence from the start
            self.faults = dataclasses.replace(settings["faults"])
        self.enrollment_url = settings["enrollment_url"]
        self.mails: list[dict[str, str]] = []
        self._rng = random.Random(settings["seed"])
        self._users: dict[str, _User] = {}
        self._order: list[str] = []  # usernames by id
        self._shuffled: list[str] | None = None  # a permutation of _order, stable until users change
        self._shuffled_groups: list[str] | None = None
        self._emails: dict[str, str] = {}  # lower-cased e-mail -> username
        self._groups: dict[str, _Group] = {}
        self._group_ids: dict[int, str] = {}
        self._api_tokens: dict[str, str] = {}  # sha256 hex -> username
        self._tokens: dict[str, EnrollmentToken] = {}  # live enrollment tokens
        self._kinds: dict[str, TokenKind] = {}  # every token ever minted
        self._devices: dict[int, Device] = {}
        self._next_device_id = 1
        self._churn_rng = random.Random(settings["seed"] + 1)
        self._next_user_id = 1
        self._next_group_id = 1
        self._issued = 0
        self.add_group("admin", is_admin=True)
        self.add_user(
            "admin",
            email="admin@example.com",
            first_name="DefGuard",
            last_name="Administrator",
            enrolled=True,
            is_admin=True,
        )
        self.admin_username = "admin"
        self.admin_token = self.add_api_token("admin")

    def reset(self) -> None:
        """Return to the state right after construction without restarting the server: the same settings,
        fresh data (only ``admin``, with a new :attr:`admin_token`), an empty request log.

        Handy for sharing one running emulator between tests."""
        with self.lock:
            self._setup(again=True)
            self.reset_log()

    # -- configuration -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash (same as :attr:`base_url`)."""
        return self.base_url

    @property
    def enrollment_url(self) -> str:
        """The configured public (proxy) URL as given; the API returns it normalised."""
        return self._enrollment_url_raw

    @enrollment_url.setter
    def enrollment_url(self, value: str) -> None:
        normalised = _normalise_url(value)
        if normalised is None and self.version == "1.6":
            raise ValueError(f"DEFGUARD_ENROLLMENT_URL {value!r} is not a URL (1.6 would not start)")
        with self.lock:
            self._enrollment_url_raw = value
            self._enrollment_url = normalised  # None on 2.x: the token endpoints answer 500

    def extra_headers(self) -> dict[str, str]:
        return {"defguard-component-version": self.component_version}

    # -- seeding and introspection ---------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        *,
        email: str | None = None,
        first_name: str = "",
        last_name: str = "",
        active: bool = True,
        enrolled: bool = False,
        is_admin: bool = False,
        groups: Iterable[str] = (),
        ldap: bool = False,
        openid: bool = False,
        openid_sub: str | None = None,
        devices: int = 0,
    ) -> None:
        """Create a user. ``enrolled=True`` gives it a password (enrolled on both lines); ``openid_sub`` (or
        ``openid=True``) an OpenID subject, as directory sync and SSO sign-in do (also enrolled, by Defguard's rule);
        ``devices`` adds that many user devices (what "enrolled" means in practice). Groups are created on demand;
        ``is_admin=True`` adds it to the ``admin`` group. Raises ``ValueError`` for an invalid or taken username or a
        taken e-mail (case-insensitive)."""
        if not _USERNAME_RE.fullmatch(username):
            raise ValueError(f"invalid username {username!r}: 1-63 of [A-Za-z0-9._-], alphanumeric first")
        if email is None:
            email = f"{username}@example.com"
        with self.lock:
            if username in self._users:
                raise ValueError(f"user {username!r} already exists")
            if email and email.lower() in self._emails:
                raise ValueError(f"e-mail {email!r} is already used by {self._emails[email.lower()]!r}")
            user = _User(
                self._next_user_id,
                username,
                email,
                first_name,
                last_name,
                active,
                has_password=enrolled,
                openid=openid or openid_sub is not None,
                ldap=ldap,
                openid_sub=openid_sub,
            )
            self._next_user_id += 1
            self._users[username] = user
            self._order.append(username)
            self._shuffled = None
            if email:
                self._emails[email.lower()] = username
            for name in groups:
                self._join(user, self._group(name))
            if is_admin:
                self._join(user, self._admin_group())
            for _ in range(devices):
                self._add_device(user, None, "user")

    def prefetch_user(
        self, entra_id: str, email: str, *, first_name: str = "", last_name: str = "", groups: Iterable[str] = ()
    ) -> str:
        """Create a user the way Entra directory sync with *Prefetch users* does; returns the username.

        Username = the e-mail's local part, no password, OpenID subject = the Entra object id, not pending: such a
        user is listed ``enrolled: true`` on both lines and has no device (v1.6.6 and v2.0.1
        ``crates/defguard_core/src/enterprise/directory_sync/mod.rs``)."""
        username = email.split("@", 1)[0]
        self.add_user(
            username, email=email, first_name=first_name, last_name=last_name, groups=groups, openid_sub=entra_id
        )
        return username

    def sso_sign_in(self, username: str, subject: str | None = None) -> None:
        """What a first SSO sign-in does to an existing user matched by e-mail: it gains an OpenID subject
        (``crates/defguard_core/src/enterprise/handlers/openid_login.rs``, ``user_from_claims``), and so counts as
        enrolled although it has no device."""
        with self.lock:
            user = self._user(username)
            user.openid = True
            user.openid_sub = subject or f"sub-{user.id}"
            self._touch(user)

    def add_device(
        self, username: str, name: str | None = None, *, device_type: Literal["user", "network"] = "user"
    ) -> int:
        """Add a device owned by ``username`` (``network`` devices are listed by ``GET /api/v1/device`` but are
        not a user's); returns its id."""
        with self.lock:
            return self._add_device(self._user(username), name, device_type).id

    def devices_of(self, username: str) -> list[Device]:
        """The user's devices (user and network ones), oldest first."""
        with self.lock:
            return [self._devices[i] for i in self._user(username).devices]

    def disable_user(self, username: str, *, by: Literal["admin", "directory_sync"] = "admin") -> None:
        """Disable a user. An admin doing it (UI or ``PUT /api/v1/user/{username}`` with ``is_active: false``)
        also deletes the user's API tokens for good (v1.6.6 ``handlers/user.rs`` 749-755, v2.0.1 781-787);
        directory sync only flips the flag (their API tokens stop working, being an inactive owner's)."""
        with self.lock:
            user = self._user(username)
            user.is_active = False
            if by == "admin":
                self._api_tokens = {h: u for h, u in self._api_tokens.items() if u != username}
            self._touch(user)

    def remove_user(self, username: str) -> None:
        """Delete a user with its memberships, enrollment tokens and API tokens (they stop working)."""
        with self.lock:
            user = self._user(username)
            for name in user.groups:
                self._groups[name].members.pop(username, None)
            for token in user.tokens:
                self._tokens.pop(token, None)
            self._api_tokens = {h: u for h, u in self._api_tokens.items() if u != username}
            if user.email:
                self._emails.pop(user.email.lower(), None)
            del self._users[username]
            self._order.remove(username)
            self._shuffled = None

    def add_group(
        self, name: str, members: Iterable[str] = (), *, is_admin: bool = False, vpn_locations: Iterable[str] = ()
    ) -> int:
        """Create a group (or reuse the one with that exact name) and add ``members``; returns its id.

        Ids are sequential from 1; group 1 is ``admin`` (an admin group holding ``admin``)."""
        if not name:
            raise ValueError("a group name must not be empty")
        with self.lock:
            group = self._group(name, is_admin=is_admin)
            group.vpn_locations.extend(vpn_locations)
            for username in members:
                self._join(self._user(username), group)
            return group.id

    def add_api_token(self, username: str) -> str:
        """Mint an API token (``dg-`` + 32 alphanumerics) for ``username``; only its SHA-256 is kept.

        The real server mints them for admins only; here any user can own one, so the 403 for a non-admin owner
        can be tested."""
        token = "dg-" + _random_token()
        with self.lock:
            self._user(username)
            self._api_tokens[_sha256(token)] = username
        return token

    def revoke_api_token(self, token: str) -> None:
        with self.lock:
            self._api_tokens.pop(_sha256(token), None)

    def set_user(
        self,
        username: str,
        *,
        active: bool | None = None,
        enrolled: bool | None = None,
        is_admin: bool | None = None,
        email: str | EllipsisType | None = ...,
        enrollment_pending: bool | None = None,
        ldap: bool | None = None,
        openid: bool | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> None:
        """Change a user in place. ``enrolled=True`` sets a password and clears ``enrollment_pending``;
        ``enrolled=False`` removes the password and the OpenID subject (LDAP users may still count as enrolled);
        ``is_admin`` joins or leaves the admin groups; ``email=None`` stores an empty e-mail."""
        with self.lock:
            user = self._user(username)
            if active is not None:
                user.is_active = active
            if enrolled is not None:
                user.has_password = enrolled
                if enrolled:
                    user.enrollment_pending = False
                else:
                    user.openid = False
            if enrollment_pending is not None:
                user.enrollment_pending = enrollment_pending
            if ldap is not None:
                user.ldap = ldap
            if openid is not None:
                user.openid = openid
            if first_name is not None:
                user.first_name = first_name
            if last_name is not None:
                user.last_name = last_name
            if not isinstance(email, EllipsisType):
                new = email or ""
                owner = self._emails.get(new.lower())
                if new and owner not in {None, username}:
                    raise ValueError(f"e-mail {new!r} is already used by {owner!r}")
                if user.email:
                    self._emails.pop(user.email.lower(), None)
                user.email = new
                if new:
                    self._emails[new.lower()] = username
            if is_admin is True:
                self._join(user, self._admin_group())
            elif is_admin is False:
                for name in list(user.groups):
                    group = self._groups[name]
                    if group.is_admin:
                        group.members.pop(username, None)
                        user.groups.remove(name)

    def user_info(self, username: str) -> dict[str, Any]:
        """The user's ``UserInfo`` as this version renders it."""
        with self.lock:
            return self._user_info(self._user(username))

    @property
    def users(self) -> list[dict[str, Any]]:
        """Every user's ``UserInfo``, by id."""
        with self.lock:
            return [self._user_info(user) for user in sorted(self._users.values(), key=lambda u: u.id)]

    @property
    def groups(self) -> list[dict[str, Any]]:
        """Every group's ``GroupInfo`` (members sorted), by id."""
        with self.lock:
            return [self._group_info(group, sort=True) for group in self._groups.values()]

    @property
    def issued_count(self) -> int:
        """Enrollment tokens minted so far (both endpoints)."""
        with self.lock:
            return self._issued

    def current_token(self, username: str) -> str | None:
        """The user's one live, unused, unexpired enrollment token, if any."""
        now = dt.datetime.now(dt.UTC)
        with self.lock:
            for token in reversed(self._user(username).tokens):
                record = self._tokens[token]
                if record.used_at is None and not record.expired(now):
                    return token
        return None

    def token(self, token: str) -> EnrollmentToken | None:
        """The live record of an enrollment token (``None`` once deleted, or if never minted)."""
        with self.lock:
            return self._tokens.get(token)

    def token_expiry(self, token: str) -> dt.datetime | None:
        """When a live token expires (aware UTC); ``None`` if it was deleted or never minted."""
        record = self.token(token)
        return None if record is None else record.expires_at

    def token_kind(self, token: str) -> TokenKind:
        """Which endpoint minted the token (also after it was deleted); ``KeyError`` if never minted."""
        with self.lock:
            return self._kinds[token]

    def tokens_of(self, username: str) -> list[EnrollmentToken]:
        """The user's live enrollment tokens (used or not; deleted ones are gone), oldest first."""
        with self.lock:
            return [self._tokens[token] for token in self._user(username).tokens]

    def redeem(self, token: str, *, device: bool = True) -> None:
        """What the proxy does on ``POST /api/v1/enrollment/start`` and finishing enrollment: mark the token used;
        for a start_enrollment token the user then has a password and is no longer pending. With ``device`` (the
        desktop client's flow) the enrollment ends by adding the client's device.

        Raises ``ValueError`` for an unknown (or deleted), expired or already used token."""
        now = dt.datetime.now(dt.UTC)
        with self.lock:
            record = self._tokens.get(token)
            if record is None:
                raise ValueError("invalid token")
            if record.expired(now):
                raise ValueError("token expired")
            if record.used_at is not None:
                raise ValueError("token already used")
            self._tokens[token] = dataclasses.replace(record, used_at=now)
            user = self._users[record.username]
            if record.kind == "enrollment":
                user.has_password = True
                user.enrollment_pending = False
                user.ldap_remote_enrollment_completed = True
            if device:
                self._add_device(user, None, "user")
            self._touch(user)

    # -- state internals (callers hold the lock) -------------------------------------------------------------

    def _user(self, username: str) -> _User:
        try:
            return self._users[username]
        except KeyError:
            raise KeyError(f"no user {username!r}") from None

    def _group(self, name: str, *, is_admin: bool = False) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = _Group(self._next_group_id, name, is_admin)
            self._next_group_id += 1
            self._groups[name] = group
            self._group_ids[group.id] = name
            self._shuffled_groups = None
        return group

    def _admin_group(self) -> _Group:
        for group in self._groups.values():
            if group.is_admin:
                return group
        return self._group("admin", is_admin=True)

    def _join(self, user: _User, group: _Group) -> None:
        if user.username not in group.members:
            group.members[user.username] = None
            user.groups.append(group.name)

    def _add_device(self, user: _User, name: str | None, device_type: Literal["user", "network"]) -> Device:
        device_id = self._next_device_id
        self._next_device_id += 1
        key = "".join(self._rng.choice(_ALNUM) for _ in range(43)) + "="
        record = Device(
            device_id,
            name or f"{user.username}-device-{device_id}",
            user.id,
            user.username,
            key,
            dt.datetime.now(dt.UTC),
            device_type,
        )
        self._devices[device_id] = record
        user.devices.append(device_id)
        return record

    def _touch(self, user: _User) -> None:
        """An UPDATE of the user's row: PostgreSQL writes a new row version, so an unordered scan (2.x pages use
        LIMIT/OFFSET without ORDER BY, v2.0.1 ``handlers/user.rs`` ``list_users``) now meets it last."""
        if user.username in self._order:
            self._order.remove(user.username)
            self._order.append(user.username)
            self._shuffled = None

    def _user_devices(self, user: _User) -> list[Device]:
        return [d for d in (self._devices[i] for i in user.devices) if d.device_type == "user"]

    def _is_admin(self, user: _User) -> bool:
        return any(self._groups[name].is_admin for name in user.groups)

    def _is_enrolled(self, user: _User) -> bool:
        if user.enrollment_pending:
            return False
        if self.version == "1.6":
            return user.has_password or user.openid or user.ldap
        if user.ldap:
            return user.ldap_remote_enrollment_completed if self.ldap_remote_enrollment_enabled else True
        return user.has_password or user.openid

    def _user_info(self, user: _User) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": user.id,
            "username": user.username,
            "last_name": user.last_name,
            "first_name": user.first_name,
            "email": user.email,
            "phone": None,
            "mfa_enabled": False,
            "totp_enabled": False,
            "email_mfa_enabled": False,
            "groups": list(user.groups),
            "mfa_method": "None",
            "authorized_apps": [],
            "is_active": user.is_active,
            "enrolled": self._is_enrolled(user),
            "is_admin": self._is_admin(user),
            "ldap_pass_requires_change": False,
        }
        if self.version == "2.0":
            info["name"] = f"{user.first_name} {user.last_name}"
            info["devices"] = [{**d.to_api(), "networks": []} for d in self._user_devices(user)]
        return info

    def _group_info(self, group: _Group, *, sort: bool) -> dict[str, Any]:
        members = list(group.members)
        if sort:
            members.sort()
        elif self.shuffle:
            self._rng.shuffle(members)
        return {
            "id": group.id,
            "name": group.name,
            "members": members,
            "vpn_locations": list(group.vpn_locations),
            "is_admin": group.is_admin,
        }

    def _listed(self, items: list[str]) -> list[str]:
        if self.shuffle:
            items = list(items)
            self._rng.shuffle(items)
        return items

    def _user_order(self) -> list[str]:
        """Usernames in list order: by id, or a seeded permutation that holds until users are added or removed
        (like an unordered query over unchanged data)."""
        if not self.shuffle:
            return self._order
        if self._shuffled is None:
            self._shuffled = list(self._order)
            self._rng.shuffle(self._shuffled)
        return self._shuffled

    def _mint(self, user: _User, kind: TokenKind, seconds: int, email: str | None, admin: str) -> EnrollmentToken:
        """Steps 10 and 11: delete every unused token of the user, then create the new one."""
        now = dt.datetime.now(dt.UTC)
        expires_at = _expiry(now, seconds)  # may raise _PanicError before anything changes
        kept = []
        for token in user.tokens:
            if self._tokens[token].used_at is None:
                del self._tokens[token]
            else:
                kept.append(token)
        value = _random_token()
        record = EnrollmentToken(value, user.username, user.id, kind, email, admin, now, expires_at)
        self._tokens[value] = record
        self._kinds[value] = kind
        kept.append(value)
        user.tokens = kept
        self._issued += 1
        return record

    # -- routing ---------------------------------------------------------------------------------------------

    def resolve(self, request: Request) -> tuple[str, Handler]:
        endpoint, handler = self._resolve(request)
        limit = self.rate_limit
        if limit is None or not request.raw_path.startswith("/api/v1/") or self.version != "2.0":
            return endpoint, handler
        client = (request.header("x-forwarded-for") or "").split(",")[0].strip() or "127.0.0.1"
        with self.lock:
            wait = limit.take(client, time.monotonic())
        if wait is None:
            return endpoint, handler
        seconds = str(int(wait))  # truncated, as tower_governor's u64 wait_time
        refusal = Response(
            429,
            f"Too Many Requests! Wait for {seconds}s".encode(),
            None,
            {"x-ratelimit-after": seconds, "retry-after": seconds},
        )
        return endpoint, lambda _r: refusal

    def _resolve(self, request: Request) -> tuple[str, Handler]:
        segments = request.raw_path.split("/")
        if len(segments) >= 4 and segments[0] == "" and segments[1] == "api" and segments[2] == "v1":
            rest = segments[3:]
            head = rest[0]
            if len(rest) == 1:
                if head == "health":
                    return self._route(request, "health", {"GET": self._health}, ("GET",))
                if head == "me":
                    return self._route(request, "me", {"GET": self._me}, ("GET",))
                if head == "user":
                    return self._route(request, "user-list", {"GET": self._list_users}, ("GET", "POST"))
                if head == "group":
                    return self._route(request, "group-list", {"GET": self._list_groups}, ("GET", "POST"))
                if head == "group-info":
                    return self._route(request, "group-info", {"GET": self._group_info_list}, ("GET",))
                if head == "info":
                    return self._route(request, "info", {"GET": self._info}, ("GET",))
                if head == "device":
                    return self._route(request, "device-list", {"GET": self._list_devices}, ("GET",))
                if head == "settings":
                    handlers: dict[str, Handler] = {"GET": self._settings_dump} if self.version == "2.0" else {}
                    return self._route(request, "settings", handlers, ("GET", "PUT", "PATCH"))
            elif len(rest) == 2 and head == "support" and rest[1] == "configuration":
                dump: dict[str, Handler] = {"GET": self._support_configuration} if self.version == "1.6" else {}
                return self._route(request, "support-configuration", dump, ("GET",))
            elif len(rest) == 2 and rest[1]:
                param = rest[1]
                if head == "user":
                    if param == "available":  # static segments win over {username}
                        return self._route(request, "user", {}, ("POST",))
                    if param == "change_password":
                        return self._route(request, "user", {}, ("PUT",))
                    return self._route(
                        request, "user", {"GET": lambda r: self._get_user(r, param)}, ("GET", "PUT", "DELETE")
                    )
                if head == "group":
                    return self._route(
                        request, "group", {"GET": lambda r: self._get_group(r, param)}, ("GET", "PUT", "DELETE")
                    )
            elif len(rest) == 3 and head == "user" and rest[1]:
                param = rest[1]
                if rest[2] == "start_enrollment":
                    return self._route(
                        request, "start_enrollment", {"POST": lambda r: self._start(r, param, "enrollment")}, ("POST",)
                    )
                if rest[2] == "start_desktop":
                    return self._route(
                        request, "start_desktop", {"POST": lambda r: self._start(r, param, "desktop")}, ("POST",)
                    )
        # the web UI's catch-all `GET /{*path}`
        return self._route(request, "web-ui", {"GET": self._web_ui}, ("GET",))

    def _route(
        self, request: Request, endpoint: str, handlers: dict[str, Handler], methods: tuple[str, ...]
    ) -> tuple[str, Handler]:
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(method)
        if handler is not None:
            return endpoint, self._guarded(handler)
        if method in methods:
            return "not-emulated", lambda _r: Response.text(501, f"{request.method} is not emulated here")
        allowed = []
        for name in methods:
            allowed.append(name)
            if name == "GET":
                allowed.append("HEAD")
        allow = ",".join(allowed)
        return "method-not-allowed", lambda _r: Response.empty(405, {"allow": allow})

    @staticmethod
    def _guarded(handler: Handler) -> Handler:
        def run(request: Request) -> Response:
            try:
                return handler(request)
            except _ResponseError as exc:
                return exc.response

        return run

    # -- faults ------------------------------------------------------------------------------------------------

    def fault_response(self, status: int, request: Request, endpoint: str) -> Response:
        del request, endpoint
        if status == 429:
            wait = min(int(self.faults.uniform(0.0, 3.0)), 2)
            headers = {"retry-after": str(wait), "x-ratelimit-after": str(wait)}
            return Response.text(429, f"Too Many Requests! Wait for {wait}s", headers)
        if status == 500:
            return _msg(500, "Internal Server Error")
        if status in {502, 503, 504}:
            phrase = f"{status} {HTTPStatus(status).phrase}"
            return Response.html(
                status,
                f"<html><head><title>{phrase}</title></head><body><center><h1>{phrase}</h1></center></body></html>",
            )
        if status == 408:
            return Response.empty(408)  # tower-http's TimeoutLayer: no body
        if status == 413:
            return Response.text(413, "Failed to buffer the request body: length limit exceeded")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return _msg(status, phrase)

    # -- handlers ----------------------------------------------------------------------------------------------

    def _web_ui(self, request: Request) -> Response:
        del request
        return Response.html(200, _WEB_UI)

    def _health(self, request: Request) -> Response:
        del request
        return Response.text(200, "alive")

    def _authenticate(self, request: Request) -> _User:
        """Section 2: license gate, header decoding, token lookup, admin check."""
        if not self.license_gate or self._license_lapsed():
            raise _fail(401, "Session is required")
        header = request.header("authorization")
        if header is None:
            raise _fail(401, "Session is required")  # no cookie session either
        header = header.rstrip(" \t")  # hyper trims trailing whitespace off header values
        if not (
            len(header) > 6
            and header[6] == " "
            and header[:6].lower() == "bearer"
            and all(" " <= char <= "~" or char == "\t" for char in header)
        ):
            raise _fail(401, "Invalid auth header")
        digest = _sha256(header[7:].lstrip())
        with self.lock:
            owner = self._users.get(self._api_tokens.get(digest, ""))
            if owner is None or not owner.is_active:
                raise _fail(401, "Invalid API token")
            if not self._is_admin(owner):
                raise _fail(403, "Token authentication is not allowed for normal users")
            return owner

    def _license_lapsed(self) -> bool:
        """2.x honours API tokens only while the (subscription) license is at most 14 days past its end (v2.0.1
        ``crates/defguard_core/src/enterprise/license.rs`` 403-411); 1.6 has a free tier, so it is not modelled."""
        overdue = self.license_overdue_days
        return self.version == "2.0" and overdue is not None and overdue > _LICENSE_GRACE_DAYS

    def _me(self, request: Request) -> Response:
        owner = self._authenticate(request)
        with self.lock:
            return Response.json(200, self._user_info(owner))

    def _pagination(self, request: Request) -> tuple[int, int]:
        page: int | None = None
        per_page: int | None = None
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            if key not in {"page", "per_page"}:
                continue
            if (page if key == "page" else per_page) is not None:
                raise _plain(400, f"Failed to deserialize query string: duplicate field `{key}`")
            try:
                number = _parse_u32(value)
            except ValueError as exc:
                raise _plain(400, f"Failed to deserialize query string: {exc}") from None
            if key == "page":
                page = number
            else:
                per_page = number
        return max(page or 1, 1), min(max(50 if per_page is None else per_page, 1), 100)

    def _paginated(self, items: list[Any], total: int, page: int, per_page: int) -> Response:
        total_pages = -(-total // per_page)
        payload = {
            "data": items,
            "pagination": {
                "current_page": page,
                "page_size": per_page,
                "total_items": total,
                "total_pages": total_pages,
                "next_page": page + 1 if page < total_pages else None,
            },
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return Response(200, body, self.paginated_content_type)

    def _list_users(self, request: Request) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            with self.lock:
                names = self._listed(self._order)
                return Response.json(200, [self._user_info(self._users[name]) for name in names])
        page, per_page = self._pagination(request)
        offset = ((page - 1) * per_page) & _U32  # u32 arithmetic in the server
        with self.lock:
            if self.page_churn and self._order and self._churn_rng.random() < self.page_churn:
                self._touch(self._users[self._churn_rng.choice(self._order)])
            order = self._user_order()
            rows = [self._user_info(self._users[name]) for name in order[offset : offset + per_page]]
            total = len(order)
        return self._paginated(rows, total, page, per_page)

    def _get_user(self, request: Request, raw: str) -> Response:
        self._authenticate(request)
        username = _decode_segment(raw, "username")
        with self.lock:
            user = self._users.get(username)
            if user is None:
                raise _fail(404, f"user {username} not found")
            info = self._user_info(user)
            devices = [{**d.to_api(), "networks": []} for d in self._user_devices(user)]
        if self.version == "1.6":
            details = {"user": info, "devices": devices, "biometric_enabled_devices": [], "security_keys": []}
        else:
            details = {"user": info, "biometric_enabled_devices": [], "security_keys": []}
        return Response.json(200, details)

    def _list_groups(self, request: Request) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            with self.lock:
                return Response.json(200, {"groups": self._listed(list(self._groups))})
        page, per_page = self._pagination(request)
        offset = ((page - 1) * per_page) & _U32
        with self.lock:
            if not self.shuffle:
                names = list(self._groups)
            else:
                if self._shuffled_groups is None:
                    self._shuffled_groups = self._listed(list(self._groups))
                names = self._shuffled_groups
        return self._paginated(names[offset : offset + per_page], len(names), page, per_page)

    def _get_group(self, request: Request, raw: str) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            name = _decode_segment(raw, "name")
            with self.lock:
                group = self._groups.get(name)
                if group is None:
                    raise _fail(404, f"Group {name} not found")
                return Response.json(200, self._group_info(group, sort=False))
        text = _decode_segment(raw, "id")
        group_id = _parse_i64(text)
        if group_id is None:
            raise _plain(400, f"Invalid URL: Cannot parse `{text}` to a `i64`")
        with self.lock:
            found = self._group_ids.get(group_id)
            if found is None:
                raise _fail(404, f"Group {group_id} not found")
            return Response.json(200, self._group_info(self._groups[found], sort=False))

    def _group_info_list(self, request: Request) -> Response:
        self._authenticate(request)
        with self.lock:
            groups = [self._groups[name] for name in self._listed(list(self._groups))]
            return Response.json(200, [self._group_info(group, sort=True) for group in groups])

    def _info(self, request: Request) -> Response:
        """``GET /api/v1/info`` (``crates/defguard_core/src/handlers/app_info.rs``: v1.6.6 with
        ``license_info``, v2.0.1 without); any session, an admin's API token included."""
        self._authenticate(request)
        info: dict[str, Any] = {
            "version": self.component_version.partition("+")[0],
            "network_present": True,
            "smtp_enabled": False,
            "ldap_info": {"enabled": False, "ad": False},
            "external_openid_enabled": self.openid_provider,
        }
        if self.version == "1.6":
            info["license_info"] = {
                "enterprise": True,
                "limits_exceeded": {
                    "user": False,
                    "device": False,
                    "wireguard_network": False,
                    "network_device": False,
                },
                "any_limit_exceeded": False,
                "is_enterprise_free": False,
                "tier": "Business",
            }
        return Response.json(200, info)

    def _list_devices(self, request: Request) -> Response:
        """``GET /api/v1/device`` (admin): every device, network ones too, unordered, not paginated; the owner is
        only ``user_id`` (v1.6.6 ``handlers/wireguard.rs`` 1266, v2.0.1 1261)."""
        self._authenticate(request)
        with self.lock:
            devices = list(self._devices.values())
            if self.shuffle:
                self._rng.shuffle(devices)
            return Response.json(200, [d.to_api() for d in devices])

    def _normalised_enrollment_url(self) -> str:
        return self._enrollment_url or self._enrollment_url_raw

    def _support_configuration(self, request: Request) -> Response:
        """1.6 ``GET /api/v1/support/configuration`` (admin; ``crates/defguard_core/src/support.rs``
        ``dump_config``): the server config carries ``enrollment_url`` as the ``url`` crate serialises it."""
        self._authenticate(request)
        with self.lock:
            users = [self._user_info(user) for user in self._users.values()]
        # DEFGUARD_ENROLLMENT_TOKEN_TIMEOUT is #[serde(skip_serializing)] (defguard_common/src/config.rs): absent
        config = {"enrollment_url": self._normalised_enrollment_url(), "grpc_port": 50055}
        return Response.json(
            200,
            {
                "settings": {"instance_name": "Defguard"},
                "networks": [],
                "version": self.component_version,
                "devices": {},
                "users": users,
                "config": config,
            },
        )

    def _settings_dump(self, request: Request) -> Response:
        """2.x ``GET /api/v1/settings`` (admin): ``public_proxy_url`` as stored (no trailing slash added) and
        ``enrollment_token_timeout_hours`` (v2.0.1 ``crates/defguard_common/src/db/models/settings.rs``)."""
        self._authenticate(request)
        hours = int(self.default_token_lifetime.total_seconds() // 3600)
        return Response.json(
            200,
            {
                "instance_name": "Defguard",
                "defguard_url": self.base_url,
                "public_proxy_url": self._enrollment_url_raw,
                "enrollment_token_timeout_hours": hours,
                "password_reset_token_timeout_hours": 24,
                "enrollment_session_timeout_minutes": 10,
                "openid_create_account": True,
                "ldap_enabled": False,
            },
        )

    def _check_client_ip(self, request: Request) -> None:
        """2.x reads the client address from X-Forwarded-For / Forwarded; a malformed one is a 500."""
        forwarded_for = request.header("x-forwarded-for")
        if forwarded_for is not None:
            for item in forwarded_for.split(","):
                try:
                    ipaddress.ip_address(item.strip())
                except ValueError:
                    raise _fail(500, "Internal server error") from None
        forwarded = request.header("forwarded")
        if forwarded is not None:
            addresses = []
            for element in re.split(r"[,;]", forwarded):
                key, _, value = element.strip().partition("=")
                if key.strip().lower() == "for":
                    value = value.strip().strip('"')
                    if value.startswith("["):
                        value = value[1 : value.find("]")]
                    elif value.count(":") == 1:
                        value = value.split(":", 1)[0]
                    addresses.append(value)
            try:
                for address in addresses or [""]:
                    ipaddress.ip_address(address)
            except ValueError:
                raise _fail(500, "Internal server error") from None

    def _start(self, request: Request, raw: str, kind: TokenKind) -> Response:
        """start_enrollment (section 6) and start_desktop (section 7), in the server's check order."""
        admin = self._authenticate(request)
        if request.header("user-agent") is None:
            raise _fail(400, "Missing UserAgent header")
        if self.version == "2.0":
            self._check_client_ip(request)
        username = _decode_segment(raw, "username")
        send, email, expiration = _parse_start_body(request, self.version)
        if kind == "enrollment" and send and email is None:
            raise _fail(400, "Email notification is enabled, but email was not provided")
        with self.lock:
            if username not in self._users:
                raise _fail(404, f"user {username} not found")
        seconds = int(self.default_token_lifetime.total_seconds())
        if kind == "enrollment" and expiration is not None:
            try:
                seconds = _parse_duration(expiration)[0]
            except HumantimeError:
                raise _fail(400, "Failed to parse token expiration time") from None
            except _PanicError:
                return _DROP
        url = self._enrollment_url
        if url is None:  # 2.x: public_proxy_url does not parse
            raise _fail(500, "Internal server error")
        with self.lock:
            user = self._users.get(username)
            if user is None:
                raise _fail(404, f"user {username} not found")
            if kind == "enrollment":
                activated = user.has_password if self.version == "1.6" else self._is_enrolled(user)
                if activated:
                    raise _fail(400, "User account is already activated")
            if not user.is_active:
                raise _fail(401, "Enrollment user is disabled")
            if kind == "desktop" and email is None:
                email = user.email
            try:
                record = self._mint(user, kind, seconds, email, admin.username)
            except _PanicError:
                return _DROP  # the handler panics: no answer, the connection closes
            if kind == "enrollment":
                user.enrollment_pending = True
                self._touch(user)
            if send and email:
                self.mails.append(
                    {"to": email, "subject": _MAIL_SUBJECTS[kind], "username": user.username, "token": record.token}
                )
        return Response.json(201, {"enrollment_token": record.token, "enrollment_url": url})
