"""Pure: the existing group names closest to one that was not found, and how each differs from it.

Names are compared first as they are most often mistyped without a visible difference: NFC-normalised,
case-folded, runs of whitespace collapsed and the ends stripped (``VPN USERS``, ``VPN Users `` and an NFD-encoded
``Équipe VPN / Paris`` all equal ``VPN Users`` or ``Équipe VPN / Paris`` there); then by edit distance.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["closest_names", "did_you_mean", "how_it_differs", "loose"]

#: How many names a not-found message suggests at most.
SUGGESTIONS = 3


def loose(name: str) -> str:
    """``name`` as it is compared: NFC, case-folded, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), by characters."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _spacing(typed: str, existing: str) -> str | None:
    """How the whitespace of ``typed`` differs from that of ``existing`` (both NFC), or ``None`` if it does not."""
    if typed == existing:
        return None
    parts = []
    for side, strip in (("leading", str.lstrip), ("trailing", str.rstrip)):
        extra = (len(typed) - len(strip(typed))) - (len(existing) - len(strip(existing)))
        if extra:
            whose = "yours has" if extra > 0 else "the group's name has"
            count = abs(extra)
            parts.append(f"{whose} {'a' if count == 1 else count} {side} space{'s' if count > 1 else ''}")
    if typed.strip() != existing.strip():
        parts.append("the spaces inside differ")
    return ", ".join(parts)


def how_it_differs(typed: str, existing: str) -> str:
    """In words: ``differs only in case``, ``yours has a trailing space``, ``differs in Unicode normalisation
    yours is NFD``, ``2 letters differ`` — several joined with ``and`` when they add up."""
    if typed == existing:
        return "is the same"
    nfc_typed, nfc_existing = unicodedata.normalize("NFC", typed), unicodedata.normalize("NFC", existing)
    if loose(typed) != loose(existing):
        count = _distance(loose(typed), loose(existing))
        return f"{count} letter{'s differ' if count != 1 else ' differs'}"
    parts = []
    for whose, name, nfc in (("yours", typed, nfc_typed), ("the group's name", existing, nfc_existing)):
        if nfc != name:
            form = "NFD" if unicodedata.normalize("NFD", name) == name else "not NFC"
            parts.append(f"differs in Unicode normalisation, {whose} is {form}")
    spacing = _spacing(nfc_typed.casefold(), nfc_existing.casefold())
    if spacing:
        parts.append(spacing)
    if " ".join(nfc_typed.split()) != " ".join(nfc_existing.split()):
        parts.append("differs in case")
    if parts == ["differs in case"]:
        return "differs only in case"
    return " and ".join(parts)


def closest_names(typed: str, names: Iterable[str], *, limit: int = SUGGESTIONS) -> list[str]:
    """The existing ``names`` closest to ``typed``: equal when compared loosely first, then by edit distance (at
    most a third of the name's length, at least 2), each once, at most ``limit``."""
    target = loose(typed)
    most = max(2, len(target) // 3)
    ranked = []
    for name in dict.fromkeys(names):
        if name == typed:
            continue
        distance = _distance(target, loose(name))
        if distance <= most:
            ranked.append((distance, name))
    ranked.sort(key=lambda pair: (pair[0], pair[1].casefold(), pair[1]))
    return [name for _, name in ranked[:limit]]


def did_you_mean(typed: str, names: Iterable[str], *, ids: dict[str, str] | None = None) -> str | None:
    """``did you mean 'VPN Users' (differs only in case)?`` for the closest ``names``, or ``None``; ``ids``
    (name → id) adds each candidate's id."""
    close = closest_names(typed, names)
    if not close:
        return None
    shown = []
    for name in close:
        how = how_it_differs(typed, name)
        if ids and name in ids:
            how = f"id {ids[name]}: {how}"
        shown.append(f"{name!r} ({how})")
    return f"did you mean {', or '.join(shown)}?"
