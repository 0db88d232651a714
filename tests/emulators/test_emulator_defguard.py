"""Conformance tests: the Defguard emulator against ``docs/reference/defguard-api.md`` (sections 2-7 and the
checklist in 10).

Every call goes over HTTP with plain ``requests``; statuses, bodies, content types and headers are compared with
literal expectations, so a drift in the emulator fails here. One running emulator per version is shared by the
module and :meth:`DefguardEmulator.reset` between tests keeps them independent (and the file fast).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from urllib3.util import SKIP_HEADER

from defguard_entra.testing._server import DROP, Faults
from defguard_entra.testing.defguard import DefguardEmulator, HumantimeError, parse_humantime

VERSIONS = ("1.6", "2.0")
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
COMPONENT = {"1.6": re.compile(r"1\.6\.6\+[0-9a-f]{40}"), "2.0": re.compile(r"2\.0\.1\+[0-9a-f]{40}")}
TOKEN_RE = re.compile(r"[A-Za-z0-9]{32}")
HOUR = dt.timedelta(hours=1)


# -- fixtures and helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, DefguardEmulator]]:
    emulators = {version: DefguardEmulator(version).start() for version in VERSIONS}
    yield emulators
    for emulator in emulators.values():
        emulator.stop()


def _fresh(servers: dict[str, DefguardEmulator], version: str) -> DefguardEmulator:
    emulator = servers[version]
    emulator.reset()
    return emulator


@pytest.fixture(params=VERSIONS)
def emu(request: pytest.FixtureRequest, servers: dict[str, DefguardEmulator]) -> DefguardEmulator:
    return _fresh(servers, request.param)


@pytest.fixture
def emu16(servers: dict[str, DefguardEmulator]) -> DefguardEmulator:
    return _fresh(servers, "1.6")


@pytest.fixture
def emu2(servers: dict[str, DefguardEmulator]) -> DefguardEmulator:
    return _fresh(servers, "2.0")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


ADMIN = "admin-token"  # placeholder meaning "the emulator's admin token"


@dataclasses.dataclass
class Api:
    emu: DefguardEmulator
    http: requests.Session

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN,
        headers: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        sent: dict[str, Any] = {}
        if token is not None:
            sent["Authorization"] = f"Bearer {self.emu.admin_token if token == ADMIN else token}"
        sent.update(headers or {})
        response = self.http.request(method, self.emu.url + path, headers=sent, timeout=10, **kwargs)
        # the component version is on every response, whatever the route or status
        assert response.headers["defguard-component-version"] == self.emu.component_version
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def start(
        self, username: str, body: Any = None, *, endpoint: str = "start_enrollment", **kwargs: Any
    ) -> requests.Response:
        return self.post(
            f"/api/v1/user/{quote(username, safe='')}/{endpoint}", json={} if body is None else body, **kwargs
        )

    def raw(
        self, username: str, data: bytes | str, content_type: str | None = JSON, **kwargs: Any
    ) -> requests.Response:
        headers = {} if content_type is None else {"Content-Type": content_type}
        return self.post(f"/api/v1/user/{username}/start_enrollment", data=data, headers=headers, **kwargs)


@pytest.fixture
def api(emu: DefguardEmulator, session: requests.Session) -> Api:
    return Api(emu, session)


@pytest.fixture
def api16(emu16: DefguardEmulator, session: requests.Session) -> Api:
    return Api(emu16, session)


@pytest.fixture
def api2(emu2: DefguardEmulator, session: requests.Session) -> Api:
    return Api(emu2, session)


def assert_json(response: requests.Response, status: int, body: Any) -> None:
    assert (response.status_code, response.headers.get("content-type")) == (status, JSON)
    assert response.json() == body


def assert_msg(response: requests.Response, status: int, msg: str) -> None:
    assert_json(response, status, {"msg": msg})


def assert_text(response: requests.Response, status: int, text: str) -> None:
    assert (response.status_code, response.headers.get("content-type")) == (status, TEXT)
    assert response.text == text


def issue(api: Api, username: str, body: Any = None, endpoint: str = "start_enrollment") -> str:
    response = api.start(username, body, endpoint=endpoint)
    assert response.status_code == 201, response.text
    token = response.json()["enrollment_token"]
    assert isinstance(token, str)
    return token


def lifetime(emu: DefguardEmulator, token: str) -> dt.timedelta:
    """``token_expiry`` minus the creation time of a live token."""
    record, expiry = emu.token(token), emu.token_expiry(token)
    assert record is not None
    assert expiry is not None
    return expiry - record.created_at


def seed_alice(emu: DefguardEmulator) -> None:
    emu.add_user("alice", email="alice@example.com", first_name="Alice", last_name="Smith", groups=["Engineering"])


def alice_info(version: str, **changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": 2,
        "username": "alice",
        "first_name": "Alice",
        "last_name": "Smith",
        "email": "alice@example.com",
        "phone": None,
        "mfa_enabled": False,
        "totp_enabled": False,
        "email_mfa_enabled": False,
        "groups": ["Engineering"],
        "mfa_method": "None",
        "authorized_apps": [],
        "is_active": True,
        "enrolled": False,
        "is_admin": False,
        "ldap_pass_requires_change": False,
    }
    if version == "2.0":
        info |= {"name": "Alice Smith", "devices": []}
    return info | changes


# -- construction and the Python-side API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1.6", "1.6"), ("1.6.6", "1.6"), ("2", "2.0"), ("2.0", "2.0"), ("2.x", "2.0"), ("2.0.1", "2.0")],
)
def test_version_aliases(given: str, expected: str) -> None:
    assert DefguardEmulator(given).version == expected


@pytest.mark.parametrize("given", ["1.5", "3", "2.1", "", "latest"])
def test_unknown_versions_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="version"):
        DefguardEmulator(given)


def test_seed_state_admin_user_group_and_token(emu: DefguardEmulator) -> None:
    assert emu.admin_username == "admin"
    assert re.fullmatch(r"dg-[A-Za-z0-9]{32}", emu.admin_token)
    assert emu.url == emu.base_url
    assert not emu.url.endswith("/")
    assert COMPONENT[emu.version].fullmatch(emu.component_version)
    assert emu.groups == [{"id": 1, "name": "admin", "members": ["admin"], "vpn_locations": [], "is_admin": True}]
    admin = emu.user_info("admin")
    assert (admin["id"], admin["email"], admin["enrolled"], admin["is_admin"]) == (1, "admin@example.com", True, True)
    assert emu.add_group("Engineering") == 2
    assert emu.add_group("Sales") == 3
    assert emu.add_group("Engineering", ["admin"]) == 2  # existing name: same id, members added
    assert emu.issued_count == 0


def test_add_user_refuses_invalid_usernames() -> None:
    emu = DefguardEmulator()
    for username in ("", "a" * 64, ".alice", "-alice", "_alice", "al ice", "al/ice", "zoë", "a@b", "alice\n"):
        with pytest.raises(ValueError, match="username"):
            emu.add_user(username)


def test_add_user_rules(emu: DefguardEmulator) -> None:
    emu.add_user("a" * 63)
    emu.add_user("9.b_c-d", email="Mixed@Example.com", groups=["New group"])
    assert emu.user_info("9.b_c-d")["groups"] == ["New group"]  # created on demand
    with pytest.raises(ValueError, match="exists"):
        emu.add_user("9.b_c-d")
    with pytest.raises(ValueError, match="e-mail"):
        emu.add_user("other", email="mixed@example.COM")  # e-mail uniqueness is case-insensitive
    emu.add_user("Alice", email="upper@example.com")
    emu.add_user("alice", email="lower@example.com")  # usernames are case-sensitive


def test_component_version_can_be_set() -> None:
    with DefguardEmulator("2.0", component_version="2.0.1+" + "ab" * 20) as emu, requests.Session() as http:
        response = http.get(emu.url + "/api/v1/health", timeout=10)
        assert response.headers["defguard-component-version"] == "2.0.1+" + "ab" * 20


# -- health, version header, authentication (section 2) ------------------------------------------------------------


def test_health_is_unauthenticated_plain_text(api: Api) -> None:
    api.emu.license_gate = False
    for token in (None, "nonsense", ADMIN):
        assert_text(api.get("/api/v1/health", token=token), 200, "alive")
    assert_text(api.get("/api/v1/health", headers={"Authorization": "Basic abc"}), 200, "alive")


def test_license_gate_off_ignores_the_authorization_header(api: Api) -> None:
    api.emu.license_gate = False
    for headers in ({}, {"Authorization": "garbage"}, {"Authorization": f"Bearer {api.emu.admin_token}"}):
        assert_msg(api.get("/api/v1/me", token=None, headers=headers), 401, "Session is required")
    api.emu.license_gate = True
    assert api.get("/api/v1/me").status_code == 200


def test_no_header_means_no_session(api: Api) -> None:
    assert_msg(api.get("/api/v1/me", token=None), 401, "Session is required")


UNDECODABLE = (
    "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "Token abc", "BearerX abc", "dg-abc", "Bearer\tdg-abc",
    "Bearer dg-\xe9t\xe9",
)  # fmt: skip


def test_undecodable_headers_are_invalid(api: Api) -> None:
    for value in UNDECODABLE:
        response = api.get("/api/v1/me", token=None, headers={"Authorization": value})
        assert (response.status_code, response.json()) == (401, {"msg": "Invalid auth header"}), value


def test_bearer_scheme_is_case_insensitive_and_spaces_are_stripped(api: Api) -> None:
    for scheme in ("Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer    "):
        response = api.get("/api/v1/me", token=None, headers={"Authorization": scheme + api.emu.admin_token})
        assert response.status_code == 200, scheme


def test_unknown_revoked_and_disabled_owner_tokens_are_invalid(api: Api) -> None:
    emu = api.emu
    assert_msg(api.get("/api/v1/me", token="dg-" + "x" * 32), 401, "Invalid API token")
    assert_msg(api.get("/api/v1/me", token=emu.admin_token.upper()), 401, "Invalid API token")  # exact hash
    emu.add_user("root", is_admin=True, enrolled=True)
    root = emu.add_api_token("root")
    assert api.get("/api/v1/me", token=root).json()["username"] == "root"
    emu.set_user("root", active=False)
    assert_msg(api.get("/api/v1/me", token=root), 401, "Invalid API token")
    emu.set_user("root", active=True)
    emu.revoke_api_token(root)
    assert_msg(api.get("/api/v1/me", token=root), 401, "Invalid API token")
    second = emu.add_api_token("root")
    emu.remove_user("root")
    assert_msg(api.get("/api/v1/me", token=second), 401, "Invalid API token")


def test_token_of_a_normal_user_is_forbidden(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    token = emu.add_api_token("alice")
    message = "Token authentication is not allowed for normal users"
    assert_msg(api.get("/api/v1/me", token=token), 403, message)
    assert_msg(api.start("alice", token=token), 403, message)
    emu.set_user("alice", is_admin=True)
    assert api.get("/api/v1/me", token=token).status_code == 200
    emu.set_user("admin", is_admin=False)  # an admin that lost the role
    assert_msg(api.get("/api/v1/me"), 403, message)


def test_tokens_are_stored_as_sha256(emu: DefguardEmulator) -> None:
    import hashlib

    assert hashlib.sha256(emu.admin_token.encode()).hexdigest() in emu._api_tokens
    assert emu.admin_token not in emu._api_tokens


def test_auth_is_checked_before_user_agent_and_body(api: Api) -> None:
    response = api.post(
        "/api/v1/user/nobody/start_enrollment", token="dg-unknown", data="{", headers={"User-Agent": None}
    )
    assert_msg(response, 401, "Invalid API token")


# -- /me and users (section 4) -------------------------------------------------------------------------------------


def test_me_returns_the_owner(api: Api) -> None:
    expected = alice_info(
        api.emu.version,
        id=1,
        username="admin",
        first_name="DefGuard",
        last_name="Administrator",
        email="admin@example.com",
        groups=["admin"],
        enrolled=True,
        is_admin=True,
    )
    if api.emu.version == "2.0":
        expected["name"] = "DefGuard Administrator"
    assert_json(api.get("/api/v1/me"), 200, expected)


def test_user_details_per_version(api: Api) -> None:
    seed_alice(api.emu)
    info = alice_info(api.emu.version)
    if api.emu.version == "1.6":
        expected = {"user": info, "devices": [], "biometric_enabled_devices": [], "security_keys": []}
    else:
        expected = {"user": info, "biometric_enabled_devices": [], "security_keys": []}
    assert_json(api.get("/api/v1/user/alice"), 200, expected)
    assert set(info) - {"name", "devices"} == {
        "id",
        "username",
        "first_name",
        "last_name",
        "email",
        "phone",
        "mfa_enabled",
        "totp_enabled",
        "email_mfa_enabled",
        "groups",
        "mfa_method",
        "authorized_apps",
        "is_active",
        "enrolled",
        "is_admin",
        "ldap_pass_requires_change",
    }


def test_user_lookup_is_exact_and_case_sensitive(api: Api) -> None:
    seed_alice(api.emu)
    assert_msg(api.get("/api/v1/user/Alice"), 404, "user Alice not found")
    assert_msg(api.get("/api/v1/user/ALICE"), 404, "user ALICE not found")
    assert_msg(api.get("/api/v1/user/alic"), 404, "user alic not found")
    assert api.get("/api/v1/user/al%69ce").json()["user"]["username"] == "alice"  # decoded after routing


def test_user_list_1_6_is_an_array_of_every_user(api16: Api) -> None:
    emu = api16.emu
    seed_alice(emu)
    emu.add_user("bob", active=False)
    response = api16.get("/api/v1/user?page=2&per_page=1")  # no pagination on 1.6: the query is ignored
    assert (response.status_code, response.headers["content-type"]) == (200, JSON)
    users = response.json()
    assert [user["username"] for user in users] == ["admin", "alice", "bob"]
    assert users[1] == alice_info("1.6")
    assert users[2]["is_active"] is False


def test_user_list_2x_pages(api2: Api) -> None:
    emu = api2.emu
    for number in range(119):
        emu.add_user(f"user{number:03}", active=number % 7 != 0)
    names = ["admin"] + [f"user{number:03}" for number in range(119)]

    def page(query: str) -> tuple[list[str], dict[str, Any]]:
        response = api2.get("/api/v1/user" + query)
        assert (response.status_code, response.headers["content-type"]) == (200, JSON)
        body = response.json()
        assert set(body) == {"data", "pagination"}
        return [user["username"] for user in body["data"]], body["pagination"]

    def meta(current: int, size: int, total_pages: int, next_page: int | None) -> dict[str, Any]:
        return {
            "current_page": current,
            "page_size": size,
            "total_items": 120,
            "total_pages": total_pages,
            "next_page": next_page,
        }

    assert page("") == (names[:50], meta(1, 50, 3, 2))
    assert page("?page=2") == (names[50:100], meta(2, 50, 3, 3))
    assert page("?page=3") == (names[100:], meta(3, 50, 3, None))
    assert page("?page=4") == ([], meta(4, 50, 3, None))
    assert page("?page=0") == (names[:50], meta(1, 50, 3, 2))
    assert page("?per_page=0") == (names[:1], meta(1, 1, 120, 2))
    assert page("?per_page=1000&page=2") == (names[100:], meta(2, 100, 2, None))
    assert page("?page=%2B2&per_page=100&search=x&sort=name") == (names[100:], meta(2, 100, 2, None))
    first = api2.get("/api/v1/user?per_page=2").json()["data"]
    assert first[0] == emu.user_info("admin")
    assert all(set(user) >= {"name", "devices"} for user in first)


BAD_QUERIES = [
    ("page=abc", "invalid digit found in string"),
    ("page=-1", "invalid digit found in string"),
    ("page=+1", "invalid digit found in string"),  # '+' is a space in a query string
    ("per_page=1.5", "invalid digit found in string"),
    ("page=", "cannot parse integer from empty string"),
    ("per_page=4294967296", "number too large to fit in target type"),
    ("page=1&page=2", "duplicate field `page`"),
]


def test_user_list_2x_bad_query(api2: Api) -> None:
    for query, detail in BAD_QUERIES:
        response = api2.get("/api/v1/user?" + query)
        expected = (400, TEXT, f"Failed to deserialize query string: {detail}")
        assert (response.status_code, response.headers["content-type"], response.text) == expected, query


def test_paginated_content_type_can_be_dropped(api2: Api) -> None:
    api2.emu.paginated_content_type = None  # what the 2.x source suggests; see the emulator's docs
    response = api2.get("/api/v1/user")
    assert response.status_code == 200
    assert "content-type" not in response.headers
    assert response.json()["pagination"]["total_items"] == 1


def test_u32_offset_wraps_like_the_server(api2: Api) -> None:
    api2.emu.add_user("bob")
    # (2**31 + 1 - 1) * 2 wraps to 0 in u32 arithmetic: the first page comes back with a huge current_page
    body = api2.get("/api/v1/user?page=2147483649&per_page=2").json()
    assert [user["username"] for user in body["data"]] == ["admin", "bob"]
    assert body["pagination"]["current_page"] == 2147483649
    assert body["pagination"]["next_page"] is None


@pytest.mark.parametrize(
    ("flags", "enrolled_16", "enrolled_2"),
    [
        ({}, False, False),
        ({"enrolled": True}, True, True),
        ({"openid": True}, True, True),
        ({"ldap": True}, True, True),
    ],
)
def test_enrolled_flag_per_version(api: Api, flags: dict[str, Any], enrolled_16: bool, enrolled_2: bool) -> None:
    api.emu.add_user("carol", **flags)
    expected = enrolled_16 if api.emu.version == "1.6" else enrolled_2
    assert api.get("/api/v1/user/carol").json()["user"]["enrolled"] is expected
    api.emu.set_user("carol", enrollment_pending=True)  # pending is never enrolled
    assert api.get("/api/v1/user/carol").json()["user"]["enrolled"] is False


def test_ldap_remote_enrollment_setting_2x(api2: Api) -> None:
    emu = api2.emu
    emu.add_user("dave", ldap=True)
    emu.ldap_remote_enrollment_enabled = True
    assert emu.user_info("dave")["enrolled"] is False
    token = issue(api2, "dave")
    emu.redeem(token)
    assert api2.get("/api/v1/user/dave").json()["user"]["enrolled"] is True


# -- groups (section 5) --------------------------------------------------------------------------------------------


def seed_groups(emu: DefguardEmulator) -> None:
    emu.add_user("zed")
    emu.add_user("bob", active=False)
    seed_alice(emu)
    emu.add_group("Engineering", ["zed", "bob"], vpn_locations=["Office"])
    emu.add_group("VPN users", ["alice"])


def test_group_list_per_version(api: Api) -> None:
    seed_groups(api.emu)
    names = ["admin", "Engineering", "VPN users"]
    if api.emu.version == "1.6":
        assert_json(api.get("/api/v1/group"), 200, {"groups": names})
    else:
        pagination = {"current_page": 1, "page_size": 50, "total_items": 3, "total_pages": 1, "next_page": None}
        assert_json(api.get("/api/v1/group"), 200, {"data": names, "pagination": pagination})
        pagination = {"current_page": 2, "page_size": 2, "total_items": 3, "total_pages": 2, "next_page": None}
        assert_json(api.get("/api/v1/group?page=2&per_page=2"), 200, {"data": ["VPN users"], "pagination": pagination})


def test_group_info_lists_every_group_with_sorted_members(api: Api) -> None:
    seed_groups(api.emu)
    assert_json(
        api.get("/api/v1/group-info"),
        200,
        [
            {"id": 1, "name": "admin", "members": ["admin"], "vpn_locations": [], "is_admin": True},
            {
                "id": 2,
                "name": "Engineering",
                "members": ["alice", "bob", "zed"],
                "vpn_locations": ["Office"],
                "is_admin": False,
            },
            {"id": 3, "name": "VPN users", "members": ["alice"], "vpn_locations": [], "is_admin": False},
        ],
    )


def test_group_by_name_1_6(api16: Api) -> None:
    api16.emu.add_user("zed")
    for name in ("VPN users", "a/b", "c+d", "50%", "#1", "what?", "Zespół IT", "日本"):
        group_id = api16.emu.add_group(name, ["zed"])
        expected = {"id": group_id, "name": name, "members": ["zed"], "vpn_locations": [], "is_admin": False}
        assert_json(api16.get("/api/v1/group/" + quote(name, safe="")), 200, expected)
        assert_msg(
            api16.get("/api/v1/group/" + quote(name.upper() + "x", safe="")), 404, f"Group {name.upper()}x not found"
        )


def test_group_by_name_1_6_plus_and_percent_decoding(api16: Api) -> None:
    api16.emu.add_group("c+d")
    api16.emu.add_group("c d")
    assert api16.get("/api/v1/group/c+d").json()["name"] == "c+d"  # '+' is not a space in a path
    assert api16.get("/api/v1/group/c%2Bd").json()["name"] == "c+d"
    assert api16.get("/api/v1/group/c%20d").json()["name"] == "c d"
    assert_msg(api16.get("/api/v1/group/2"), 404, "Group 2 not found")  # 1.6 never looks up ids


def test_group_by_id_2x(api2: Api) -> None:
    seed_groups(api2.emu)
    api2.emu.add_group("3")
    expected = {
        "id": 2,
        "name": "Engineering",
        "members": ["alice", "zed", "bob"],
        "vpn_locations": ["Office"],
        "is_admin": False,
    }
    assert_json(api2.get("/api/v1/group/2"), 200, expected)
    assert api2.get("/api/v1/group/%2B2").json()["name"] == "Engineering"
    # the trap: a group named "3" is not group 3 (that is "VPN users"); "4" is the one named "3"
    assert api2.get("/api/v1/group/3").json()["name"] == "VPN users"
    assert_msg(api2.get("/api/v1/group/99"), 404, "Group 99 not found")
    assert_msg(api2.get("/api/v1/group/-5"), 404, "Group -5 not found")
    assert_msg(api2.get("/api/v1/group/007"), 404, "Group 7 not found")
    for raw, shown in [
        ("Engineering", "Engineering"),
        ("VPN%20users", "VPN users"),
        ("1.0", "1.0"),
        ("99999999999999999999", "99999999999999999999"),
        ("%2B", "+"),
    ]:
        assert_text(api2.get("/api/v1/group/" + raw), 400, f"Invalid URL: Cannot parse `{shown}` to a `i64`")


def test_group_members_include_disabled_users(api: Api) -> None:
    seed_groups(api.emu)
    members = api.get("/api/v1/group-info").json()[1]["members"]
    assert "bob" in members


# -- routing quirks (section 3) ------------------------------------------------------------------------------------


UNKNOWN_PATHS = (
    "/", "/api/v1/user/", "//api/v1/user", "/api/v1/users", "/api/v1/me/", "/api/v2/user", "/API/v1/user",
    "/api/v1/user/alice/", "/api/v1/user/alice/devices", "/api/v1/user//start_enrollment", "/api/v1/%75ser",
    "/api/v1/group-info/", "/api/v1//me",
)  # fmt: skip


def test_get_on_unknown_paths_serves_the_web_ui(api: Api) -> None:
    # http.client sends the path verbatim (urllib3 would collapse "//" and decode "%75")
    connection = http.client.HTTPConnection("127.0.0.1", api.emu.port, timeout=10)
    try:
        for path in UNKNOWN_PATHS:
            connection.request("GET", path, headers={"Authorization": f"Bearer {api.emu.admin_token}"})
            response = connection.getresponse()
            body = response.read().decode()
            assert response.status == 200, path
            assert response.getheader("content-type", "").startswith("text/html"), path
            assert response.getheader("defguard-component-version") == api.emu.component_version
            assert body.startswith("<!doctype html>")
    finally:
        connection.close()
    assert [(r.raw_path, r.endpoint, r.status) for r in api.emu.requests] == [
        (path, "web-ui", 200) for path in UNKNOWN_PATHS
    ]


def test_other_methods_on_unknown_paths_are_405(api: Api) -> None:
    methods = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS")
    for method in methods:
        response = api.request(method, "/api/v1/usr", json={})
        assert (response.status_code, response.content, response.headers["allow"]) == (405, b"", "GET,HEAD"), method
        assert "content-type" not in response.headers
    assert [record.method for record in api.emu.requests_to("method-not-allowed")] == list(methods)


@pytest.mark.parametrize(
    ("path", "allow"), [("/api/v1/user/available", "POST"), ("/api/v1/user/change_password", "PUT")]
)
def test_static_segments_win_over_usernames(api: Api, path: str, allow: str) -> None:
    api.emu.add_user("available")
    api.emu.add_user("change_password")
    response = api.get(path)
    assert (response.status_code, response.content, response.headers["allow"]) == (405, b"", allow)


def test_wrong_methods_on_known_routes(api: Api) -> None:
    seed_alice(api.emu)
    for method, path, allow in [
        ("DELETE", "/api/v1/me", "GET,HEAD"),
        ("POST", "/api/v1/health", "GET,HEAD"),
        ("GET", "/api/v1/user/alice/start_enrollment", "POST"),
        ("PUT", "/api/v1/user/alice/start_desktop", "POST"),
        ("POST", "/api/v1/user/alice", "GET,HEAD,PUT,DELETE"),
        ("POST", "/api/v1/user/alice%2Fstart_enrollment", "GET,HEAD,PUT,DELETE"),  # %2F stays in the segment
    ]:
        response = api.request(method, path)
        assert (response.status_code, response.content, response.headers["allow"]) == (405, b"", allow), path
    assert_msg(api.get("/api/v1/user/alice%2Fstart_enrollment"), 404, "user alice/start_enrollment not found")
    # methods the real server has on a route but the emulator does not implement say so
    assert api.post("/api/v1/user", json={}).status_code == 501
    assert api.emu.request_counts["not-emulated"] == 1


def test_head_behaves_like_get_without_a_body(api: Api) -> None:
    response = api.request("HEAD", "/api/v1/health")
    assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "5")
    assert api.request("HEAD", "/api/v1/me", token=None).status_code == 401


def test_invalid_utf8_in_a_path_parameter(api: Api) -> None:
    assert_text(api.get("/api/v1/user/%FF"), 400, "Invalid URL: Invalid UTF-8 in `username`")
    assert_text(
        api.post("/api/v1/user/%C3%28/start_enrollment", json={}), 400, "Invalid URL: Invalid UTF-8 in `username`"
    )
    key = "name" if api.emu.version == "1.6" else "id"
    assert_text(api.get("/api/v1/group/%FF"), 400, f"Invalid URL: Invalid UTF-8 in `{key}`")


# -- start_enrollment (section 6) ----------------------------------------------------------------------------------


def test_start_enrollment_issues_a_token(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    before = dt.datetime.now(dt.UTC)
    response = api.start("alice", {"send_enrollment_notification": False, "token_expiration_time": "48h"})
    assert (response.status_code, response.headers["content-type"]) == (201, JSON)
    body = response.json()
    assert set(body) == {"enrollment_token", "enrollment_url"}
    token = body["enrollment_token"]
    assert TOKEN_RE.fullmatch(token)
    assert body["enrollment_url"] == "http://localhost:8080/"
    assert emu.current_token("alice") == token
    assert emu.token_kind(token) == "enrollment"
    (record,) = emu.tokens_of("alice")
    assert (record.token, record.username, record.kind, record.token_type, record.used_at) == (
        token,
        "alice",
        "enrollment",
        "ENROLLMENT",
        None,
    )
    assert record.admin == "admin"
    assert before <= record.created_at <= dt.datetime.now(dt.UTC)
    assert emu.token_expiry(token) == record.created_at + 48 * HOUR
    assert emu.issued_count == 1
    assert api.get("/api/v1/user/alice").json()["user"]["enrolled"] is False
    (logged,) = emu.requests_to("start_enrollment")
    assert logged.json() == {"send_enrollment_notification": False, "token_expiration_time": "48h"}
    assert logged.status == 201


@pytest.mark.parametrize("endpoint", ["start_enrollment", "start_desktop"])
def test_check_order(api: Api, endpoint: str) -> None:
    """Each step fails on its own once the earlier ones pass (sections 2, 3 and 6)."""
    emu = api.emu
    emu.add_user("carol", enrolled=True, active=False)
    path = f"/api/v1/user/{{}}/{endpoint}"
    no_ua = {"User-Agent": SKIP_HEADER}  # None is not enough: urllib3 would add its own

    def send(user: str, data: str | None, *, ua: bool = True, ctype: bool = True, token: str = ADMIN) -> Any:
        headers: dict[str, Any] = {} if ua else dict(no_ua)
        if ctype:
            headers["Content-Type"] = JSON
        return api.post(path.format(user), data=data, headers=headers, token=token)

    assert_msg(send("carol", "{", ua=False, ctype=False, token="dg-bad"), 401, "Invalid API token")
    assert_msg(send("carol", "{", ua=False, ctype=False), 400, "Missing UserAgent header")
    assert_text(send("carol", "{", ctype=False), 415, "Expected request with `Content-Type: application/json`")
    assert send("carol", "{").status_code == 400
    assert send("carol", '{"token_expiration_time": 1}').status_code == 422
    lifetime = '"token_expiration_time": "24H"'
    if endpoint == "start_enrollment":
        body = '{"send_enrollment_notification": true, ' + lifetime + "}"
        assert_msg(send("nobody", body), 400, "Email notification is enabled, but email was not provided")
        assert_msg(send("nobody", "{" + lifetime + "}"), 404, "user nobody not found")
        assert_msg(send("carol", "{" + lifetime + "}"), 400, "Failed to parse token expiration time")
        assert_msg(send("carol", "{}"), 400, "User account is already activated")
        emu.set_user("carol", enrolled=False)
    else:
        body = '{"send_enrollment_notification": true, ' + lifetime + "}"
        assert_msg(send("nobody", body), 404, "user nobody not found")  # e-mail defaults, duration ignored
    assert_msg(send("carol", "{" + lifetime.replace("24H", "24h") + "}"), 401, "Enrollment user is disabled")
    assert emu.issued_count == 0
    emu.set_user("carol", active=True)
    assert send("carol", "{}").status_code == 201
    assert emu.issued_count == 1


CONTENT_TYPES = [
    (None, 415),
    ("text/plain", 415),
    ("application/x-www-form-urlencoded", 415),
    ("application/jsonx", 415),
    ("json", 415),
    ("application/json", 201),
    ("application/json; charset=utf-8", 201),
    ("Application/JSON", 201),
    ("application/vnd.api+json", 201),
]


def test_content_type(api: Api) -> None:
    seed_alice(api.emu)
    for content_type, status in CONTENT_TYPES:
        response = api.raw("alice", "{}", content_type)
        assert response.status_code == status, content_type
        if status == 415:
            assert_text(response, 415, "Expected request with `Content-Type: application/json`")


SYNTAX = "Failed to parse the request body as JSON: "
DATA = "Failed to deserialize the JSON body into the target type: "


BODY_REJECTIONS = [
    ("", 400, SYNTAX + "EOF while parsing a value at line 1 column 0"),
    ("   ", 400, SYNTAX + "EOF while parsing a value at line 1 column 3"),
    ("{", 400, SYNTAX + "EOF while parsing an object at line 1 column 1"),
    ("{} x", 400, SYNTAX + "trailing characters at line 1 column 4"),
    ("{'email': 1}", 400, SYNTAX + "key must be a string at line 1 column 2"),
    ('{"email": "a",}', 400, SYNTAX + "trailing comma at line 1 column 15"),
    ('{"email" "a"}', 400, SYNTAX + "expected `:` at line 1 column 10"),
    ('{"email": NaN}', 400, SYNTAX + "email: expected value at line 1 column 11"),
    (
        '{"token_expiration_time": 5}',
        422,
        DATA + "token_expiration_time: invalid type: integer `5`, expected a string at line 1 column 27",
    ),
    (
        '{"token_expiration_time": 1.5}',
        422,
        DATA + "token_expiration_time: invalid type: floating point `1.5`, expected a string at line 1 column 29",
    ),
    (
        '{"send_enrollment_notification": null}',
        422,
        DATA + "send_enrollment_notification: invalid type: null, expected a boolean at line 1 column 37",
    ),
    (
        '{"send_enrollment_notification": "yes"}',
        422,
        DATA + 'send_enrollment_notification: invalid type: string "yes", expected a boolean at line 1 column 38',
    ),
    ('{"email": 5}', 422, DATA + "email: invalid type: integer `5`, expected a string at line 1 column 11"),
    ('{"email": ["a"]}', 422, DATA + "email: invalid type: sequence, expected a string at line 1 column 10"),
    ('{"email": true}', 422, DATA + "email: invalid type: boolean `true`, expected a string at line 1 column 14"),
    ('{"email":"a","email":"b"}', 422, DATA + "duplicate field `email` at line 1 column 20"),
    ("5", 422, DATA + "invalid type: integer `5`, expected struct StartEnrollmentRequest at line 1 column 1"),
    ("null", 422, DATA + "invalid type: null, expected struct StartEnrollmentRequest at line 1 column 4"),
    ('"{}"', 422, DATA + 'invalid type: string "{}", expected struct StartEnrollmentRequest at line 1 column 4'),
    (
        "[]",
        422,
        DATA + "invalid length 1, expected struct StartEnrollmentRequest with 3 elements at line 1 column 2",
    ),
    ("[1]", 422, DATA + "0: invalid type: integer `1`, expected a boolean at line 1 column 2"),
]


def test_body_rejections_are_plain_text(api: Api) -> None:
    seed_alice(api.emu)
    for body, status, text in BODY_REJECTIONS:
        response = api.raw("alice", body)
        assert (response.status_code, response.headers["content-type"], response.text) == (status, TEXT, text), body
    assert api.emu.issued_count == 0


ACCEPTED_BODIES = [
    "{}",
    ' \n{ "email" : null , "token_expiration_time" : null }\n',
    '{"unknown": [1, {"nested": true}], "send_enrollment_notification": false, "extra": null}',
    '{"email": "alice@example.com", "note": "ignored"}',
    '[false, null, "2h"]',
]


def test_accepted_bodies(api: Api) -> None:
    seed_alice(api.emu)
    for body in ACCEPTED_BODIES:
        assert api.raw("alice", body).status_code == 201, body


def test_email_notification(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    for body in ({"send_enrollment_notification": True}, {"send_enrollment_notification": True, "email": None}):
        assert_msg(api.start("alice", body), 400, "Email notification is enabled, but email was not provided")
    token = issue(api, "alice", {"send_enrollment_notification": True, "email": "private@example.org"})
    record = emu.token(token)
    assert record is not None
    assert record.email == "private@example.org"
    assert emu.mails == [
        {"to": "private@example.org", "subject": "Defguard user enrollment", "username": "alice", "token": token}
    ]


LIFETIMES = (
    ("1d 12h", 36 * HOUR),
    ("1d12h", 36 * HOUR),
    ("24h", 24 * HOUR),
    ("1d", 24 * HOUR),
    ("2w", 14 * 24 * HOUR),
    ("1day", 24 * HOUR),
    ("2 days", 48 * HOUR),
    ("1.5h", 1.5 * HOUR),
    ("90min 30s", dt.timedelta(minutes=90, seconds=30)),
    ("1500ms", dt.timedelta(seconds=1)),  # truncated to whole seconds
    ("999ms", dt.timedelta(0)),
    ("1M", dt.timedelta(seconds=2_630_016)),
    ("100y", dt.timedelta(seconds=100 * 31_557_600)),
    ("0s", dt.timedelta(0)),
    ("0", dt.timedelta(0)),
    (None, 24 * HOUR),
)


def test_token_lifetimes(api: Api) -> None:
    seed_alice(api.emu)
    for lifetime, expected in LIFETIMES:
        token = issue(api, "alice", {"token_expiration_time": lifetime})
        record = api.emu.token(token)
        assert record is not None
        assert record.expires_at - record.created_at == expected, lifetime
    assert len(api.emu.tokens_of("alice")) == 1


def test_default_lifetime_is_configurable(api: Api) -> None:
    seed_alice(api.emu)
    token = issue(api, "alice")
    assert lifetime(api.emu, token) == 24 * HOUR
    api.emu.default_token_lifetime = 2 * HOUR
    token = issue(api, "alice")
    assert lifetime(api.emu, token) == 2 * HOUR


REJECTED_LIFETIMES = (
    "", " ", "86400", "24H", "1D", "P1D", "PT24H", "-1h", "1.", ".5h", "1.0001h", "0.5ns", "1 day ago", "1h,30m",
    "24 h r", "1e3s", "00", "18446744073709551616s", "1d 1X",
)  # fmt: skip


def test_rejected_lifetimes(api: Api) -> None:
    seed_alice(api.emu)
    first = issue(api, "alice")
    for lifetime in REJECTED_LIFETIMES:
        response = api.start("alice", {"token_expiration_time": lifetime})
        assert (response.status_code, response.json()) == (400, {"msg": "Failed to parse token expiration time"}), (
            lifetime
        )
    assert api.emu.current_token("alice") == first  # nothing deleted
    assert api.emu.issued_count == 1


def test_absurd_lifetimes(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    first = issue(api, "alice")
    # past chrono's range (~262,000 years) the handler panics: the connection drops without an answer
    with pytest.raises(requests.ConnectionError):
        api.start("alice", {"token_expiration_time": "1000000y"})
    assert emu.current_token("alice") == first
    assert emu.requests[-1].status is None
    # within chrono's range but past Python's: the expiry is clamped
    far = issue(api, "alice", {"token_expiration_time": "200000y"})
    assert emu.token_expiry(far) == dt.datetime.max.replace(tzinfo=dt.UTC)
    # u64::MAX seconds is -1 once cast to i64: a token that expired one second before it was made
    past = issue(api, "alice", {"token_expiration_time": "18446744073709551615s"})
    record = emu.token(past)
    assert record is not None
    assert record.expires_at == record.created_at - dt.timedelta(seconds=1)
    assert emu.current_token("alice") is None


def test_disabled_user(api: Api) -> None:
    api.emu.add_user("bob", active=False)
    for endpoint in ("start_enrollment", "start_desktop"):
        assert_msg(api.start("bob", endpoint=endpoint), 401, "Enrollment user is disabled")
    assert api.emu.tokens_of("bob") == []


def test_already_activated(api: Api) -> None:
    emu = api.emu
    emu.add_user("pw", enrolled=True)
    emu.add_user("oidc", openid=True)
    emu.add_user("ldap", ldap=True)
    assert_msg(api.start("pw"), 400, "User account is already activated")
    if emu.version == "1.6":  # only a password counts
        assert api.start("oidc").status_code == 201
        assert api.start("ldap").status_code == 201
    else:  # is_enrolled()
        assert_msg(api.start("oidc"), 400, "User account is already activated")
        assert_msg(api.start("ldap"), 400, "User account is already activated")
        emu.ldap_remote_enrollment_enabled = True
        assert api.start("ldap").status_code == 201


def test_reissue_while_pending(api: Api) -> None:
    """A user with a password but a pending enrollment: 1.6 refuses (password), 2.x re-issues (not enrolled)."""
    emu = api.emu
    emu.add_user("erin", enrolled=True)
    emu.set_user("erin", enrollment_pending=True)
    response = api.start("erin")
    if emu.version == "1.6":
        assert_msg(response, 400, "User account is already activated")
    else:
        assert response.status_code == 201
    # a plain pending user (no password) can be re-issued on both lines
    seed_alice(emu)
    first = issue(api, "alice")
    second = issue(api, "alice")
    assert first != second
    assert emu.current_token("alice") == second


def test_reissue_deletes_every_unused_token_but_keeps_used_ones(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    first = issue(api, "alice")
    second = issue(api, "alice")
    assert emu.token_expiry(first) is None
    assert emu.token(first) is None
    assert emu.token_kind(first) == "enrollment"  # still known to have been minted
    assert [record.token for record in emu.tokens_of("alice")] == [second]
    emu.redeem(second)
    third = issue(api, "alice", endpoint="start_desktop")  # the enrolled user gets a desktop token
    assert [record.token for record in emu.tokens_of("alice")] == [second, third]
    assert emu.tokens_of("alice")[0].used
    assert emu.current_token("alice") == third
    assert emu.issued_count == 3


def test_enrollment_and_desktop_tokens_cancel_each_other(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    enrollment = issue(api, "alice")
    desktop = issue(api, "alice", endpoint="start_desktop")
    assert emu.token(enrollment) is None
    assert emu.token_kind(desktop) == "desktop"
    assert emu.current_token("alice") == desktop
    again = issue(api, "alice")
    assert emu.token(desktop) is None
    assert emu.current_token("alice") == again


def test_redeem(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    token = issue(api, "alice")
    assert emu.user_info("alice")["enrolled"] is False
    emu.redeem(token)
    assert api.get("/api/v1/user/alice").json()["user"]["enrolled"] is True
    assert emu.current_token("alice") is None
    record = emu.token(token)
    assert record is not None
    assert record.used_at is not None
    with pytest.raises(ValueError, match="used"):
        emu.redeem(token)
    with pytest.raises(ValueError, match="invalid"):
        emu.redeem("x" * 32)
    assert_msg(api.start("alice"), 400, "User account is already activated")
    emu.add_user("fay")
    expired = issue(api, "fay", {"token_expiration_time": "0s"})
    time.sleep(0.002)
    with pytest.raises(ValueError, match="expired"):
        emu.redeem(expired)
    assert emu.current_token("fay") is None


def test_enrollment_url_is_normalised(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    for configured, returned in [
        ("http://localhost:8080", "http://localhost:8080/"),
        ("https://Enroll.Example.COM", "https://enroll.example.com/"),
        ("https://enroll.example.com:443", "https://enroll.example.com/"),
        ("https://enroll.example.com:8443", "https://enroll.example.com:8443/"),
        ("HTTPS://enroll.example.com/proxy", "https://enroll.example.com/proxy"),
        ("https://enroll.example.com/proxy/", "https://enroll.example.com/proxy/"),
        ("http://[::1]:8080", "http://[::1]:8080/"),
    ]:
        emu.enrollment_url = configured
        assert emu.enrollment_url == configured
        assert api.start("alice").json()["enrollment_url"] == returned


def test_unparseable_enrollment_url(api: Api) -> None:
    seed_alice(api.emu)
    if api.emu.version == "1.6":  # an environment variable: the server would not start
        with pytest.raises(ValueError, match="URL"):
            api.emu.enrollment_url = "enroll.example.com"
        with pytest.raises(ValueError, match="URL"):
            DefguardEmulator("1.6", enrollment_url="http://")
    else:  # a database setting: the token endpoints answer 500
        api.emu.enrollment_url = "enroll.example.com"
        assert_msg(api.start("alice"), 500, "Internal server error")
        assert_msg(api.start("alice", endpoint="start_desktop"), 500, "Internal server error")
        assert api.emu.issued_count == 0


def test_body_limit_2x(api: Api) -> None:
    seed_alice(api.emu)
    body = '{"padding": "' + "x" * (256 * 1024) + '"}'
    response = api.raw("alice", body)
    if api.emu.version == "1.6":
        assert response.status_code == 201
    else:
        assert_text(response, 413, "Failed to buffer the request body: length limit exceeded")


CLIENT_IP_HEADERS = [
    ({"X-Forwarded-For": "203.0.113.9"}, True),
    ({"X-Forwarded-For": "203.0.113.9, 10.0.0.1"}, True),
    ({"X-Forwarded-For": "2001:db8::1"}, True),
    ({"X-Forwarded-For": "not-an-ip"}, False),
    ({"X-Forwarded-For": "203.0.113.9, junk"}, False),
    ({"Forwarded": "for=203.0.113.9;proto=https"}, True),
    ({"Forwarded": 'for="[2001:db8::1]:4711"'}, True),
    ({"Forwarded": "for=unknown"}, False),
]


def test_client_ip_headers_2x(api: Api) -> None:
    seed_alice(api.emu)
    for headers, ok in CLIENT_IP_HEADERS:
        response = api.start("alice", headers=headers)
        if ok or api.emu.version == "1.6":
            assert response.status_code == 201, headers
        else:
            assert (response.status_code, response.json()) == (500, {"msg": "Internal server error"}), headers


# -- start_desktop (section 7) -------------------------------------------------------------------------------------


def test_start_desktop(api: Api) -> None:
    emu = api.emu
    emu.add_user("gil", email="gil@example.com", enrolled=True)
    token = issue(api, "gil", {"token_expiration_time": "5m"}, endpoint="start_desktop")
    assert TOKEN_RE.fullmatch(token)
    record = emu.token(token)
    assert record is not None
    assert (record.kind, record.token_type, record.email) == ("desktop", "ENROLLMENT", "gil@example.com")
    assert record.expires_at - record.created_at == 24 * HOUR  # the server default, whatever was asked
    assert emu.user_info("gil")["enrolled"] is True  # enrollment_pending untouched
    # the duration is not parsed, only type-checked
    assert api.start("gil", {"token_expiration_time": "24H"}, endpoint="start_desktop").status_code == 201
    response = api.start("gil", {"token_expiration_time": 24}, endpoint="start_desktop")
    assert response.status_code == 422
    assert api.start("gil", {"send_enrollment_notification": True}, endpoint="start_desktop").status_code == 201
    assert emu.mails[-1]["to"] == "gil@example.com"
    assert emu.mails[-1]["subject"] == "Defguard desktop client configuration"
    emu.add_user("hal")  # not enrolled: no check either
    assert api.start("hal", endpoint="start_desktop").status_code == 201
    assert emu.user_info("hal")["enrolled"] is False
    emu.default_token_lifetime = 3 * HOUR
    token = issue(api, "hal", endpoint="start_desktop")
    assert lifetime(emu, token) == 3 * HOUR


# -- ordering ------------------------------------------------------------------------------------------------------


def test_shuffled_lists_are_seeded_and_complete() -> None:
    def orders(emu: DefguardEmulator, http: requests.Session) -> tuple[list[str], list[str]]:
        headers = {"Authorization": f"Bearer {emu.admin_token}"}
        pages: list[str] = []
        page: int | None = 1
        while page is not None:
            body = http.get(f"{emu.url}/api/v1/user?per_page=7&page={page}", headers=headers, timeout=10).json()
            pages += [user["username"] for user in body["data"]]
            page = body["pagination"]["next_page"]
        groups = http.get(f"{emu.url}/api/v1/group-info", headers=headers, timeout=10).json()
        return pages, [group["name"] for group in groups]

    results = []
    for _ in range(2):
        with DefguardEmulator("2.0", shuffle=True, seed=3) as emu, requests.Session() as http:
            for number in range(30):
                emu.add_user(f"user{number:02}", groups=[f"group{number % 9}"])
            results.append(orders(emu, http))
            assert emu.groups[0]["members"] == ["admin"]  # the Python view stays ordered
    (users, groups), (users_again, groups_again) = results
    assert (users, groups) == (users_again, groups_again)  # same seed, same orders
    assert sorted(users) == sorted(["admin"] + [f"user{number:02}" for number in range(30)])  # each user once
    assert users != sorted(users)
    assert sorted(groups) == sorted(["admin"] + [f"group{number}" for number in range(9)])


def test_group_members_order_is_unspecified_with_shuffle(api16: Api) -> None:
    emu = api16.emu
    emu.shuffle = True
    for number in range(12):
        emu.add_user(f"m{number:02}", groups=["Big"])
    seen = {tuple(api16.get("/api/v1/group/Big").json()["members"]) for _ in range(5)}
    assert len(seen) > 1
    assert all(sorted(members) == [f"m{number:02}" for number in range(12)] for members in seen)
    (big,) = (group for group in api16.get("/api/v1/group-info").json() if group["name"] == "Big")
    assert big["members"] == [f"m{number:02}" for number in range(12)]  # group-info sorts them


# -- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408, 413])
def test_fault_bodies(api: Api, status: int) -> None:
    api.emu.faults = Faults(rates={status: 1.0}, seed=1)
    response = api.get("/api/v1/me")
    assert response.status_code == status
    content_type = response.headers.get("content-type", "")
    if status == 429:
        assert content_type == TEXT
        assert re.fullmatch(r"Too Many Requests! Wait for [0-2]s", response.text)
        assert response.headers["retry-after"] == response.text.split()[-1].rstrip("s")
    elif status == 500:
        assert_msg(response, 500, "Internal Server Error")
    elif status in {502, 503, 504}:
        assert content_type.startswith("text/html")
        assert f"<h1>{status} " in response.text
    elif status == 408:
        assert response.content == b""
    else:
        assert_text(response, 413, "Failed to buffer the request body: length limit exceeded")
    assert api.emu.requests[-1].status == status


def test_faults_are_reproducible(servers: dict[str, DefguardEmulator], session: requests.Session) -> None:
    def statuses(emu: DefguardEmulator) -> list[int]:
        return [session.get(emu.url + "/api/v1/health", timeout=10).status_code for _ in range(30)]

    emu = _fresh(servers, "1.6")
    emu.faults = Faults(rates={429: 0.3, 500: 0.2, 503: 0.1}, seed=7)
    first = statuses(emu)
    emu.faults = Faults(rates={429: 0.3, 500: 0.2, 503: 0.1}, seed=7)
    assert statuses(emu) == first
    assert set(first) == {200, 429, 500, 503}
    emu.faults = Faults(rates={429: 0.3, 500: 0.2, 503: 0.1}, seed=8)
    assert statuses(emu) != first
    with DefguardEmulator("2.0", faults=Faults(rates={429: 0.3, 500: 0.2, 503: 0.1}, seed=7)) as other:
        assert statuses(other) == first  # the sequence depends on the seed only
        other.reset()  # reset replays it
        assert statuses(other) == first


def test_fault_endpoint_filter(api: Api) -> None:
    seed_alice(api.emu)
    api.emu.faults = Faults(rates={503: 1.0}, endpoints={"start_enrollment"})
    assert api.get("/api/v1/health").status_code == 200
    assert api.get("/api/v1/me").status_code == 200
    assert api.start("alice").status_code == 503
    assert api.emu.issued_count == 0  # a faulted request does nothing


def test_dropped_connections(api: Api) -> None:
    seed_alice(api.emu)
    api.emu.faults = Faults(rates={DROP: 1.0}, endpoints={"start_enrollment"})
    with pytest.raises(requests.ConnectionError):
        api.start("alice")
    assert [(r.endpoint, r.status) for r in api.emu.requests] == [("start_enrollment", None)]
    assert api.emu.issued_count == 0
    assert api.get("/api/v1/health").status_code == 200


# -- bookkeeping and concurrency -----------------------------------------------------------------------------------


def test_request_log_and_counts(api: Api) -> None:
    seed_alice(api.emu)
    api.get("/api/v1/health")
    api.get("/api/v1/user/alice?x=1")
    api.start("alice", {"email": "a@example.com"})
    counts = api.emu.request_counts
    assert (counts["health"], counts["user"], counts["start_enrollment"]) == (1, 1, 1)
    (record,) = api.emu.requests_to("user")
    assert (record.method, record.raw_path, record.query, record.status) == ("GET", "/api/v1/user/alice", "x=1", 200)
    assert record.headers["authorization"] == f"Bearer {api.emu.admin_token}"
    api.emu.reset_log()
    assert api.emu.requests == []


def test_set_user_and_listing_views(api: Api) -> None:
    emu = api.emu
    seed_alice(emu)
    emu.set_user("alice", email="new@example.com", first_name="Al", active=False)
    info = api.get("/api/v1/user/alice").json()["user"]
    assert (info["email"], info["first_name"], info["is_active"]) == ("new@example.com", "Al", False)
    emu.add_user("other", email="alice@example.com")  # the old address is free again
    with pytest.raises(ValueError, match="e-mail"):
        emu.set_user("other", email="NEW@example.com")
    assert [user["username"] for user in emu.users] == ["admin", "alice", "other"]
    with pytest.raises(KeyError):
        emu.user_info("nobody")


def test_concurrent_issues(api: Api) -> None:
    emu = api.emu
    for number in range(10):
        emu.add_user(f"c{number}")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with requests.Session() as http:
                headers = {"Authorization": f"Bearer {emu.admin_token}"}
                for number in range(10):
                    response = http.post(
                        f"{emu.url}/api/v1/user/c{number % 10}/start_enrollment", json={}, headers=headers, timeout=10
                    )
                    assert response.status_code == 201
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert emu.issued_count == 40
    for number in range(10):
        assert len(emu.tokens_of(f"c{number}")) == 1  # each re-issue deleted the previous unused token
        assert emu.current_token(f"c{number}") is not None


# -- the duration parser on its own --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.2s 0.456us", (3, 200_000_456)),
        ("20 min 17 nsec ", (1_200, 17)),
        ("163µs", (0, 163_000)),
        ("1 2h", (43_200, 0)),
        ("1.5 h", (5_400, 0)),
        ("18446744073709551615s", (2**64 - 1, 0)),
    ],
)
def test_parse_humantime(text: str, expected: tuple[int, int]) -> None:
    assert parse_humantime(text) == expected


@pytest.mark.parametrize("text", ["1μs", "1s.5", "1.5.5h", "1h-", "1 h m", "100000000000000000000ns"])
def test_parse_humantime_rejects(text: str) -> None:
    with pytest.raises(HumantimeError):
        parse_humantime(text)
