"""Conformance: the Graph emulator filters users on a custom security attribute value as Graph does, and refuses
to write an attribute the set does not define.

Sources (each test names its own):

* "List users", example "Get users with a custom security attribute assignment that equals a value", and the
  custom security attribute examples page: ``$filter=customSecurityAttributes/{set}/{attribute} eq '…'`` (and
  ``startsWith(…)``), "You must add ConsistencyLevel=eventual in the request or the header. You must also include
  $count=true to ensure the request is routed correctly", "The filter value is case sensitive"
  (https://learn.microsoft.com/graph/api/user-list, https://learn.microsoft.com/graph/custom-security-attributes-examples).
* "Advanced query capabilities on Microsoft Entra ID objects": what an advanced query answers without the header
  and ``$count`` (https://learn.microsoft.com/graph/aad-advanced-queries).
* Paging with ``@odata.nextLink`` (https://learn.microsoft.com/graph/paging).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from defguard_entra.testing.graph import GraphEmulator

URL = "https://enroll.example.com/"
FILTER = f"customSecurityAttributes/Defguard/EnrollmentUrl eq '{URL}'"
ADVANCED = {"ConsistencyLevel": "eventual"}
WRITE_TYPE = "#Microsoft.DirectoryServices.CustomSecurityAttributeValue"


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.define_attribute_set("Defguard")
        emulator.add_user("holder@example.com", attributes={"Defguard": {"EnrollmentUrl": URL}})
        emulator.add_user("other@example.com", attributes={"Defguard": {"EnrollmentUrl": "https://other.example/"}})
        emulator.add_user("upper@example.com", attributes={"Defguard": {"EnrollmentUrl": URL.upper()}})
        emulator.add_user("nothing@example.com")
        yield emulator


def _get(
    graph: GraphEmulator, params: dict[str, str], *, headers: dict[str, str] | None = None, token: str = ""
) -> Any:
    return requests.get(
        f"{graph.url}/users",
        params=params,
        headers={"Authorization": f"Bearer {token or graph.admin_token}", **(headers or {})},
        timeout=5,
    )


def _upns(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(u["userPrincipalName"] for u in response.json()["value"])


def test_the_filter_finds_exactly_the_holders_with_the_header_and_count(graph: GraphEmulator) -> None:
    """List users (https://learn.microsoft.com/graph/api/user-list), "Get users with a custom security attribute
    assignment that equals a value": ``$count=true`` with ``ConsistencyLevel: eventual``; "The filter value is
    case sensitive" (the upper-cased URL is not a match), and ``@odata.count`` comes with ``$count=true``."""
    params = {"$filter": FILTER, "$count": "true", "$select": "id,userPrincipalName,accountEnabled"}
    response = _get(graph, params, headers=ADVANCED)
    assert _upns(response) == ["holder@example.com"]
    body = response.json()
    assert body["@odata.count"] == 1
    assert body["value"][0]["accountEnabled"] is True


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"$filter": FILTER}, {}),
        ({"$filter": FILTER, "$count": "true"}, {}),
        ({"$filter": FILTER}, ADVANCED),
    ],
    ids=["neither", "count-only", "header-only"],
)
def test_the_filter_is_refused_without_the_header_and_count(
    graph: GraphEmulator, params: dict[str, str], headers: dict[str, str]
) -> None:
    """Advanced query capabilities (https://learn.microsoft.com/graph/aad-advanced-queries): a query that needs them
    is answered 400 ``Request_UnsupportedQuery`` without ``ConsistencyLevel: eventual`` *and* ``$count=true``
    (List users: both are required for a custom security attribute filter). Graph's exact message for this filter
    is not verified; the status and code are those of every other advanced-only query."""
    response = _get(graph, params, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "Request_UnsupportedQuery"
    assert "ConsistencyLevel" in error["message"]


def test_starts_with_on_a_custom_security_attribute_is_case_sensitive(graph: GraphEmulator) -> None:
    """Custom security attribute examples (https://learn.microsoft.com/graph/custom-security-attributes-examples),
    "Filter all users with an attribute that starts with a value": ``startsWith(customSecurityAttributes/…,'…')``
    with the same header and ``$count``; case-sensitive like ``eq``."""
    params = {"$filter": "startsWith(customSecurityAttributes/Defguard/EnrollmentUrl,'https://enroll.')"}
    response = _get(graph, {**params, "$count": "true"}, headers=ADVANCED)
    assert _upns(response) == ["holder@example.com"]


def test_filtering_on_a_value_needs_permission_to_read_it(graph: GraphEmulator) -> None:
    """Custom security attribute examples (https://learn.microsoft.com/graph/custom-security-attributes-examples),
    Prerequisites "To read": CustomSecAttributeAssignment.Read.All and User.Read.All. Filtering on a value reads
    it; Graph's answer to a caller without the permission is not verified: 403 ``Authorization_RequestDenied`` is
    modelled (the client raises on it rather than taking "nobody" for an answer)."""
    token = graph.add_principal("no-csa-read", read_attributes=False, write_attributes=False)
    response = _get(graph, {"$filter": FILTER, "$count": "true"}, headers=ADVANCED, token=token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "Authorization_RequestDenied"


def test_every_page_of_the_filter_needs_the_header(graph: GraphEmulator) -> None:
    """Paging (https://learn.microsoft.com/graph/paging): the ``@odata.nextLink`` keeps the query (``$filter``,
    ``$count``); the header is the client's to send again, and a page asked for without it is refused like the
    first."""
    for n in range(3):
        graph.add_user(f"more{n}@example.com", attributes={"Defguard": {"EnrollmentUrl": URL}})
    first = _get(graph, {"$filter": FILTER, "$count": "true", "$top": "2"}, headers=ADVANCED)
    assert first.status_code == 200, first.text
    assert first.json()["@odata.count"] == 4
    link = first.json()["@odata.nextLink"]
    headers = {"Authorization": f"Bearer {graph.admin_token}"}
    assert requests.get(link, headers=headers, timeout=5).status_code == 400
    second = requests.get(link, headers={**headers, **ADVANCED}, timeout=5)
    assert second.status_code == 200, second.text
    assert "@odata.count" not in second.json()  # the count comes with the first page
    assert len(first.json()["value"]) + len(second.json()["value"]) == 4


def test_an_eq_value_over_120_characters_is_refused(graph: GraphEmulator) -> None:
    """Microsoft Graph known issues, "Some limitations apply to query parameters": the value to match with ``eq``
    has at most 120 characters (https://learn.microsoft.com/graph/known-issues)."""
    long = "https://" + "e" * 120 + ".example/"
    response = _get(
        graph,
        {"$filter": f"customSecurityAttributes/Defguard/EnrollmentUrl eq '{long}'", "$count": "true"},
        headers=ADVANCED,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_UnsupportedQuery"


# -- writing an attribute the set does not define --------------------------------------------------------------


def _patch(graph: GraphEmulator, user: str, values: dict[str, Any]) -> requests.Response:
    body = {"customSecurityAttributes": {"Defguard": {"@odata.type": WRITE_TYPE, **values}}}
    return requests.patch(
        f"{graph.url}/users/{user}",
        json=body,
        headers={"Authorization": f"Bearer {graph.admin_token}"},
        timeout=5,
    )


@pytest.mark.parametrize("value", ["2030-01-02T03:04:05Z", None], ids=["value", "null"])
def test_writing_an_undefined_attribute_fails_the_whole_write(graph: GraphEmulator, value: str | None) -> None:
    """Graph answers 400 to a property it does not know in a write ("Invalid property", as users report it:
    microsoftgraph/msgraph-sdk-dotnet#2352, microsoftgraph/microsoft-graph-docs-contrib#9232), and a PATCH
    changes nothing when it fails (Update user, https://learn.microsoft.com/graph/api/user-update). So the tool
    must never send ``EnrollmentTokenExpiresAt`` (not even null) to a set that does not define it: the token in the
    same write would not be stored. The exact message is not verified; the emulator names the attribute."""
    user = graph.add_user("writer@example.com")
    response = _patch(graph, user, {"EnrollmentToken": "t", "EnrollmentUrl": URL, "EnrollmentTokenExpiresAt": value})
    assert response.status_code == 400
    assert "EnrollmentTokenExpiresAt" in response.json()["error"]["message"]  # the code is not verified
    assert graph.attributes(user) == {}  # nothing written, not even the token


def test_a_set_that_defines_the_expiry_takes_it_and_a_null_removes_it(graph: GraphEmulator) -> None:
    """Custom security attribute examples (https://learn.microsoft.com/graph/custom-security-attributes-examples):
    a String attribute takes a string ("Assign a custom security attribute with a string value", the example's
    value a date, ``"2022-10-01"``), and "Remove a single-valued custom security attribute assignment" sets it to
    null."""
    graph.define_attribute("Defguard", "EnrollmentTokenExpiresAt")
    user = graph.add_user("writer@example.com")
    values = {"EnrollmentToken": "t", "EnrollmentUrl": URL, "EnrollmentTokenExpiresAt": "2030-01-02T03:04:05Z"}
    assert _patch(graph, user, values).status_code == 204
    assert graph.attributes(user)["Defguard"]["EnrollmentTokenExpiresAt"] == "2030-01-02T03:04:05Z"
    assert _patch(graph, user, {"EnrollmentTokenExpiresAt": None}).status_code == 204
    assert graph.attributes(user) == {"Defguard": {"EnrollmentToken": "t", "EnrollmentUrl": URL}}
