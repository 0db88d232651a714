"""Durations as Defguard parses them: ``humantime::parse_duration`` 2.3.0 (the ``token_expiration_time`` of
``start_enrollment``), and the bounds chrono puts on the expiry computed from it (where the server panics).

The parser is a port of humantime 2.3.0's ``src/duration.rs``; the call is in v1.6.6 and v2.0.1
``crates/defguard_core/src/handlers/user.rs`` (``start_enrollment``).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from ._wire import I64_MAX, U64

__all__ = ["HumantimeError", "PanicError", "expiry", "parse_duration", "parse_humantime"]


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


class PanicError(Exception):
    """The server would panic (the worker dies and the connection drops without an answer)."""


def _checked(value: int) -> int:
    if value > U64:
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
            if secs == U64:
                raise PanicError
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
        return parse_duration(text)
    except PanicError:
        raise HumantimeError("overflow in Duration::new") from None


def parse_duration(text: str) -> tuple[int, int]:
    """:func:`parse_humantime`, but a case that panics in Rust raises :class:`PanicError`."""
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
_TIMEDELTA_MAX_SECS: Final = I64_MAX // 1000  # TimeDelta::seconds panics beyond i64::MAX milliseconds
_UTC_MIN: Final = dt.datetime.min.replace(tzinfo=dt.UTC)
_UTC_MAX: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def expiry(now: dt.datetime, seconds: int) -> dt.datetime:
    """``now + TimeDelta::seconds(seconds as i64)`` as the server computes it; raises :class:`PanicError`."""
    signed = seconds if seconds <= I64_MAX else seconds - 2**64  # `as i64` wraps
    if abs(signed) > _TIMEDELTA_MAX_SECS:
        raise PanicError
    if not _CHRONO_MIN_TS <= int(now.timestamp()) + signed < _CHRONO_MAX_TS:
        raise PanicError
    try:
        return now + dt.timedelta(seconds=signed)
    except OverflowError:  # fine for chrono, past Python's year 9999: clamp
        return _UTC_MAX if signed > 0 else _UTC_MIN
