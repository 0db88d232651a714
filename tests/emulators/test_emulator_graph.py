"""Conformance tests: the Graph emulator against ``docs/reference/graph-api.md`` (sections 2-7 and the checklist in
section 13).

Plain ``requests`` calls, exact status codes, bodies, content types and headers.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from defguard_entra.testing import DROP, Faults
from defguard_entra.testing.graph import (
    FilterSyntaxError,
    GraphEmulator,
    WriteQuota,
    parse_filter,
    parse_literal,
)

ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false"
WRITE_TYPE = "#Microsoft.DirectoryServices.CustomSecurityAttributeValue"
READ_TYPE = "#microsoft.graph.customSecurityAttributeValue"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
DECIMAL = re.compile(r"^\d+\.\d{3}$")
JSON_HEADERS = {"Content-Type": "application/json"}


# -- fixtures and helpers ----------------------------------------------------------------------------------------


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator(shuffle_batch=False) as emulator:
        emulator.define_attribute_set()
        yield emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


class Client:
    """A thin helper: the emulator's URL, a token, and a session."""

    def __init__(self, graph: GraphEmulator, http: requests.Session, token: str | None) -> None:
        self.graph, self.http, self.token = graph, http, token

    def __call__(self, method: str, path: str, *, token: str | None = "", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        chosen = self.token if token == "" else token
        if chosen is not None:
            headers.setdefault("Authorization", f"Bearer {chosen}")
        url = path if path.startswith("http") else self.graph.url + path
        return self.http.request(method, url, headers=headers, timeout=5, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self("GET", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self("PATCH", path, **kwargs)

    def batch(self, items: list[dict[str, Any]], **kwargs: Any) -> requests.Response:
        return self("POST", "/$batch", json={"requests": items}, **kwargs)


@pytest.fixture
def api(graph: GraphEmulator, http: requests.Session) -> Client:
    return Client(graph, http, graph.admin_token)


def error_of(response: requests.Response, status: int, code: str, message: str | None = None) -> dict[str, Any]:
    """Assert the OData error envelope exactly (date and ids checked by shape and against the headers)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    inner = error["innerError"]
    assert set(inner) == {"date", "request-id", "client-request-id"}
    assert DATE.match(inner["date"])
    assert inner["request-id"] == response.headers["request-id"]
    assert inner["client-request-id"] == response.headers["client-request-id"]
    return error


def ok_json(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == ODATA_JSON
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    return response.json()


def csa_patch(set_name: str = "Defguard", odata_type: Any = WRITE_TYPE, **values: Any) -> dict[str, Any]:
    return {"customSecurityAttributes": {set_name: {"@odata.type": odata_type, **values}}}


def follow(api: Client, path: str, **kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All pages of a list: (items, pages)."""
    pages = [ok_json(api.get(path, **kwargs))]
    while "@odata.nextLink" in pages[-1]:
        link = pages[-1]["@odata.nextLink"]
        assert link.startswith(api.graph.url + "/")  # absolute
        assert "$skiptoken=" in link
        pages.append(ok_json(api.get(link, headers=kwargs.get("headers", {}))))
        assert len(pages) < 100
    return [item for page in pages for item in page["value"]], pages


# -- authentication, errors and routing --------------------------------------------------------------------------


def test_missing_token_is_401(api: Client) -> None:
    response = api.get("/users", token=None)
    error_of(response, 401, "InvalidAuthenticationToken", "Access token is empty.")
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_unknown_token_is_401(api: Client) -> None:
    error_of(api.get("/users", token="nope"), 401, "InvalidAuthenticationToken")
    error_of(
        api.get("/users", token=None, headers={"Authorization": "Basic Zm9vOmJhcg=="}),
        401,
        "InvalidAuthenticationToken",
        "Access token is empty.",
    )


@pytest.mark.parametrize(
    ("revoked", "message"),
    [
        # Graph's answer to an expired access token (as Microsoft Graph PowerShell shows it: "Get-MgUser : Lifetime
        # validation failed, the token is expired.", FullyQualifiedErrorId InvalidAuthenticationToken).
        (False, "Lifetime validation failed, the token is expired."),
        # Continuous access evaluation: a token issued before the user's sessions were revoked (Microsoft Learn,
        # "Continuous access evaluation"; not verified against a tenant).
        (True, "TokenIssuedBeforeRevocationTimestamp"),
    ],
)
def test_an_invalidated_token_is_401(api: Client, graph: GraphEmulator, revoked: bool, message: str) -> None:
    token = graph.add_principal("soon invalid")
    ok_json(api.get("/users", token=token))
    graph.invalidate_token(token, revoked=revoked)
    response = api.get("/users", token=token)
    error = error_of(response, 401, "InvalidAuthenticationToken")
    assert message in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    ok_json(api.get("/users"))  # the others are unaffected


def test_header_names_and_scheme_are_case_insensitive(api: Client, graph: GraphEmulator) -> None:
    response = api.get("/users", token=None, headers={"AUTHORIZATION": f"bearer {graph.admin_token}"})
    assert ok_json(response)["value"] == []


def test_request_ids_and_client_request_id_echo(api: Client) -> None:
    response = api.get("/users", headers={"client-request-id": "my-client-id"})
    ok_json(response)
    assert response.headers["client-request-id"] == "my-client-id"
    assert re.match(r"^[0-9a-f-]{36}$", response.headers["request-id"])
    error = error_of(api.get("/users/nobody", headers={"client-request-id": "abc"}), 404, "Request_ResourceNotFound")
    assert error["innerError"]["client-request-id"] == "abc"


def test_double_slashes_are_tolerated(api: Client, graph: GraphEmulator) -> None:
    graph.add_user("a@x.com", mail="a@x.com")
    assert len(ok_json(api.get("//users"))["value"]) == 1
    assert ok_json(api("GET", graph.base_url + "//v1.0//users//a@x.com"))["userPrincipalName"] == "a@x.com"


def test_other_versions_and_roots_are_404(api: Client, graph: GraphEmulator, subtests: pytest.Subtests) -> None:
    paths = ["/beta/users", "/v2.0/users", "/", "/users"]
    for path in paths:
        with subtests.test(path=path):
            error_of(api("GET", graph.base_url + path), 404, "NotFound")
    assert graph.request_counts["not-found"] == len(paths)
    error_of(api("GET", graph.base_url + "/beta/users"), 404, "NotFound", "Resource not found for the segment 'beta'.")


def test_unknown_segment_is_404(api: Client) -> None:
    error_of(api.get("/applications"), 404, "NotFound", "Resource not found for the segment 'applications'.")


def test_wrong_method_is_405(api: Client, graph: GraphEmulator) -> None:
    user = graph.add_user("a@x.com")
    error_of(api("DELETE", f"/users/{user}"), 405, "Request_BadRequest")
    error_of(api("POST", "/users", json={}), 405, "Request_BadRequest")
    error_of(api("GET", "/$batch"), 405, "Request_BadRequest")


FORBIDDEN = [
    ("read_users", "GET", "/users"),
    ("read_users", "GET", "/users/a@x.com"),
    ("read_groups", "GET", "/groups"),
    ("read_groups", "GET", "/groups/{group}/transitiveMembers"),
    ("read_definitions", "GET", "/directory/customSecurityAttributeDefinitions"),
    ("read_definitions", "GET", "/directory/customSecurityAttributeDefinitions/Defguard_EnrollmentToken"),
    ("read_definitions", "GET", "/directory/attributeSets"),
    ("write_attributes", "PATCH", "/users/a@x.com"),
]


def test_missing_permission_is_403(api: Client, graph: GraphEmulator, subtests: pytest.Subtests) -> None:
    graph.add_user("a@x.com")
    group = graph.add_group("G")
    for permission, method, path in FORBIDDEN:
        with subtests.test(permission=permission, path=path):
            denied: dict[str, Any] = {permission: False}
            token = graph.add_principal("limited", **denied)
            response = api(method, path.format(group=group), token=token, json=csa_patch(EnrollmentToken="t"))
            error_of(response, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
            assert graph.user("a@x.com")["customSecurityAttributes"] is None


def test_success_headers(api: Client, graph: GraphEmulator) -> None:
    response = api.get("/users")
    ok_json(response)
    assert response.headers["x-ms-resource-unit"] == "2"
    assert api.get("/users?$select=id&$top=5").headers["x-ms-resource-unit"] == "1"


# -- GET /users and $filter --------------------------------------------------------------------------------------


@pytest.fixture
def people(graph: GraphEmulator) -> dict[str, str]:
    return {
        "alice": graph.add_user("alice@x.com", mail="Alice@X.com", display_name="Alice", other_mails=["al@y.com"]),
        "oneil": graph.add_user("sean@x.com", mail="o'neil@x.com", display_name="Seán O'Neil"),
        "frank": graph.add_user("frank@x.com", mail="frank@x.com", display_name="Frank"),
        "frank2": graph.add_user("frank.jones@x.com", mail="frank@x.com", display_name="Frank Jones"),
        "heidi": graph.add_user("heidi@x.com", mail="heidi@x.com", other_mails=["heidi.old@x.com", "h@y.com"]),
        "nomail": graph.add_user("grace@x.com", display_name="Grace", account_enabled=False),
    }


def select_users(api: Client, filter_: str, **kwargs: Any) -> dict[str, Any]:
    params = {"$filter": filter_, "$select": "id,mail", **kwargs.pop("params", {})}
    body: dict[str, Any] = ok_json(api.get("/users", params=params, **kwargs))
    return body


def test_mail_eq_exact_body(api: Client, graph: GraphEmulator, people: dict[str, str]) -> None:
    body = select_users(api, "mail eq 'alice@x.com'")
    assert body == {
        "@odata.context": f"{graph.url}/$metadata#users(id,mail)",
        "value": [{"id": people["alice"], "mail": "Alice@X.com"}],
    }


def test_quoted_literal_with_doubled_quote(api: Client, people: dict[str, str]) -> None:
    assert select_users(api, "mail eq 'o''neil@x.com'")["value"] == [{"id": people["oneil"], "mail": "o'neil@x.com"}]
    # the raw form a client sends: percent-encoded key, %20 spaces, %27 quotes
    raw = "/users?%24filter=mail%20eq%20%27o%27%27neil%40x.com%27&%24select=id"
    assert ok_json(api.get(raw))["value"] == [{"id": people["oneil"]}]
    # an unescaped quote ends the literal early: a syntax error, not a different query
    error_of(api.get("/users", params={"$filter": "mail eq 'o'neil@x.com'"}), 400, "BadRequest")


def test_upn_eq_and_case_insensitivity(api: Client, people: dict[str, str]) -> None:
    assert [u["id"] for u in select_users(api, "userPrincipalName eq 'SEAN@X.COM'")["value"]] == [people["oneil"]]
    assert [u["id"] for u in select_users(api, "UserPrincipalName EQ 'sean@x.com'")["value"]] == [people["oneil"]]


@pytest.mark.parametrize("var", ["x", "m", "addr"])
def test_other_mails_any_with_any_variable(api: Client, people: dict[str, str], var: str) -> None:
    body = select_users(api, f"otherMails/any({var}:{var} eq 'HEIDI.old@x.com')")
    assert body["value"] == [{"id": people["heidi"], "mail": "heidi@x.com"}]
    assert select_users(api, f"otherMails/any({var}:{var} eq 'nobody@x.com')")["value"] == []


def test_address_matched_by_two_users(api: Client, people: dict[str, str]) -> None:
    ids = [u["id"] for u in select_users(api, "mail eq 'frank@x.com'", params={"$top": "2"})["value"]]
    assert ids == [people["frank"], people["frank2"]]


def test_in_lookup_maps_back_to_addresses(api: Client, people: dict[str, str]) -> None:
    asked = ["ALICE@x.com", "o'neil@x.com", "frank@x.com", "missing@x.com"]
    filter_ = "mail in (" + ",".join("'" + a.replace("'", "''") + "'" for a in asked) + ")"
    rows = select_users(api, filter_)["value"]
    by_address: dict[str, list[str]] = {}
    for row in rows:
        by_address.setdefault(row["mail"].lower(), []).append(row["id"])
    assert by_address == {
        "alice@x.com": [people["alice"]],
        "o'neil@x.com": [people["oneil"]],
        "frank@x.com": [people["frank"], people["frank2"]],
    }
    ids = {u["id"] for u in select_users(api, "userPrincipalName in ('sean@x.com','heidi@x.com')")["value"]}
    assert ids == {people["oneil"], people["heidi"]}


def test_literal_with_comma_and_parenthesis(api: Client, graph: GraphEmulator) -> None:
    odd = graph.add_user("odd@x.com", mail="a,b)(c'd@x.com")
    assert select_users(api, "mail in ('a,b)(c''d@x.com','z@x.com')")["value"] == [
        {"id": odd, "mail": "a,b)(c'd@x.com"}
    ]


def test_in_with_more_than_15_values(api: Client, people: dict[str, str]) -> None:
    values = ",".join(f"'u{i}@x.com'" for i in range(15)) + ",'alice@x.com'"
    error = error_of(api.get("/users", params={"$filter": f"mail in ({values})"}), 400, "Request_UnsupportedQuery")
    assert "16" in error["message"]
    assert select_users(api, "mail in (" + values.rpartition(",")[0] + ")")["value"] == []  # 15 is fine
    advanced = select_users(
        api, f"mail in ({values})", params={"$count": "true"}, headers={"ConsistencyLevel": "eventual"}
    )
    assert advanced["value"] == [{"id": people["alice"], "mail": "Alice@X.com"}]
    assert advanced["@odata.count"] == 1


ADVANCED_FILTERS = [
    "endsWith(mail,'@x.com')",
    "mail ne 'alice@x.com'",
    "not(mail eq 'alice@x.com')",
    "mail eq null",
    "otherMails/any(x:x in ('al@y.com','h@y.com'))",
]


def test_advanced_filters_need_consistency_level_and_count(
    api: Client, people: dict[str, str], subtests: pytest.Subtests
) -> None:
    eventual = {"ConsistencyLevel": "eventual"}
    for filter_ in ADVANCED_FILTERS:
        with subtests.test(filter=filter_):
            error = error_of(api.get("/users", params={"$filter": filter_}), 400, "Request_UnsupportedQuery")
            assert "ConsistencyLevel" in error["message"]
            # the header alone, or $count alone, is not enough
            response = api.get("/users", params={"$filter": filter_}, headers=eventual)
            error_of(response, 400, "Request_UnsupportedQuery")
            response = api.get("/users", params={"$filter": filter_, "$count": "true"})
            error_of(response, 400, "Request_UnsupportedQuery")
            body = select_users(api, filter_, params={"$count": "true"}, headers=eventual)
            assert body["@odata.count"] == len(body["value"]) > 0


def test_advanced_filter_results(api: Client, people: dict[str, str]) -> None:
    advanced = {"params": {"$count": "true"}, "headers": {"ConsistencyLevel": "eventual"}}
    assert {u["id"] for u in select_users(api, "mail eq null", **advanced)["value"]} == {people["nomail"]}
    ends = {u["id"] for u in select_users(api, "endsWith(mail,'@X.COM')", **advanced)["value"]}
    assert ends == {people["alice"], people["oneil"], people["frank"], people["frank2"], people["heidi"]}
    both = select_users(api, "otherMails/any(x:x in ('al@y.com','h@y.com'))", **advanced)["value"]
    assert [u["id"] for u in both] == [people["alice"], people["heidi"]]


def test_or_and_and_of_supported_filters(api: Client, people: dict[str, str]) -> None:
    ids = [u["id"] for u in select_users(api, "mail eq 'alice@x.com' or otherMails/any(x:x eq 'h@y.com')")["value"]]
    assert ids == [people["alice"], people["heidi"]]
    ids = [u["id"] for u in select_users(api, "mail eq 'frank@x.com' and userPrincipalName eq 'frank@x.com'")["value"]]
    assert ids == [people["frank"]]
    assert select_users(api, "startsWith(mail,'ALI')")["value"][0]["id"] == people["alice"]


def test_unsupported_search_and_orderby(api: Client, people: dict[str, str]) -> None:
    error_of(api.get("/users", params={"$search": '"displayName:Al"'}), 400, "Request_UnsupportedQuery")
    error_of(
        api.get("/users", params={"$filter": "mail eq 'a@x.com'", "$orderby": "displayName"}),
        400,
        "Request_UnsupportedQuery",
    )
    names = [u["displayName"] for u in ok_json(api.get("/users", params={"$orderby": "displayName desc"}))["value"]]
    assert names[:2] == ["Seán O'Neil", "Grace"]


INVALID_FILTERS = [
    ("mail eq 'unterminated", "BadRequest"),
    ("mail eq", "BadRequest"),
    ("mail eq 'a' garbage", "BadRequest"),
    ("nosuchproperty eq 'a'", "BadRequest"),
    ("mail eq true", "BadRequest"),
    ("otherMails eq 'a'", "BadRequest"),
    ("mail like 'a'", "BadRequest"),
    ("contains(mail,'a')", "Request_UnsupportedQuery"),
]


def test_invalid_filters_are_400(api: Client, people: dict[str, str], subtests: pytest.Subtests) -> None:
    for filter_, code in INVALID_FILTERS:
        with subtests.test(filter=filter_):
            error_of(api.get("/users", params={"$filter": filter_}), 400, code)


def test_filter_without_dollar_is_not_odata(api: Client, people: dict[str, str]) -> None:
    assert len(ok_json(api.get("/users", params={"filter": "mail eq 'alice@x.com'"}))["value"]) == len(people)


def test_count_alone_is_ignored(api: Client, people: dict[str, str]) -> None:
    body = ok_json(api.get("/users", params={"$count": "true"}))
    assert "@odata.count" not in body
    assert len(body["value"]) == len(people)


def test_default_properties_and_select(api: Client, graph: GraphEmulator, people: dict[str, str]) -> None:
    body = ok_json(api.get("/users", params={"$filter": "mail eq 'heidi@x.com'"}))
    assert body["@odata.context"] == f"{graph.url}/$metadata#users"
    assert body["value"] == [
        {
            "businessPhones": [],
            "displayName": None,
            "givenName": None,
            "jobTitle": None,
            "mail": "heidi@x.com",
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "surname": None,
            "userPrincipalName": "heidi@x.com",
            "id": people["heidi"],
        }
    ]
    select = "ID,userPrincipalName,otherMails,displayName,accountEnabled,mail"
    row = ok_json(api.get("/users", params={"$filter": "mail eq 'heidi@x.com'", "$select": select}))["value"][0]
    assert row == {
        "id": people["heidi"],
        "userPrincipalName": "heidi@x.com",
        "otherMails": ["heidi.old@x.com", "h@y.com"],
        "displayName": None,
        "accountEnabled": True,
        "mail": "heidi@x.com",
    }
    row = ok_json(api.get("/users", params={"$filter": "mail eq 'heidi@x.com'", "$select": "mail"}))["value"][0]
    assert row == {"mail": "heidi@x.com"}  # id only when selected, as Graph does


def test_unknown_select_property_is_400(api: Client) -> None:
    error_of(
        api.get("/users", params={"$select": "id,nope"}),
        400,
        "BadRequest",
        "Could not find a property named 'nope' on type 'microsoft.graph.user'.",
    )


def test_csa_only_when_selected_in_lists(api: Client, graph: GraphEmulator, people: dict[str, str]) -> None:
    graph.set_attributes(people["alice"], "Defguard", {"EnrollmentToken": "tok"})
    rows = ok_json(api.get("/users", params={"$filter": "mail eq 'alice@x.com'"}))["value"]
    assert "customSecurityAttributes" not in rows[0]
    rows = ok_json(
        api.get("/users", params={"$filter": "mail eq 'alice@x.com'", "$select": "id,customSecurityAttributes"})
    )["value"]
    assert rows == [
        {
            "id": people["alice"],
            "customSecurityAttributes": {"Defguard": {"@odata.type": READ_TYPE, "EnrollmentToken": "tok"}},
        }
    ]


def test_top_out_of_range_is_400(api: Client, subtests: pytest.Subtests) -> None:
    for top in ["0", "1000", "-1", "abc", ""]:
        with subtests.test(top=top):
            error = error_of(api.get("/users", params={"$top": top}), 400, "Request_BadRequest")
            assert error["message"] == f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive."


def test_top_999_is_fine(api: Client, people: dict[str, str]) -> None:
    assert len(ok_json(api.get("/users", params={"$top": "999"}))["value"]) == len(people)


def test_paging_follows_next_links(graph: GraphEmulator, http: requests.Session) -> None:
    with GraphEmulator(page_size=3) as small:
        ids = [small.add_user(f"u{i}@x.com", mail=f"u{i}@x.com") for i in range(10)]
        api = Client(small, http, small.admin_token)
        items, pages = follow(api, "/users?$select=id")
        assert [u["id"] for u in items] == ids
        assert [len(p["value"]) for p in pages] == [3, 3, 3, 1]
        assert "@odata.nextLink" not in pages[-1]
        items, pages = follow(api, "/users?$select=id&$top=4")
        assert [len(p["value"]) for p in pages] == [4, 4, 2]
        # the filter travels in the nextLink
        items, _ = follow(api, "/users", params={"$filter": "startsWith(mail,'u1')", "$select": "mail", "$top": "1"})
        assert items == [{"mail": "u1@x.com"}]
    error_of(Client(graph, http, graph.admin_token).get("/users?$skiptoken=garbage"), 400, "Request_BadRequest")


def test_empty_pages_until_no_next_link(http: requests.Session) -> None:
    with GraphEmulator(page_size=2, empty_pages=True) as graph:
        ids = [graph.add_user(f"u{i}@x.com") for i in range(5)]
        api = Client(graph, http, graph.admin_token)
        first = ok_json(api.get("/users?$select=id"))
        assert first["value"] == []
        assert "@odata.nextLink" in first
        items, pages = follow(api, "/users?$select=id")
        assert [u["id"] for u in items] == ids
        assert [len(p["value"]) for p in pages] == [0, 2, 2, 1]
        # also when nothing matches: an empty page with a nextLink, then an empty page without one
        _, pages = follow(api, "/users", params={"$filter": "mail eq 'none@x.com'"})
        assert [("@odata.nextLink" in p, len(p["value"])) for p in pages] == [(True, 0), (False, 0)]
        # @odata.count on the first page only
        _, pages = follow(api, "/users?$count=true", headers={"ConsistencyLevel": "eventual"})
        assert pages[0]["@odata.count"] == 5
        assert all("@odata.count" not in p for p in pages[1:])


# -- GET /users/{id}, /me and reading attributes ---------------------------------------------------------------


def test_get_user_by_id_upn_and_key_forms(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("guest_x.com#EXT#@t.onmicrosoft.com", mail="guest@x.com")
    dollar = graph.add_user("$admin@x.com")
    for path in (
        f"/users/{uid}",
        f"/users/{uid.upper()}",
        "/users/GUEST_x.com%23EXT%23@t.onmicrosoft.com",
        f"/users('{uid}')",
        "/users('$admin@x.com')",
    ):
        body = ok_json(api.get(path + "?$select=id"))
        assert body["id"] in {uid, dollar}
        assert body["@odata.context"] == f"{graph.url}/$metadata#users(id)/$entity"
    assert ok_json(api.get("/users('$admin@x.com')?$select=id"))["id"] == dollar


def test_unknown_user_is_404(api: Client) -> None:
    error_of(
        api.get("/users/nobody@x.com"),
        404,
        "Request_ResourceNotFound",
        "Resource 'nobody@x.com' does not exist or one of its queried reference-property objects are not present.",
    )


def test_csa_read_shapes(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    path = f"/users/{uid}?$select=customSecurityAttributes"
    assert ok_json(api.get(path)) == {
        "@odata.context": f"{graph.url}/$metadata#users(customSecurityAttributes)/$entity",
        "customSecurityAttributes": None,
    }
    graph.set_attributes(uid, "Defguard", {"EnrollmentToken": "tok", "EnrollmentUrl": "https://e.example.com/"})
    assert ok_json(api.get(path))["customSecurityAttributes"] == {
        "Defguard": {"@odata.type": READ_TYPE, "EnrollmentToken": "tok", "EnrollmentUrl": "https://e.example.com/"}
    }
    assert "customSecurityAttributes" not in ok_json(api.get(f"/users/{uid}"))
    # not permitted to read: null, never 403
    reader = graph.add_principal("no-csa", read_attributes=False)
    assert ok_json(api.get(path, token=reader))["customSecurityAttributes"] is None


def test_me_resolves_the_delegated_user(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("me@x.com", mail="me@x.com")
    graph.set_attributes(uid, "Defguard", {"EnrollmentToken": "mine"})
    token = graph.add_principal("end-user", user="ME@x.com", read_users=False)
    body = ok_json(api.get("/me?$select=id,userPrincipalName,customSecurityAttributes", token=token))
    assert body == {
        "@odata.context": f"{graph.url}/$metadata#users(id,userPrincipalName,customSecurityAttributes)/$entity",
        "id": uid,
        "userPrincipalName": "me@x.com",
        "customSecurityAttributes": {"Defguard": {"@odata.type": READ_TYPE, "EnrollmentToken": "mine"}},
    }
    blind = graph.add_principal("blind", user=uid, read_attributes=False)
    assert ok_json(api.get("/me?$select=customSecurityAttributes", token=blind))["customSecurityAttributes"] is None
    assert graph.request_counts["me"] == 2


def test_me_with_app_only_token_is_400(api: Client) -> None:
    error_of(
        api.get("/me?$select=customSecurityAttributes"),
        400,
        "BadRequest",
        "/me request is only valid with delegated authentication flow.",
    )


# -- PATCH /users/{id} ---------------------------------------------------------------------------------------------


def test_patch_merges_and_returns_204(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    response = api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken="t1"))
    assert response.status_code == 204
    assert response.content == b""
    assert "Content-Type" not in response.headers
    assert response.headers["request-id"]
    # a second write merges per attribute; the read spelling of the type and a top-level type are accepted
    body = {"@odata.type": "#microsoft.graph.user", **csa_patch(odata_type=READ_TYPE, EnrollmentUrl="https://u/")}
    assert api.patch(f"/users/{uid}", json=body).status_code == 204
    assert graph.attributes(uid) == {"Defguard": {"EnrollmentToken": "t1", "EnrollmentUrl": "https://u/"}}
    assert graph.write_count == 2
    assert api.patch("/users/A@X.COM", json=csa_patch(EnrollmentToken="t2")).status_code == 204  # by UPN
    assert graph.attributes("a@x.com")["Defguard"]["EnrollmentToken"] == "t2"


def test_patch_null_clears_and_empty_set_disappears(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com", attributes={"Defguard": {"EnrollmentToken": "t", "EnrollmentUrl": "u"}})
    assert api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken=None)).status_code == 204
    assert graph.attributes(uid) == {"Defguard": {"EnrollmentUrl": "u"}}
    assert api.patch(f"/users/{uid}", json=csa_patch(EnrollmentUrl=None)).status_code == 204
    assert graph.attributes(uid) == {}
    assert graph.user(uid)["customSecurityAttributes"] is None
    assert ok_json(api.get(f"/users/{uid}?$select=customSecurityAttributes"))["customSecurityAttributes"] is None


def test_patch_value_length_limit(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    assert api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken="é" * 64)).status_code == 204
    response = api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken="new", EnrollmentUrl="x" * 65))
    error = error_of(response, 400, "BadRequest")
    assert "Defguard_EnrollmentUrl" in error["message"]
    assert "64" in error["message"]
    # the whole patch was rejected: the valid attribute in it was not applied either
    assert graph.attributes(uid) == {"Defguard": {"EnrollmentToken": "é" * 64}}


INVALID_PATCHES = [
    (csa_patch(EnrollmentTokn="t"), "'EnrollmentTokn'"),
    (csa_patch(enrollmentToken="t"), "'enrollmentToken'"),  # wrong case
    (csa_patch("defguard", EnrollmentToken="t"), "'defguard'"),  # wrong case of the set
    (csa_patch("Other", EnrollmentToken="t"), "'Other'"),
    (csa_patch(EnrollmentToken=5), "String"),
    (csa_patch(EnrollmentToken=["a"]), "String"),
    (csa_patch(odata_type="#microsoft.graph.user", EnrollmentToken="t"), "@odata.type"),
    ({"customSecurityAttributes": {"Defguard": {"EnrollmentToken": "t"}}}, "@odata.type"),
    ({"customSecurityAttributes": {"Defguard": "t"}}, "'Defguard'"),
    ({"customSecurityAttributes": None}, "customSecurityAttributes"),
    ({"@odata.type": "#microsoft.graph.group", **csa_patch(EnrollmentToken="t")}, "@odata.type"),
]


def test_patch_invalid_attribute_payloads(api: Client, graph: GraphEmulator, subtests: pytest.Subtests) -> None:
    uid = graph.add_user("a@x.com")
    for body, needle in INVALID_PATCHES:
        with subtests.test(body=body):
            error = error_of(api.patch(f"/users/{uid}", json=body), 400, "BadRequest")
            assert needle in error["message"]
            assert graph.attributes(uid) == {}
    assert graph.write_count == 0


def test_patch_wrong_case_hint(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    error = error_of(api.patch(f"/users/{uid}", json=csa_patch(enrollmenttoken="t")), 400, "BadRequest")
    assert error["message"] == (
        "Custom security attribute 'enrollmenttoken' is not defined in attribute set 'Defguard' "
        "(did you mean 'EnrollmentToken'? names are case-sensitive)."
    )


def test_patch_other_properties_are_rejected(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    error_of(api.patch(f"/users/{uid}", json={"displayName": "x"}), 400, "Request_BadRequest")
    error = error_of(
        api.patch(f"/users/{uid}", json={"odata_type": None, **csa_patch(EnrollmentToken="t")}),
        400,
        "Request_BadRequest",
    )
    assert "'odata_type'" in error["message"]
    assert graph.attributes(uid) == {}


def test_patch_needs_json_content_type_and_body(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    error_of(api.patch(f"/users/{uid}", data=b'{"customSecurityAttributes": {}}'), 400, "BadRequest")
    error_of(api.patch(f"/users/{uid}", data=b"{", headers=JSON_HEADERS), 400, "BadRequest")
    error_of(api.patch(f"/users/{uid}", data=b"[]", headers=JSON_HEADERS), 400, "BadRequest")
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert api.patch(f"/users/{uid}", data=b'{"customSecurityAttributes": {}}', headers=charset).status_code == 204


def test_patch_unknown_user_is_404(api: Client) -> None:
    error_of(api.patch("/users/nobody", json=csa_patch(EnrollmentToken="t")), 404, "Request_ResourceNotFound")


def test_patch_other_attribute_types(api: Client, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Eng", ())
    graph.define_attribute("Eng", "Projects", is_collection=True)
    graph.define_attribute("Eng", "Level", type="Integer")
    graph.define_attribute("Eng", "Remote", type="Boolean")
    graph.define_attribute("Eng", "Tier", use_predefined_values_only=True, allowed_values=["Gold", "Silver"])
    graph.define_attribute("Eng", "Old", status="Deprecated")
    uid = graph.add_user("a@x.com")
    good = csa_patch(
        "Eng",
        **{
            "Projects@odata.type": "#Collection(String)",
            "Projects": ["A", "B"],
            "Level@odata.type": "#Int32",
            "Level": 3,
            "Remote": True,
            "Tier": "Gold",
        },
    )
    assert api.patch(f"/users/{uid}", json=good).status_code == 204
    read = ok_json(api.get(f"/users/{uid}?$select=customSecurityAttributes"))["customSecurityAttributes"]
    assert read == {
        "Eng": {
            "@odata.type": READ_TYPE,
            "Projects@odata.type": "#Collection(String)",
            "Projects": ["A", "B"],
            "Level@odata.type": "#Int32",
            "Level": 3,
            "Remote": True,
            "Tier": "Gold",
        }
    }
    for bad in (
        {"Projects": ["A"]},
        {"Level": 3},
        {"Level@odata.type": "#Int32", "Level": "3"},
        {"Remote": "yes"},
        {"Tier": "Bronze"},
        {"Old": "x"},
    ):
        error_of(api.patch(f"/users/{uid}", json=csa_patch("Eng", **bad)), 400, "BadRequest")
    cleared = csa_patch("Eng", **{"Projects@odata.type": "#Collection(String)", "Projects": [], "Old": None})
    assert api.patch(f"/users/{uid}", json=cleared).status_code == 204
    assert "Projects" not in graph.attributes(uid)["Eng"]


# -- groups and members ----------------------------------------------------------------------------------------------


@pytest.fixture
def org(graph: GraphEmulator) -> dict[str, str]:
    ids = {name: graph.add_user(f"{name}@x.com", mail=f"{name}@x.com") for name in ("ann", "ben", "cat", "dan")}
    ids["inner"] = graph.add_group("Inner", [ids["cat"], ids["ann"]])
    ids["outer"] = graph.add_group("VPN users", [ids["ann"], ids["inner"], ids["ben"]])
    graph.add_members(ids["inner"], ids["outer"])  # a cycle
    ids["dup"] = graph.add_group("VPN users", [ids["dan"]])
    return ids


def test_groups_by_display_name_with_duplicates(api: Client, graph: GraphEmulator, org: dict[str, str]) -> None:
    body = ok_json(api.get("/groups", params={"$filter": "displayName eq 'vpn USERS'", "$select": "id,displayName"}))
    assert body == {
        "@odata.context": f"{graph.url}/$metadata#groups(id,displayName)",
        "value": [{"id": org["outer"], "displayName": "VPN users"}, {"id": org["dup"], "displayName": "VPN users"}],
    }
    assert ok_json(api.get("/groups", params={"$filter": "displayName eq 'none'"}))["value"] == []
    assert ok_json(api.get(f"/groups/{org['inner']}?$select=displayName"))["displayName"] == "Inner"


def test_group_by_object_id(api: Client, graph: GraphEmulator, org: dict[str, str]) -> None:
    """``GET /groups/{id}`` (https://learn.microsoft.com/graph/api/group-get): the group, or 404
    ``Request_ResourceNotFound``; ids compare case-insensitively like every directory object id."""
    body = ok_json(api.get(f"/groups/{org['dup'].upper()}", params={"$select": "id,displayName"}))
    assert body == {
        "@odata.context": f"{graph.url}/$metadata#groups(id,displayName)/$entity",
        "id": org["dup"],
        "displayName": "VPN users",
    }
    error_of(api.get("/groups/00000000-0000-4000-8000-000000000000"), 404, "Request_ResourceNotFound")
    assert graph.request_counts["group-get"] == 2


def test_groups_starting_with_compare_case_insensitively(api: Client, org: dict[str, str]) -> None:
    """``displayName`` supports ``startsWith`` in ``$filter`` (https://learn.microsoft.com/graph/api/resources/group,
    properties table); directory string comparisons ignore case."""
    params = {"$filter": "startswith(displayName,'vpn')", "$select": "id,displayName", "$top": "999"}
    body = ok_json(api.get("/groups", params=params))
    assert [g["id"] for g in body["value"]] == [org["outer"], org["dup"]]
    params["$filter"] = "startswith(displayName,'inn')"
    assert [g["displayName"] for g in ok_json(api.get("/groups", params=params))["value"]] == ["Inner"]


def test_direct_members(api: Client, org: dict[str, str]) -> None:
    body = ok_json(api.get(f"/groups/{org['outer']}/members?$select=id,mail"))
    assert body["value"] == [
        {"@odata.type": "#microsoft.graph.user", "id": org["ann"], "mail": "ann@x.com"},
        {"@odata.type": "#microsoft.graph.group", "id": org["inner"], "mail": None},
        {"@odata.type": "#microsoft.graph.user", "id": org["ben"], "mail": "ben@x.com"},
    ]


def test_transitive_members_flatten_nested_groups_and_cycles(
    api: Client, graph: GraphEmulator, org: dict[str, str]
) -> None:
    select = "$select=id,mail,userPrincipalName,otherMails,displayName"
    body = ok_json(api.get(f"/groups/{org['outer']}/transitiveMembers?{select}"))
    assert (
        body["@odata.context"]
        == f"{graph.url}/$metadata#directoryObjects(id,mail,userPrincipalName,otherMails,displayName)"
    )
    assert all("@odata.type" in item for item in body["value"])
    users = [i["id"] for i in body["value"] if i["@odata.type"] == "#microsoft.graph.user"]
    assert users == [org["ann"], org["ben"], org["cat"]]  # each once, the cycle back to outer is harmless
    groups = [i for i in body["value"] if i["@odata.type"] == "#microsoft.graph.group"]
    assert groups == [
        {"@odata.type": "#microsoft.graph.group", "id": org["inner"], "mail": None, "displayName": "Inner"}
    ]
    assert graph.request_counts["group-transitive-members"] == 1


@pytest.mark.parametrize("cast", ["microsoft.graph.user", "graph.user"])
def test_member_cast_suffix(api: Client, graph: GraphEmulator, org: dict[str, str], cast: str) -> None:
    body = ok_json(api.get(f"/groups/{org['outer']}/transitiveMembers/{cast}?$select=id"))
    assert body["@odata.context"] == f"{graph.url}/$metadata#users(id)"
    assert body["value"] == [{"@odata.type": "#microsoft.graph.user", "id": org[n]} for n in ("ann", "ben", "cat")]
    body = ok_json(api.get(f"/groups/{org['outer']}/members/{cast}?$select=id"))
    assert [i["id"] for i in body["value"]] == [org["ann"], org["ben"]]


def test_member_paging_and_top(api: Client, graph: GraphEmulator, org: dict[str, str]) -> None:
    items, pages = follow(api, f"/groups/{org['outer']}/transitiveMembers?$top=2&$select=id")
    assert [len(p["value"]) for p in pages] == [2, 2]
    assert [i["id"] for i in items] == [org["ann"], org["inner"], org["ben"], org["cat"]]
    error_of(api.get(f"/groups/{org['outer']}/members?$top=1000"), 400, "Request_BadRequest")


def test_members_without_user_read_permission(api: Client, graph: GraphEmulator, org: dict[str, str]) -> None:
    token = graph.add_principal("groups-only", read_users=False)
    body = ok_json(api.get(f"/groups/{org['outer']}/members/microsoft.graph.user?$select=id,mail", token=token))
    assert body["value"] == [
        {"@odata.type": "#microsoft.graph.user", "id": org["ann"]},
        {"@odata.type": "#microsoft.graph.user", "id": org["ben"]},
    ]


def test_unknown_group_is_404(api: Client) -> None:
    error_of(api.get("/groups/nope/transitiveMembers"), 404, "Request_ResourceNotFound")
    error_of(api.get("/groups/nope/members"), 404, "Request_ResourceNotFound")
    error_of(api.get("/groups/nope/owners"), 404, "NotFound")


def test_member_filter_needs_advanced_query(api: Client, org: dict[str, str]) -> None:
    path = f"/groups/{org['outer']}/transitiveMembers/microsoft.graph.user"
    error_of(api.get(path, params={"$filter": "mail eq 'ann@x.com'"}), 400, "Request_UnsupportedQuery")
    body = ok_json(
        api.get(
            path,
            params={"$filter": "mail eq 'ann@x.com'", "$count": "true", "$select": "id"},
            headers={"ConsistencyLevel": "eventual"},
        )
    )
    assert body["value"] == [{"@odata.type": "#microsoft.graph.user", "id": org["ann"]}]
    assert body["@odata.count"] == 1


# -- attribute definitions and sets ----------------------------------------------------------------------------------


def test_attribute_definitions(api: Client, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Other", ("Thing",), description="other set")
    definition = {
        "attributeSet": "Defguard",
        "description": None,
        "id": "Defguard_EnrollmentToken",
        "isCollection": False,
        "isSearchable": True,
        "name": "EnrollmentToken",
        "status": "Available",
        "type": "String",
        "usePreDefinedValuesOnly": False,
    }
    body = ok_json(
        api.get("/directory/customSecurityAttributeDefinitions", params={"$filter": "attributeSet eq 'Defguard'"})
    )
    assert body["@odata.context"] == f"{graph.url}/$metadata#directory/customSecurityAttributeDefinitions"
    assert [d["id"] for d in body["value"]] == ["Defguard_EnrollmentToken", "Defguard_EnrollmentUrl"]
    assert body["value"][0] == definition
    assert len(ok_json(api.get("/directory/customSecurityAttributeDefinitions"))["value"]) == 3
    single = ok_json(api.get("/directory/customSecurityAttributeDefinitions/Defguard_EnrollmentToken"))
    assert single == {
        "@odata.context": f"{graph.url}/$metadata#directory/customSecurityAttributeDefinitions/$entity",
        **definition,
    }
    error_of(api.get("/directory/customSecurityAttributeDefinitions/Defguard_Nope"), 404, "Request_ResourceNotFound")
    error_of(
        api.get("/directory/customSecurityAttributeDefinitions", params={"$filter": "bogus eq 'x'"}), 400, "BadRequest"
    )


def test_attribute_sets(api: Client, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Other", (), description="other set")
    body = ok_json(api.get("/directory/attributeSets"))
    assert body["value"] == [
        {"id": "Defguard", "description": None, "maxAttributesPerSet": 25},
        {"id": "Other", "description": "other set", "maxAttributesPerSet": 25},
    ]
    assert ok_json(api.get("/directory/attributeSets/Other"))["description"] == "other set"
    error_of(api.get("/directory/attributeSets/Nope"), 404, "Request_ResourceNotFound")
    assert graph.request_counts["attribute-sets"] == 3


def test_seeding_validates_names(graph: GraphEmulator) -> None:
    with pytest.raises(ValueError, match="invalid attribute"):
        graph.define_attribute("Defguard", "Enrollment_Token")
    with pytest.raises(ValueError, match="invalid attribute set"):
        graph.define_attribute_set("1Set")
    with pytest.raises(KeyError):
        graph.define_attribute("Undefined", "Thing")


# -- $batch ------------------------------------------------------------------------------------------------------------


def patch_item(item_id: str, user: str, **values: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "method": "PATCH",
        "url": f"/users/{user}",
        "headers": JSON_HEADERS,
        "body": csa_patch(**values),
    }


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert set(body) == {"responses"}
    return {r["id"]: r for r in body["responses"]}


def test_batch_items_exact_shapes(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com", mail="a@x.com")
    response = api.batch(
        [
            patch_item("1", uid, EnrollmentToken="t"),
            {"id": "2", "method": "get", "url": f"users/{uid}?$select=id,customSecurityAttributes", "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": "/users?$filter=mail%20eq%20'a@x.com'&$select=id"},
            {"id": "4", "method": "GET", "url": "users/nobody"},
        ]
    )
    items = by_id(ok_json(response))
    assert items["1"] == {"id": "1", "status": 204, "headers": {"x-ms-resource-unit": "1"}}
    assert items["2"]["status"] == 200
    assert items["2"]["headers"]["Content-Type"] == ODATA_JSON
    assert items["2"]["body"] == {
        "@odata.context": f"{graph.url}/$metadata#users(id,customSecurityAttributes)/$entity",
        "id": uid,
        "customSecurityAttributes": {"Defguard": {"@odata.type": READ_TYPE, "EnrollmentToken": "t"}},
    }
    assert items["3"]["body"]["value"] == [{"id": uid}]
    assert items["4"]["status"] == 404
    assert items["4"]["body"]["error"]["code"] == "Request_ResourceNotFound"
    assert set(items["4"]["body"]["error"]["innerError"]) == {"date", "request-id", "client-request-id"}
    assert graph.request_counts["batch"] == 1
    assert graph.request_counts["batch-item:user-patch"] == 1
    assert graph.request_counts["batch-item:user-get"] == 2
    assert graph.request_counts["batch-item:users-list"] == 1
    logged = graph.requests_to("batch-item:user-patch")[0]
    assert logged.method == "PATCH"
    assert logged.raw_path == f"/v1.0/users/{uid}"
    assert logged.json() == csa_patch(EnrollmentToken="t")
    assert logged.status == 204
    assert graph.write_count == 1


def test_batch_item_headers_are_per_request(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com", mail="a@x.com")
    url = "/users?$filter=endsWith(mail,'@x.com')&$count=true&$select=id"
    items = by_id(
        ok_json(
            api.batch(
                [
                    {"id": "with", "method": "GET", "url": url, "headers": {"ConsistencyLevel": "eventual"}},
                    {"id": "without", "method": "GET", "url": url},
                ],
                headers={"ConsistencyLevel": "eventual"},  # outer headers do not reach the items
            )
        )
    )
    assert items["with"]["status"] == 200
    assert items["with"]["body"]["value"] == [{"id": uid}]
    assert items["with"]["body"]["@odata.count"] == 1
    assert items["without"]["status"] == 400
    assert items["without"]["body"]["error"]["code"] == "Request_UnsupportedQuery"


def test_batch_of_21_is_400(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    items = [{"id": str(i), "method": "GET", "url": f"/users/{uid}"} for i in range(21)]
    error_of(api.batch(items), 400, "BadRequest")
    assert graph.request_counts["batch-item:user-get"] == 0
    assert ok_json(api.batch(items[:20]))["responses"][0]["status"] == 200


def test_batch_duplicate_ids_is_400(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    error = error_of(
        api.batch([patch_item("1", uid, EnrollmentToken="a"), patch_item("1", uid, EnrollmentToken="b")]),
        400,
        "BadRequest",
    )
    assert "'1'" in error["message"]
    assert graph.write_count == 0


MALFORMED_BATCHES = [
    b"not json",
    b"[]",
    b'{"requests": "x"}',
    b'{"requests": []}',
    b'{"requests": [1]}',
    b'{"requests": [{"id": "1", "method": "GET"}]}',
    b'{"requests": [{"id": 1, "method": "GET", "url": "/me"}]}',
    b'{"requests": [{"id": "1", "method": "GET", "url": "/me", "dependsOn": ["9"]}]}',
    (
        b'{"requests": [{"id": "1", "method": "GET", "url": "/me", "dependsOn": ["2"]},'
        b' {"id": "2", "method": "GET", "url": "/me", "dependsOn": ["1"]}]}'
    ),
]


def test_malformed_batch_is_400(api: Client, graph: GraphEmulator, subtests: pytest.Subtests) -> None:
    for payload in MALFORMED_BATCHES:
        with subtests.test(payload=payload):
            error_of(api("POST", "/$batch", data=payload, headers=JSON_HEADERS), 400, "BadRequest")
    assert graph.request_counts["batch"] == len(MALFORMED_BATCHES)
    assert not [r for r in graph.requests if r.endpoint.startswith("batch-item:")]


def test_batch_needs_a_token(api: Client) -> None:
    error_of(api.batch([{"id": "1", "method": "GET", "url": "/users"}], token=None), 401, "InvalidAuthenticationToken")


def test_batch_items_use_the_outer_token(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    limited = graph.add_principal("reader", write_attributes=False)
    item = {
        **patch_item("1", uid, EnrollmentToken="t"),
        "headers": {**JSON_HEADERS, "Authorization": f"Bearer {graph.admin_token}"},
    }
    answer = by_id(ok_json(api.batch([item], token=limited)))["1"]
    assert answer["status"] == 403
    assert answer["body"]["error"]["code"] == "Authorization_RequestDenied"
    assert graph.attributes(uid) == {}


def test_batch_depends_on_and_424(api: Client, graph: GraphEmulator) -> None:
    """The batching page (https://learn.microsoft.com/graph/json-batching): a dependent of a failed item answers
    424 and never runs. ``depends_on`` (msgraph-core's spelling) is accepted only by the lax emulator."""
    graph.strict = False
    uid = graph.add_user("a@x.com")
    items = by_id(
        ok_json(
            api.batch(
                [
                    patch_item("1", uid, EnrollmentToken="x" * 65),
                    {**patch_item("2", uid, EnrollmentUrl="u"), "dependsOn": ["1"]},
                    {**patch_item("3", uid, EnrollmentUrl="v"), "depends_on": ["2"]},  # msgraph-core's spelling
                    patch_item("4", uid, EnrollmentToken="ok"),
                ]
            )
        )
    )
    assert [items[i]["status"] for i in "1234"] == [400, 424, 424, 204]
    assert items["2"]["body"]["error"]["code"] == "FailedDependency"
    assert graph.attributes(uid) == {"Defguard": {"EnrollmentToken": "ok"}}
    assert graph.request_counts["batch-item:user-patch"] == 2  # dependents of a failed item never ran


def test_batch_item_with_body_needs_content_type(api: Client, graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com")
    item = {"id": "7", "method": "PATCH", "url": f"/users/{uid}", "body": csa_patch(EnrollmentToken="t")}
    answer = by_id(ok_json(api.batch([item])))["7"]
    assert answer["status"] == 400
    assert answer["body"]["error"]["message"] == "Write request id : 7 does not contain Content-Type header or body."
    assert graph.attributes(uid) == {}


def test_nested_batch_item_is_400(api: Client) -> None:
    answer = by_id(
        ok_json(
            api.batch(
                [{"id": "1", "method": "POST", "url": "/$batch", "headers": JSON_HEADERS, "body": {"requests": []}}]
            )
        )
    )["1"]
    assert answer["status"] == 400


def test_batch_responses_are_shuffled_and_correlate_by_id(http: requests.Session) -> None:
    def run(seed: int) -> list[str]:
        with GraphEmulator(seed=seed) as graph:
            graph.define_attribute_set()
            users = [graph.add_user(f"u{i}@x.com") for i in range(20)]
            api = Client(graph, http, graph.admin_token)
            body = ok_json(api.batch([patch_item(f"p{i}", u, EnrollmentToken=f"t{i}") for i, u in enumerate(users)]))
            assert {r["id"]: r["status"] for r in body["responses"]} == {f"p{i}": 204 for i in range(20)}
            assert [graph.attributes(u)["Defguard"]["EnrollmentToken"] for u in users] == [f"t{i}" for i in range(20)]
            return [r["id"] for r in body["responses"]]

    order = run(1)
    assert order != [f"p{i}" for i in range(20)]
    assert order == run(1)  # seeded
    assert order != run(2)


def test_item_level_429_with_retry_after(http: requests.Session) -> None:
    with GraphEmulator(item_faults=Faults({429: 1.0}, endpoints={"user-patch"}), retry_after="integer") as graph:
        graph.define_attribute_set()
        uid = graph.add_user("a@x.com")
        api = Client(graph, http, graph.admin_token)
        items = by_id(
            ok_json(
                api.batch(
                    [
                        patch_item("1", uid, EnrollmentToken="t"),
                        {"id": "2", "method": "GET", "url": f"/users/{uid}?$select=id"},
                    ]
                )
            )
        )
        assert items["1"]["status"] == 429
        assert items["1"]["headers"]["Retry-After"] == "1"
        assert items["1"]["body"]["error"]["code"] == "TooManyRequests"
        assert items["2"]["status"] == 200
        assert graph.throttled_count == 1
        assert graph.write_count == 0
        assert graph.requests_to("batch-item:user-patch")[0].status == 429
        graph.item_faults = Faults({503: 1.0})
        assert by_id(ok_json(api.batch([patch_item("1", uid, EnrollmentToken="t")])))["1"]["status"] == 503


# -- throttling, faults and the write quota ----------------------------------------------------------------------------


def test_retry_after_modes(http: requests.Session, subtests: pytest.Subtests) -> None:
    modes: list[tuple[Any, str | None]] = [
        ("integer", "1"),
        ("zero", "0"),
        ("large", "200"),
        ("absent", None),
        (None, None),
        (2.5, "2.5"),
        (7, "7"),
    ]
    with GraphEmulator(faults=Faults({429: 1.0})) as graph:
        api = Client(graph, http, graph.admin_token)
        for mode, expected in modes:
            with subtests.test(mode=mode):
                graph.retry_after = mode
                response = api.get("/users")
                error_of(response, 429, "TooManyRequests")
                assert response.headers.get("Retry-After") == expected
                assert response.headers["x-ms-throttle-information"] == "ResourceUnitLimitExceeded"
        assert graph.throttled_count == len(modes)
        assert [r.status for r in graph.requests_to("users-list")] == [429] * len(modes)


def test_retry_after_decimal_is_drawn_from_the_seeded_rng(http: requests.Session) -> None:
    def values(seed: int) -> list[str]:
        with GraphEmulator(faults=Faults({429: 1.0}, seed=seed)) as graph:
            api = Client(graph, http, graph.admin_token)
            return [api.get("/users").headers["Retry-After"] for _ in range(3)]

    first = values(3)
    assert all(DECIMAL.match(v) and 0 < float(v) < 1 for v in first)
    assert first == values(3)
    assert first != values(4)


@pytest.mark.parametrize(("status", "code"), [(503, "ServiceUnavailable"), (504, "GatewayTimeout")])
def test_503_and_504(http: requests.Session, status: int, code: str) -> None:
    with GraphEmulator(faults=Faults({status: 1.0}), retry_after="integer") as graph:
        api = Client(graph, http, graph.admin_token)
        response = api.get("/users")
        error_of(response, status, code)
        assert response.headers["Retry-After"] == "1"
        graph.retry_after = "absent"
        assert "Retry-After" not in api.get("/users").headers
        assert graph.throttled_count == 0


def test_dropped_connection(http: requests.Session) -> None:
    with GraphEmulator(faults=Faults({DROP: 1.0}, endpoints={"users-list"})) as graph:
        api = Client(graph, http, graph.admin_token)
        with pytest.raises(requests.ConnectionError):
            api.get("/users")
        assert graph.requests_to("users-list")[0].status is None
        assert ok_json(api.get("/groups"))["value"] == []


def test_faults_are_reproducible_with_a_seed(http: requests.Session) -> None:
    def statuses(seed: int) -> list[int]:
        with GraphEmulator(faults=Faults({429: 0.3, 503: 0.2}, seed=seed)) as graph:
            api = Client(graph, http, graph.admin_token)
            return [api.get("/users").status_code for _ in range(30)]

    first = statuses(11)
    assert set(first) == {200, 429, 503}
    assert first == statuses(11)
    assert first != statuses(12)


def test_invalid_retry_after_mode() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        GraphEmulator(retry_after="sometimes")


def test_write_quota_exhaustion_and_refill(http: requests.Session) -> None:
    with GraphEmulator(write_quota=WriteQuota(5, 0.5)) as graph:
        graph.define_attribute_set()
        uid = graph.add_user("a@x.com")
        api = Client(graph, http, graph.admin_token)
        responses = [api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken=f"t{i}")) for i in range(5)]
        assert [r.status_code for r in responses] == [204] * 5
        assert "x-ms-throttle-limit-percentage" not in responses[0].headers
        assert float(responses[4].headers["x-ms-throttle-limit-percentage"]) >= 0.8  # above 80 % of the limit
        response = api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken="late"))
        error_of(response, 429, "TooManyRequests")
        wait = response.headers["Retry-After"]
        assert DECIMAL.match(wait)
        assert 0 < float(wait) <= 0.1
        assert response.headers["x-ms-throttle-information"] == "WriteLimitExceeded"
        assert response.headers["x-ms-throttle-scope"].startswith("Tenant_Application/")
        assert graph.attributes(uid) == {"Defguard": {"EnrollmentToken": "t4"}}
        time.sleep(float(wait) + 0.01)
        assert api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken="late")).status_code == 204
        assert graph.write_count == 6
        assert graph.throttled_count == 1
        # reads are not writes
        assert api.get(f"/users/{uid}").status_code == 200


def test_write_quota_applies_per_batch_item(http: requests.Session) -> None:
    with GraphEmulator(write_quota=WriteQuota(5, 0.5), retry_after="integer") as graph:
        graph.define_attribute_set()
        users = [graph.add_user(f"u{i}@x.com") for i in range(8)]
        api = Client(graph, http, graph.admin_token)
        body = ok_json(api.batch([patch_item(str(i), u, EnrollmentToken="t") for i, u in enumerate(users)]))
        statuses = sorted(r["status"] for r in body["responses"])
        assert statuses == [204] * 5 + [429] * 3
        throttled = [r for r in body["responses"] if r["status"] == 429]
        assert all(r["headers"]["Retry-After"] == "1" for r in throttled)  # rounded up in the integer mode
        assert all(r["headers"]["x-ms-throttle-information"] == "WriteLimitExceeded" for r in throttled)
        assert graph.write_count == 5
        assert graph.throttled_count == 3
        assert graph.request_counts["batch-item:user-patch"] == 8


def test_write_quota_token_bucket() -> None:
    quota = WriteQuota(2, 1.0)
    assert quota.take() == 0.0
    assert quota.take() == 0.0
    wait = quota.take()
    assert 0.4 < wait <= 0.5
    quota.reset()
    assert quota.available == 2.0
    with pytest.raises(ValueError, match="write quota"):
        WriteQuota(0, 1.0)


def test_latency(http: requests.Session) -> None:
    with GraphEmulator(faults=Faults(latency=0.05)) as graph:
        started = time.perf_counter()
        ok_json(Client(graph, http, graph.admin_token).get("/users"))
        assert time.perf_counter() - started >= 0.05


# -- seeding and introspection ----------------------------------------------------------------------------------------


def test_seeded_ids_and_records(graph: GraphEmulator) -> None:
    with GraphEmulator(seed=5) as a, GraphEmulator(seed=5) as b:
        assert a.add_user("x@x.com") == b.add_user("x@x.com")
        assert a.admin_token == b.admin_token
    uid = graph.add_user(
        "u@x.com",
        mail="u@x.com",
        other_mails=["o@x.com"],
        display_name="U",
        id="fixed-id",
        attributes={"Defguard": {"EnrollmentToken": "t"}},
    )
    assert uid == "fixed-id"
    assert graph.user("U@X.COM") == {
        "id": "fixed-id",
        "userPrincipalName": "u@x.com",
        "mail": "u@x.com",
        "otherMails": ["o@x.com"],
        "displayName": "U",
        "accountEnabled": True,
        "customSecurityAttributes": {"Defguard": {"EnrollmentToken": "t"}},
    }
    graph.set_attributes(uid, "Defguard", {"EnrollmentToken": None, "EnrollmentUrl": "u"})
    assert graph.attributes(uid) == {"Defguard": {"EnrollmentUrl": "u"}}
    with pytest.raises(ValueError, match="already exists"):
        graph.add_user("U@x.com")
    with pytest.raises(KeyError):
        graph.user("nobody")
    assert graph.url == f"http://127.0.0.1:{graph.port}/v1.0"
    assert graph.base_url == f"http://127.0.0.1:{graph.port}"
    assert graph.host == "127.0.0.1"


def test_request_log_and_reset(api: Client, graph: GraphEmulator) -> None:
    api.get("/users", params={"$top": "5"}, headers={"ConsistencyLevel": "eventual"})
    entry = graph.requests_to("users-list")[0]
    assert entry.query == "%24top=5"
    assert entry.headers["consistencylevel"] == "eventual"
    graph.reset_log()
    assert graph.requests == []


def test_concurrent_requests(graph: GraphEmulator) -> None:
    uid = graph.add_user("a@x.com", mail="a@x.com")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with requests.Session() as session:
                api = Client(graph, session, graph.admin_token)
                for i in range(15):
                    assert select_users(api, "mail eq 'a@x.com'")["value"][0]["id"] == uid
                    assert api.patch(f"/users/{uid}", json=csa_patch(EnrollmentToken=f"t{i}")).status_code == 204
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert graph.write_count == 90


# -- the filter parser ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "o'neil", "''", "a,b)(c", "x eq 'y'", "ünï'cödé", "'"])
def test_parse_literal_round_trip(value: str) -> None:
    assert parse_literal("'" + value.replace("'", "''") + "'") == value


@pytest.mark.parametrize("text", ["'open", "noquote", "'a' 'b'", "'a''"])
def test_parse_literal_rejects(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_literal(text)


def test_parse_filter_structure() -> None:
    node = parse_filter("otherMails/any(m:m eq 'a''b') or mail in ('x','y')")
    assert repr(node).startswith("BoolOp(op='or'")
    with pytest.raises(FilterSyntaxError):
        parse_filter("mail eq 'a' and")
    with pytest.raises(FilterSyntaxError):
        parse_filter("mail eq 'a' %")
