"""OData literals and the ``$filter`` expressions used to find users and groups.

Every value is quoted with :func:`literal` (single quotes, embedded quotes doubled): the PowerShell scripts paste
addresses in raw, so ``o'neil@example.com`` breaks the query or changes its meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IN_LIMIT", "VALUE_LIMIT", "any_eq", "eq", "in_", "literal"]

#: Graph allows at most 15 expressions in one ``in (…)`` clause by default.
IN_LIMIT = 15
#: "When filtering using the eq operator, the maximum limit of the value to match is 120 characters" (Microsoft
#: Graph known issues, "Some limitations apply to query parameters"); the same is assumed for ``in`` values.
VALUE_LIMIT = 120


def literal(value: str) -> str:
    """``o'neil`` → ``'o''neil'``."""
    return "'" + value.replace("'", "''") + "'"


def eq(prop: str, value: str) -> str:
    return f"{prop} eq {literal(value)}"


def in_(prop: str, values: Sequence[str]) -> str:
    if not 0 < len(values) <= IN_LIMIT:
        msg = f"an in (…) filter takes 1 to {IN_LIMIT} values, not {len(values)}"
        raise ValueError(msg)
    return f"{prop} in ({','.join(literal(v) for v in values)})"


def any_eq(collection: str, value: str) -> str:
    """``otherMails/any(m:m eq '…')``."""
    return f"{collection}/any(m:m eq {literal(value)})"
