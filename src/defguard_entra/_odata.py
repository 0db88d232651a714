"""OData literals, the ``$filter`` expressions used to find users and groups, and OData error bodies.

Every value is quoted with :func:`literal` (single quotes, embedded quotes doubled, as OData's URL conventions
say), so that an address pasted in raw, such as ``o'neil@example.com``, can neither break a query nor change its
meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IN_LIMIT", "VALUE_LIMIT", "any_eq", "eq", "error_of", "in_", "literal", "starts_with"]

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


def starts_with(prop: str, value: str) -> str:
    """``startsWith(prop,'…')``."""
    return f"startsWith({prop},{literal(value)})"


def in_(prop: str, values: Sequence[str]) -> str:
    if not 0 < len(values) <= IN_LIMIT:
        msg = f"an in (…) filter takes 1 to {IN_LIMIT} values, not {len(values)}"
        raise ValueError(msg)
    return f"{prop} in ({','.join(literal(v) for v in values)})"


def any_eq(collection: str, value: str) -> str:
    """``otherMails/any(m:m eq '…')``."""
    return f"{collection}/any(m:m eq {literal(value)})"


def error_of(body: object, status: int) -> tuple[str, str]:
    """The ``(code, message)`` of an OData error body (``{"error": {"code": …, "message": …}}``); the status as
    the code, and no message, when the body is not one."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or status), str(error.get("message") or "")
    return str(status), ""
