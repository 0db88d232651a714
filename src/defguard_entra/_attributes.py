"""The custom security attributes in Graph's terms: the ``$batch`` items that write and read them, what their
definitions must say, and what comes back.

Pure: ``AsyncEntraClient`` sends these items and hands the answers back here. Writing needs the value's
``@odata.type`` ("Assign, update, list, or remove custom security attribute assignments for a user", Microsoft
Learn); a value set to ``None`` removes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ._odata import error_of
from .models import ATTRIBUTE_EXPIRES, ATTRIBUTE_TOKEN, ATTRIBUTE_URL, Secret, WriteResult

__all__ = [
    "WRITE_TYPE",
    "definition_problems",
    "expiry_definition",
    "item_failure",
    "patch_items",
    "read_items",
    "values_of",
    "write_results",
]

WRITE_TYPE = "#Microsoft.DirectoryServices.CustomSecurityAttributeValue"

#: ``{item id: (the item's answer, retries it took)}``, as the ``$batch`` engine returns them.
_Answers = Mapping[str, tuple[Mapping[str, Any], int]]


def patch_items(set_name: str, values: Mapping[str, Mapping[str, str | None]]) -> list[dict[str, Any]]:
    """One ``PATCH /users/{id}`` item per user of ``{entra_id: {attribute: value-or-None}}``, item ``n`` for the
    ``n``-th user."""
    return [
        {
            "id": str(n),
            "method": "PATCH",
            "url": f"/users/{quote(entra_id, safe='')}",
            "headers": {"Content-Type": "application/json"},
            "body": {"customSecurityAttributes": {set_name: {"@odata.type": WRITE_TYPE, **user_values}}},
        }
        for n, (entra_id, user_values) in enumerate(values.items())
    ]


def read_items(entra_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One ``GET /users/{id}`` item per user for its custom security attributes; item ``n`` for ``entra_ids[n]``."""
    return [
        {"id": str(n), "method": "GET", "url": f"/users/{quote(i, safe='')}?$select=id,customSecurityAttributes"}
        for n, i in enumerate(entra_ids)
    ]


def item_failure(answer: Mapping[str, Any], status: int) -> str:
    """``Graph 404 Request_ResourceNotFound: …``: a failed item's answer in one line."""
    code, message = error_of(answer.get("body"), status)
    return f"Graph {status} {code}: {message}".rstrip(": ")


def write_results(entra_ids: Sequence[str], answers: _Answers) -> dict[str, WriteResult]:
    """Each user's :class:`WriteResult` from the answers to :func:`patch_items`."""
    results = {}
    for n, entra_id in enumerate(entra_ids):
        answer, retries = answers[str(n)]
        status = int(answer.get("status", 0))
        if 200 <= status < 300:
            results[entra_id] = WriteResult(ok=True, status=status, retries=retries)
        else:
            error = item_failure(answer, status)
            results[entra_id] = WriteResult(ok=False, status=status, error=error, retries=retries)
    return results


def definition_problems(set_name: str, definitions: Sequence[Mapping[str, Any]]) -> tuple[bool, tuple[str, ...]]:
    """Whether ``definitions`` (``customSecurityAttributeDefinitions``) hold any attribute of ``set_name``, and
    what is wrong with its two attributes: both must be defined, single-valued, free-text Strings, Available."""
    defined = _of_set(set_name, definitions)
    problems = []
    for name in (ATTRIBUTE_TOKEN, ATTRIBUTE_URL):
        definition = defined.get(name)
        if definition is None:
            problems.append(f"attribute {set_name}.{name} is not defined")
            continue
        problems.extend(_string_problems(set_name, name, definition))
    return bool(defined), tuple(problems)


def expiry_definition(set_name: str, definitions: Sequence[Mapping[str, Any]]) -> tuple[bool, tuple[str, ...]]:
    """Whether ``set_name`` defines the optional ``EnrollmentTokenExpiresAt`` as it must be to hold a date (a
    single-valued, free-form String, Available), and what is wrong with its definition when it is defined.

    Dates in custom security attributes are Strings: the attribute types are String, Integer and Boolean only
    ("Overview of custom security attributes using the Microsoft Graph API", Microsoft Learn,
    https://learn.microsoft.com/graph/api/resources/custom-security-attributes-overview)."""
    definition = _of_set(set_name, definitions).get(ATTRIBUTE_EXPIRES)
    if definition is None:
        return False, ()
    problems = tuple(_string_problems(set_name, ATTRIBUTE_EXPIRES, definition))
    return not problems, problems


def _of_set(set_name: str, definitions: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(d.get("name")): d for d in definitions if d.get("attributeSet") == set_name}


def _string_problems(set_name: str, name: str, definition: Mapping[str, Any]) -> list[str]:
    """What keeps one definition from holding the tool's text: String, single-valued, free-form, Available."""
    problems = []
    if definition.get("type") != "String":
        problems.append(f"{set_name}.{name} has type {definition.get('type')}, it must be String")
    if definition.get("isCollection"):
        problems.append(f"{set_name}.{name} allows multiple values: it must be single-valued")
    if definition.get("usePreDefinedValuesOnly"):
        problems.append(f"{set_name}.{name} only allows predefined values: turn that off")
    if definition.get("status", "Available") != "Available":
        problems.append(f"{set_name}.{name} is {definition.get('status')}: it must be Available")
    return problems


def values_of(body: Mapping[str, Any], set_name: str) -> dict[str, Any] | None:
    """The set's values in a user object, the stored enrollment token as a :class:`Secret` (so that ``print()`` in
    a notebook, a ``repr`` or a log line never shows it); ``None`` when the set holds nothing."""
    attributes = body.get("customSecurityAttributes")
    if not isinstance(attributes, dict):
        return None
    values = attributes.get(set_name)
    if not isinstance(values, dict):
        return None
    out = {k: v for k, v in values.items() if not k.startswith("@") and v is not None}
    if isinstance(out.get(ATTRIBUTE_TOKEN), str):
        out[ATTRIBUTE_TOKEN] = Secret(out[ATTRIBUTE_TOKEN])
    return out or None
