"""The command line as PowerShell users type it, made exact before argparse sees it.

``provision`` is implied when the first word is an option; ``-Url``, ``-GROUPNAME``, ``-Url:VALUE`` and
``-ApiToken=VALUE`` become ``--url``, ``--group-name``, ``--url=VALUE``; an unknown command or option is refused with
what it probably meant, never echoing the value after it.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Sequence

from ._parser import COMMANDS, UsageError, subparsers

__all__ = ["normalise_argv"]

#: The PowerShell script's parameters, by lower-case name (PowerShell matches them case-insensitively).
_POWERSHELL = {
    "url": ("--url", "-Url"),
    "apitoken": ("--api-token", "-ApiToken"),
    "groupname": ("--group-name", "-GroupName"),
    "attributesetname": ("--attribute-set-name", "-AttributeSetName"),
    "enrollmenttokenexpirationtime": ("--enrollment-token-expiration-time", "-EnrollmentTokenExpirationTime"),
}
#: Among several options a word starts, the one it most likely means.
_PREFERRED = frozenset({"groupname"})
_SINGLE_DASH = re.compile(r"-([A-Za-z][A-Za-z0-9_-]*)(?:[:=](.*))?", re.DOTALL)
_DOUBLE_DASH = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:([:=])(.*))?", re.DOTALL)
#: Options whose value may start with "-" followed by a digit (no option name does): kept as the value so the
#: option's own check explains it, instead of argparse's "expected one argument".
_SIGNED_VALUES = frozenset({"--enrollment-token-expiration-time"})
_NEGATIVE = re.compile(r"-[0-9.]")


def _key(name: str) -> str:
    return name.lstrip("-").lower().replace("-", "").replace("_", "")


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
    if starts:  # the shortest, but a bare --group means the name (not --group-id)
        return candidates[min(starts, key=lambda name: (name not in _PREFERRED, len(name)))]
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
                raise UsageError(_unknown_option(name, command, options, elsewhere))
            value = match[3] if match[2] else None
        elif (match := _SINGLE_DASH.fullmatch(word)) is not None and not set(match[1]) <= shorts:
            name = "-" + match[1]
            known = _POWERSHELL.get(match[1].lower())
            if known is None or known[0] not in options:
                raise UsageError(_unknown_option(name, command, options, elsewhere))
            canonical, value = known[0], match[2]
        else:  # a short flag (-v, -vv, -q, -h), "-", a negative number, or a stray word: argparse decides
            out.append(word)
            continue
        action = options[canonical]
        if value is not None:
            if not _takes_value(action):
                raise UsageError(f"argument {canonical}: takes no value (got one after ':' or '=')")
            out.append(f"{canonical}={value}")
        elif _takes_value(action) and index < len(words):
            following = words[index]
            index += 1
            # argparse takes "-inf" or "-1e3" for an option; a word that is an option name stays one (a forgotten
            # value must not swallow --dry-run); a negative lifetime ("-1h") too, so that it gets its own message
            negative = canonical in _SIGNED_VALUES and _NEGATIVE.match(following) is not None
            joined = _is_number(following) or negative
            out.extend([f"{canonical}={following}"] if joined else [canonical, following])
        else:
            out.append(canonical)
    return out


def normalise_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
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
        raise UsageError(_unknown_command(args[0]))
    commands = subparsers(parser)
    elsewhere: dict[str, list[str]] = {}
    for name, other in commands.items():
        for action in other._actions:  # noqa: SLF001
            for option in action.option_strings:
                elsewhere.setdefault(option, []).append(name)
    sub = commands.get(command)
    return [command, *(_powershell_words(command, sub, rest, elsewhere) if sub is not None else rest)]
