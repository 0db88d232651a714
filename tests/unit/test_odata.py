"""The client's own OData: literals quoted (quotes doubled), ``eq``/``in``/``any`` filters, the 15-value ``in`` and
120-character value limits, and OData error bodies. Asserted on exact strings, never re-implemented."""

from __future__ import annotations

import pytest

from defguard_entra import _odata
from defguard_entra._lookup import find_users, query_item


def test_literal_quotes_and_doubles_embedded_quotes() -> None:
    assert _odata.literal("alice@example.com") == "'alice@example.com'"
    assert _odata.literal("o'neil@example.com") == "'o''neil@example.com'"
    assert _odata.literal("''") == "''''''"
    assert _odata.literal("") == "''"


def test_eq_filter() -> None:
    assert _odata.eq("mail", "o'neil@example.com") == "mail eq 'o''neil@example.com'"
    assert _odata.eq("displayName", "VPN Users") == "displayName eq 'VPN Users'"


def test_in_filter_lists_every_value_quoted() -> None:
    assert _odata.in_("mail", ["a@example.com"]) == "mail in ('a@example.com')"
    assert _odata.in_("userPrincipalName", ["a@x.com", "b'c@x.com"]) == "userPrincipalName in ('a@x.com','b''c@x.com')"


@pytest.mark.parametrize("count", [0, _odata.IN_LIMIT + 1])
def test_in_filter_takes_1_to_15_values(count: int) -> None:
    assert _odata.IN_LIMIT == 15
    with pytest.raises(ValueError, match="1 to 15"):
        _odata.in_("mail", [f"u{n}@example.com" for n in range(count)])
    assert _odata.in_("mail", [f"u{n}@x.com" for n in range(15)]).count("'u") == 15


def test_any_eq_filter() -> None:
    assert _odata.any_eq("otherMails", "o'neil@example.com") == "otherMails/any(m:m eq 'o''neil@example.com')"


def test_query_item_encodes_the_filter() -> None:
    item = query_item("7", _odata.eq("mail", "o'neil+x@example.com"))
    assert item["id"] == "7"
    assert item["method"] == "GET"
    assert item["url"].startswith("/users?$filter=mail%20eq%20%27o%27%27neil%2Bx%40example.com%27&$select=")
    assert item["url"].endswith("&$top=999")


def test_values_over_120_characters_are_refused_before_any_request() -> None:
    assert _odata.VALUE_LIMIT == 120
    at_limit = "a" * (120 - len("@example.com")) + "@example.com"
    over = "b" + at_limit
    sent: list[str] = []

    async def run(items):
        sent.extend(item["url"] for item in items)
        return {item["id"]: ({"id": item["id"], "status": 200, "body": {"value": []}}, 0) for item in items}

    async def follow(url: str):
        raise AssertionError(url)

    import asyncio

    result = asyncio.run(find_users([at_limit, over.upper()], run, follow))
    assert result[over].error is not None
    assert "121 characters" in result[over].error
    assert "at most 120" in result[over].error
    assert result[at_limit].error is None
    assert result[at_limit].user is None  # looked up, not found
    assert sent
    assert not any("bbbb" in url for url in sent)  # the long one never reached Graph


def test_error_of_reads_odata_error_bodies() -> None:
    body = {"error": {"code": "Request_ResourceNotFound", "message": "gone"}}
    assert _odata.error_of(body, 404) == ("Request_ResourceNotFound", "gone")
    assert _odata.error_of({"error": {"message": "no code"}}, 400) == ("400", "no code")
    assert _odata.error_of({"error": "flat"}, 500) == ("500", "")
    assert _odata.error_of(None, 503) == ("503", "")
    assert _odata.error_of("<html>", 502) == ("502", "")
