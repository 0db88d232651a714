"""Token lifetimes: parse them the way Defguard does (humantime 2.3.0), validate, and send a normalised form.

Defguard parses ``token_expiration_time`` with the Rust ``humantime`` crate: case-sensitive units, an optional
fraction, several ``<number><unit>`` groups with optional spaces between them. We accept exactly that grammar so
an input we pass is one the server accepts, then send whole seconds (``"129600s"``), which every server version
parses the same way. The server has no upper bound (and drops the connection for absurd values), so we clamp.

Three inputs get a message of their own instead of a generic refusal: digits other than ASCII ``0-9``
(``١h``: humantime refuses them, Python's ``\\d`` would not), a negative value (``-1h``), and the bare unit ``M``,
which humantime reads as a *month*: ``1M`` is refused with "did you mean 1m?" (months are spelled ``1month``),
because a PowerShell user who means minutes would otherwise leave a month-long secret in the directory.
A lifetime below :data:`MIN_USEFUL_LIFETIME` is accepted (drills and tests use short ones) but
:func:`short_lifetime_warning` says why it is a bad idea.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from .exceptions import ConfigurationError

__all__ = [
    "MAX_TOKEN_LIFETIME",
    "MIN_USEFUL_LIFETIME",
    "format_for_defguard",
    "parse_duration",
    "parse_lifetime",
    "short_lifetime_warning",
]

#: The longest lifetime we let through: a year. An enrollment token is a secret that sits in a directory
#: attribute; anything longer is almost certainly a typo (``2y`` for ``2w``).
MAX_TOKEN_LIFETIME = dt.timedelta(days=366)

#: Below this a lifetime is allowed but warned about: the token would die before the user gets to the installer.
MIN_USEFUL_LIFETIME = dt.timedelta(minutes=5)

_SECONDS: dict[str, Decimal] = {}
for _names, _secs in (
    (("ns", "nsec", "nanos"), Decimal("1e-9")),
    (("us", "µs", "usec"), Decimal("1e-6")),
    (("ms", "msec", "millis"), Decimal("1e-3")),
    (("s", "sec", "secs", "second", "seconds"), Decimal(1)),
    (("m", "min", "mins", "minute", "minutes"), Decimal(60)),
    (("h", "hr", "hrs", "hour", "hours"), Decimal(3600)),
    (("d", "day", "days"), Decimal(86400)),
    (("w", "wk", "wks", "week", "weeks"), Decimal(604800)),
    (("M", "month", "months"), Decimal(2630016)),  # 30.44 days
    (("y", "yr", "yrs", "year", "years"), Decimal(31557600)),  # 365.25 days
):
    for _name in _names:
        _SECONDS[_name] = _secs

_GROUP = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµ]+)")
_NEGATIVE = re.compile(r"-\s*[0-9.]")
_EXAMPLES = "e.g. 24h, 1d, 2w, 90m, 1.5h or '1d 12h'"


def parse_lifetime(text: str) -> dt.timedelta:
    """Parse a human lifetime with Defguard's rules and check it is within (1 s, :data:`MAX_TOKEN_LIFETIME`].

    Raises :class:`ConfigurationError` with a one-line message naming the fix.
    """
    value = text.strip()
    if not value:
        raise ConfigurationError(f"empty token lifetime: give a duration with a unit, {_EXAMPLES}")
    _refuse_misreadings(text, value)
    pos = 0
    total = Decimal(0)
    while pos < len(value):
        match = _GROUP.match(value, pos)
        if match is None:
            raise ConfigurationError(
                f"token lifetime {text!r} is not a duration Defguard accepts: {_EXAMPLES} "
                "(units are case-sensitive; every number needs a unit)"
            )
        number, unit = match.groups()
        if unit not in _SECONDS:
            hint = f" (did you mean {unit.lower()!r}?)" if unit.lower() in _SECONDS else ""
            raise ConfigurationError(f"unknown unit {unit!r} in token lifetime {text!r}{hint}: {_EXAMPLES}")
        try:
            total += Decimal(number) * _SECONDS[unit]
        except InvalidOperation:  # pragma: no cover - the regex only lets decimals through
            raise ConfigurationError(f"token lifetime {text!r} has a bad number") from None
        pos = match.end()
        while pos < len(value) and value[pos].isspace():
            pos += 1
    seconds = int(total)  # Defguard truncates to whole seconds
    if seconds < 1:
        raise ConfigurationError(
            f"token lifetime {text!r} is shorter than a second: the token would be dead on arrival"
        )
    lifetime = dt.timedelta(seconds=seconds)
    if lifetime > MAX_TOKEN_LIFETIME:
        raise ConfigurationError(
            f"token lifetime {text!r} is longer than the {MAX_TOKEN_LIFETIME.days}-day maximum: "
            "enrollment tokens are secrets stored in Entra, keep them short-lived"
        )
    return lifetime


def _refuse_misreadings(text: str, value: str) -> None:
    """Inputs with a message of their own: non-ASCII digits, a negative value, ``M`` (a month) for minutes."""
    foreign = next((char for char in value if char.isdigit() and not char.isascii()), None)
    if foreign is not None:
        raise ConfigurationError(
            f"token lifetime {text!r} has the digit {foreign!r} (U+{ord(foreign):04X}), which Defguard does not "
            f"read: type the number with ASCII digits 0-9, {_EXAMPLES}"
        )
    if _NEGATIVE.match(value):
        raise ConfigurationError(
            f"token lifetime {text!r} is negative: a token cannot expire before it is issued; give how long it "
            f"stays valid from now, {_EXAMPLES}"
        )
    for match in _GROUP.finditer(value):
        number, unit = match.groups()
        if unit == "M":
            raise ConfigurationError(
                f"token lifetime {text!r}: {number}M is a month: did you mean {number}m (minutes)? "
                f"For months write {number}month"
            )


def short_lifetime_warning(lifetime: dt.timedelta) -> str | None:
    """Why a lifetime below :data:`MIN_USEFUL_LIFETIME` is a bad idea (``None`` when it is not that short)."""
    if lifetime >= MIN_USEFUL_LIFETIME:
        return None
    return (
        f"a token lifetime of {int(lifetime.total_seconds())} s is shorter than "
        f"{int(MIN_USEFUL_LIFETIME.total_seconds() // 60)} minutes: the token will expire before the user runs the "
        "installer, and minting it only destroys the user's previous token (fine for a drill or a test)"
    )


def format_for_defguard(lifetime: dt.timedelta) -> str:
    """The form sent as ``token_expiration_time``: whole seconds with a unit, which every version parses."""
    return f"{int(lifetime.total_seconds())}s"


def parse_duration(text: str, what: str) -> dt.timedelta:
    """A duration that is not a token lifetime (``--refresh-before``, ``--watch``): the grammar and bounds of
    :func:`parse_lifetime` (1 s to :data:`MAX_TOKEN_LIFETIME`), its messages naming ``what``."""
    try:
        return parse_lifetime(text)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("token lifetime", what)) from None
