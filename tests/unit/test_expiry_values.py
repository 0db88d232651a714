"""Pure pieces of the third attribute and of finding holders: reading and writing ``EnrollmentTokenExpiresAt``, the
definitions check, the ``check`` line, and the filter ``find_holders`` sends."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest

from defguard_entra import _attributes, _lookup
from defguard_entra.models import (
    ATTRIBUTE_EXPIRES,
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    AttributeSetCheck,
    CheckState,
    EnrollmentAttributes,
    Secret,
)
from defguard_entra.provisioning.checklist import attribute_items, expiry_item

WHEN = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
WHEN_TEXT = "2030-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2030-01-02T03:04:05Z", WHEN),
        ("2030-01-02T04:04:05+01:00", WHEN),
        ("2030-01-02T03:04:05", WHEN),  # no offset: taken as UTC
        ("2030-01-02T03:04:05.250Z", WHEN + dt.timedelta(milliseconds=250)),
        ("  2030-01-02T03:04:05z ", WHEN),
        ("next tuesday", None),
        ("2030-13-40T99:00:00Z", None),
        ("", None),
        (17, None),
        (None, None),
    ],
)
def test_the_stored_expiry_reads_as_aware_utc_or_none(stored: object, expected: dt.datetime | None) -> None:
    pair = EnrollmentAttributes.from_graph(
        {ATTRIBUTE_TOKEN: Secret("t"), ATTRIBUTE_URL: "u", ATTRIBUTE_EXPIRES: stored}
    )
    assert pair is not None
    assert pair.expires_at == expected
    if expected is not None:
        assert pair.expires_at is not None
        assert pair.expires_at.utcoffset() == dt.timedelta(0)


def test_to_graph_writes_the_expiry_only_when_asked() -> None:
    pair = EnrollmentAttributes(token=Secret("t"), url="u", expires_at=WHEN + dt.timedelta(microseconds=999_999))
    assert pair.to_graph() == {ATTRIBUTE_TOKEN: "t", ATTRIBUTE_URL: "u"}
    assert pair.to_graph(expiry=True) == {ATTRIBUTE_TOKEN: "t", ATTRIBUTE_URL: "u", ATTRIBUTE_EXPIRES: WHEN_TEXT}
    local = dt.datetime(2030, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert EnrollmentAttributes(expires_at=local).to_graph(expiry=True)[ATTRIBUTE_EXPIRES] == WHEN_TEXT
    assert EnrollmentAttributes().to_graph(expiry=True) == {
        ATTRIBUTE_TOKEN: None,
        ATTRIBUTE_URL: None,
        ATTRIBUTE_EXPIRES: None,
    }


def _definition(name: str, **overrides: object) -> dict[str, object]:
    base = {"attributeSet": "Defguard", "name": name, "type": "String", "isCollection": False}
    return {**base, "usePreDefinedValuesOnly": False, "status": "Available", **overrides}


@pytest.mark.parametrize(
    ("overrides", "defined", "problem"),
    [
        ({}, True, None),
        ({"type": "Integer"}, False, "has type Integer"),
        ({"isCollection": True}, False, "multiple values"),
        ({"usePreDefinedValuesOnly": True}, False, "predefined"),
        ({"status": "Deprecated"}, False, "Deprecated"),
        ({"attributeSet": "Other"}, False, None),  # another set's attribute of the same name
    ],
)
def test_expiry_definition(overrides: dict[str, object], defined: bool, problem: str | None) -> None:
    definitions = [
        _definition(ATTRIBUTE_TOKEN),
        _definition(ATTRIBUTE_URL),
        _definition(ATTRIBUTE_EXPIRES, **overrides),
    ]
    usable, problems = _attributes.expiry_definition("Defguard", definitions)
    assert usable is defined
    assert (problem is None) == (not problems)
    if problem is not None:
        assert problem in problems[0]
    assert _attributes.definition_problems("Defguard", definitions) == (True, ())  # the pair is unaffected


def test_the_check_line_warns_never_fails() -> None:
    lines = {
        "ok": expiry_item(AttributeSetCheck(readable=True, set_exists=True, defines_expiry=True), "Defguard"),
        "missing": expiry_item(AttributeSetCheck(readable=True, set_exists=True, defines_expiry=False), "Defguard"),
        "wrong": expiry_item(
            AttributeSetCheck(
                readable=True, set_exists=True, defines_expiry=False, expiry_problems=("x has type Integer",)
            ),
            "Defguard",
        ),
        "unreadable": expiry_item(AttributeSetCheck(readable=False), "Defguard"),
    }
    assert {k: v.state for k, v in lines.items()} == {
        "ok": CheckState.OK,
        "missing": CheckState.WARN,
        "wrong": CheckState.WARN,
        "unreadable": CheckState.SKIP,
    }
    assert "data type String, single value, free-form" in lines["missing"].hint
    assert "x has type Integer" in lines["wrong"].detail
    keys = [i.key for i in attribute_items(AttributeSetCheck(readable=True, set_exists=True), "Defguard")]
    assert keys[-1] == "attribute_expires"


def test_the_holders_filter_quotes_the_value_and_asks_for_what_graph_requires() -> None:
    query = _lookup.holders_query("Defguard", "EnrollmentUrl", "https://x/o'neil/")
    assert query["$filter"] == "customSecurityAttributes/Defguard/EnrollmentUrl eq 'https://x/o''neil/'"
    assert query["$count"] == "true"
    assert "accountEnabled" in query["$select"].split(",")
    assert "customSecurityAttributes" in query["$select"].split(",")
    assert _lookup.ADVANCED_HEADERS == {"ConsistencyLevel": "eventual"}
    long = "h" * 130
    prefix = _lookup.holders_query("Defguard", "EnrollmentUrl", long)["$filter"]
    assert prefix == f"startsWith(customSecurityAttributes/Defguard/EnrollmentUrl,'{'h' * 120}')"
    assert quote(prefix)  # plain text: the client URL-encodes it


def test_holders_of_keeps_exact_matches_once() -> None:
    def row(user_id: str, value: str | None) -> dict[str, object]:
        attributes = {"Defguard": {"EnrollmentUrl": value}} if value is not None else None
        return {"id": user_id, "userPrincipalName": f"{user_id}@x", "customSecurityAttributes": attributes}

    short = "https://enroll/"
    rows = [row("a", short), row("a", short), row("b", short.upper()), row("c", None), {"userPrincipalName": "no id"}]
    assert [u.id for u in _lookup.holders_of(rows, "Defguard", "EnrollmentUrl", short)] == ["a", "c"]
    long = "h" * 130
    rows = [row("a", long), row("b", long + "x"), row("c", None)]
    assert [u.id for u in _lookup.holders_of(rows, "Defguard", "EnrollmentUrl", long)] == ["a"]
