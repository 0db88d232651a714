"""Conformance tests: the Defguard emulator's activity log and shared clock against Defguard's source
(``docs/reference/defguard-activity-log.md``; DefGuard/defguard at v1.6.6 and v2.0.1, each test names its files).

Every call to the endpoint goes over HTTP with plain ``requests``; the rows the token actions write are checked both
as the API returns them and as the emulator stores them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from defguard_entra.testing import Clock
from defguard_entra.testing.defguard import DefguardEmulator

VERSIONS = ("1.6", "2.0")
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
NAIVE_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?")
UA = {"User-Agent": "conformance-test"}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=VERSIONS)
def emu(request: pytest.FixtureRequest, clock: Clock) -> Iterator[DefguardEmulator]:
    with DefguardEmulator(request.param, clock=clock) as emulator:
        emulator.add_user("alice", groups=["VPN"])
        emulator.add_user("bob", groups=["VPN"])
        emulator.add_user("carol", is_admin=True, enrolled=True)
        yield emulator


def _get(emu: DefguardEmulator, query: Any = None, token: str | None = None) -> requests.Response:
    headers = {**UA, "Authorization": f"Bearer {token or emu.admin_token}"}
    return requests.get(f"{emu.url}/api/v1/activity_log", params=query, headers=headers, timeout=10)


def _start(emu: DefguardEmulator, username: str, endpoint: str = "start_enrollment") -> str:
    answer = requests.post(
        f"{emu.url}/api/v1/user/{username}/{endpoint}",
        json={"email": None, "send_enrollment_notification": False},
        headers={**UA, "Authorization": f"Bearer {emu.admin_token}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["enrollment_token"])


def _rows(emu: DefguardEmulator, query: Any = None) -> list[dict[str, Any]]:
    answer = _get(emu, query)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


# -- the endpoint --------------------------------------------------------------------------------------------------


def test_the_page_shape_and_content_type_per_line(emu: DefguardEmulator) -> None:
    """``get_activity_log_events`` returns ``PaginatedApiResponse<ApiActivityLogEvent>``: ``data`` and
    ``pagination``; rows without ``metadata``, the timestamp a chrono ``NaiveDateTime`` (UTC). 1.6's wrapper is
    ``Response::new(Body::from(json))`` (no Content-Type), 2.x's ``Json(...)`` (v1.6.6 and v2.0.1
    ``crates/defguard_core/src/handlers/activity_log.rs`` and ``handlers/pagination.rs``)."""
    _start(emu, "alice")
    answer = _get(emu)
    assert answer.status_code == 200
    if emu.version == "1.6":
        assert "Content-Type" not in answer.headers
    else:
        assert answer.headers["Content-Type"] == "application/json"
    payload = answer.json()
    assert payload["pagination"] == {
        "current_page": 1,
        "page_size": 50,
        "total_items": 1,
        "total_pages": 1,
        "next_page": None,
    }
    (row,) = payload["data"]
    assert set(row) == {"id", "timestamp", "user_id", "username", "location", "ip", "event", "module", "device"} | {
        "description"
    }
    assert NAIVE_TIMESTAMP.fullmatch(row["timestamp"])
    assert dt.datetime.fromisoformat(row["timestamp"]).replace(tzinfo=dt.UTC) - T0 < dt.timedelta(seconds=5)
    assert row["ip"] == "127.0.0.1/32"
    assert row["device"] == "conformance-test"  # the request's User-Agent (ApiRequestContext)


def test_paging_per_line(emu: DefguardEmulator) -> None:
    """1.6 pages by ``page`` only, 50 rows (``DEFAULT_API_PAGE_SIZE``, ``per_page`` is not a field); 2.x takes
    ``per_page`` clamped to 1-100, default 50 (v1.6.6 ``handlers/activity_log.rs`` 158-160 and
    ``handlers/mod.rs`` 46; v2.0.1 ``handlers/pagination.rs``)."""
    for _ in range(60):
        emu.mint_as("carol", "alice")
    first = _get(emu, {"per_page": "100"}).json()
    second = _get(emu, {"page": "2", "per_page": "100"}).json()
    if emu.version == "1.6":
        assert (len(first["data"]), first["pagination"]["next_page"], first["pagination"]["total_pages"]) == (50, 2, 2)
        assert (len(second["data"]), second["pagination"]["next_page"]) == (10, None)
    else:
        assert (len(first["data"]), first["pagination"]["next_page"], first["pagination"]["page_size"]) == (
            60,
            None,
            100,
        )
        assert second["data"] == []
        assert _get(emu, {"per_page": "0"}).json()["pagination"]["page_size"] == 1
        assert _get(emu, {"per_page": "1000"}).json()["pagination"]["page_size"] == 100
    assert _get(emu, {"page": "x"}).status_code == 400
    assert _get(emu, [("page", "1"), ("page", "2")]).status_code == 400


def test_default_order_is_newest_first_and_asc_is_oldest_first(emu: DefguardEmulator, clock: Clock) -> None:
    """``SortParams`` default ``timestamp`` ``desc``; 2.x adds ``, id <order>`` (v2.0.1 ``apply_sorting``; v1.6.6
    has no tie-breaker)."""
    for _ in range(3):
        emu.mint_as("carol", "alice")
        clock.advance(minutes=1)
    ids = [row["id"] for row in _rows(emu)]
    assert ids == [3, 2, 1]
    assert [row["id"] for row in _rows(emu, {"sort_by": "timestamp", "sort_order": "asc"})] == [1, 2, 3]
    assert _get(emu, {"sort_by": "nonsense"}).status_code == 400


def test_filters_by_time_event_username_module_and_search(emu: DefguardEmulator, clock: Clock) -> None:
    """``FilterParams``: ``from``/``until`` (``DateTime<Utc>``, inclusive), ``username``, ``event`` and ``module``
    (repeatable, ``= ANY``), ``search`` (``ILIKE`` over username, location, module, event, device and description)
    (v1.6.6 and v2.0.1 ``handlers/activity_log.rs`` ``apply_filters``)."""
    _start(emu, "alice")
    clock.advance(hours=2)
    later = clock()
    _start(emu, "bob", "start_desktop")
    assert [row["description"] for row in _rows(emu, {"from": later.isoformat()})] == [
        "Added client configuration token for user bob"
    ]
    assert len(_rows(emu, {"until": later.isoformat()})) == 1
    both = [("event", "enrollment_token_added"), ("event", "client_configuration_token_added")]
    assert len(_rows(emu, both)) == 2
    assert len(_rows(emu, {"event": "enrollment_started"})) == 0
    assert len(_rows(emu, {"module": "defguard"})) == 1  # the desktop token's row is in the defguard module
    assert len(_rows(emu, {"username": "admin"})) == 2
    assert len(_rows(emu, {"search": "user ALICE"})) == 1
    assert _get(emu, {"module": "nonsense"}).status_code == 400
    naive = _get(emu, {"from": "2026-03-02T09:00:00"})  # no offset: DateTime<Utc> refuses it
    assert naive.status_code == 400
    assert naive.text.startswith("Failed to deserialize query string")


def test_refusals_come_from_the_api_token_gate(emu: DefguardEmulator) -> None:
    """No licence check of its own (the route is in the core router, not the enterprise ones: v1.6.6
    ``crates/defguard_core/src/lib.rs`` 489, v2.0.1 406); API tokens work for admins only
    (``crates/defguard_core/src/auth/mod.rs``)."""
    emu.add_user("dave", enrolled=True)
    answer = _get(emu, token=emu.add_api_token("dave"))
    assert (answer.status_code, answer.json()) == (403, {"msg": "Token authentication is not allowed for normal users"})


def test_a_lapsed_licence_closes_it_on_2x() -> None:
    """2.x honours API tokens only up to 14 days past the licence's end (v2.0.1
    ``crates/defguard_core/src/enterprise/license.rs`` 403-411): the endpoint answers 401 like every other."""
    with DefguardEmulator("2.0", license_overdue_days=30) as emu:
        answer = _get(emu)
    assert (answer.status_code, answer.json()) == (401, {"msg": "Session is required"})


def test_a_server_without_the_endpoint_answers_with_its_web_ui() -> None:
    """An unknown ``GET`` path is the web UI's catch-all (``GET /{*path}``), so a server without the route answers
    200 ``text/html`` (``docs/reference/defguard-api.md``; which old versions lack the route: not verified)."""
    with DefguardEmulator("1.6", activity_log_endpoint=False) as emu:
        answer = _get(emu)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")


# -- the rows each token action writes -----------------------------------------------------------------------------


def test_a_token_minted_by_the_api_is_a_row_under_the_api_tokens_owner(emu: DefguardEmulator) -> None:
    """``start_enrollment`` emits ``EnrollmentTokenAdded { user }`` → ``enrollment_token_added`` in module
    ``enrollment``; ``start_remote_desktop_configuration`` emits ``ClientConfigurationTokenAdded { user }`` →
    ``client_configuration_token_added`` in module ``defguard``; the context is the session's user, the description
    ``Added … token for user {username}`` (v1.6.6 ``handlers/user.rs`` 471 and 575, v2.0.1 517 and 621;
    ``crates/defguard_event_router/src/handlers/api.rs``; ``crates/defguard_event_logger/src/description.rs``;
    ``handlers/mod.rs`` ``ApiRequestContext``)."""
    _start(emu, "alice")
    _start(emu, "bob", "start_desktop")
    rows = _rows(emu, {"sort_order": "asc"})
    summary = [(r["username"], r["user_id"], r["event"], r["module"], r["description"]) for r in rows]
    admin_id = emu.user_info("admin")["id"]
    assert summary == [
        ("admin", admin_id, "enrollment_token_added", "enrollment", "Added enrollment token for user alice"),
        (
            "admin",
            admin_id,
            "client_configuration_token_added",
            "defguard",
            "Added client configuration token for user bob",
        ),
    ]
    stored = emu.activity_log()
    assert stored[0]["metadata"]["user"]["username"] == "alice"  # EnrollmentTokenMetadata { user }, not in the API


def test_another_admin_minting_is_a_row_under_that_admin_and_deletes_unused_tokens(emu: DefguardEmulator) -> None:
    """An admin in the UI runs the same handler (``start_user_enrollment`` → ``clear_unused_enrollment_tokens``,
    v2.0.1 ``crates/defguard_core/src/enrollment_management.rs`` 37 and 177; v1.6.6
    ``db/models/enrollment.rs`` 432 and 614): the member's stored token dies, the row is under the admin."""
    first = _start(emu, "alice")
    second = emu.mint_as("carol", "alice")
    assert not emu.token_accepted(first)
    assert emu.token_accepted(second)
    newest = _rows(emu)[0]
    assert (newest["username"], newest["description"]) == ("carol", "Added enrollment token for user alice")
    desktop = emu.mint_as("carol", "bob", desktop=True)
    assert emu.token_kind(desktop) == "desktop"
    assert _rows(emu)[0]["event"] == "client_configuration_token_added"


def test_sso_self_activation_mints_deletes_and_logs_nothing(emu: DefguardEmulator) -> None:
    """The proxy's OpenID ``AuthCallback``: ``user_from_claims``, ``clear_unused_enrollment_tokens``, a new
    ``Token`` saved, and no event emitted (v1.6.6 ``crates/defguard_core/src/grpc/mod.rs`` 447-500; v2.0.1
    ``crates/defguard_proxy_manager/src/handler.rs`` 846-900)."""
    stored = _start(emu, "alice")
    before = len(emu.activity_log())
    fresh = emu.sso_activate("alice")
    assert len(emu.activity_log()) == before
    assert not emu.token_accepted(stored)
    assert emu.token_accepted(fresh)
    emu.set_user("bob", active=False)
    with pytest.raises(ValueError, match="disabled"):
        emu.sso_activate("bob")


def test_opening_a_token_starts_its_session_and_logs_under_the_member(emu: DefguardEmulator, clock: Clock) -> None:
    """The enrollment start: ``start_session`` sets ``used_at`` (a later mint no longer deletes the token; after
    ``enrollment_session_timeout``, 10 minutes, it is used), then ``EnrollmentStarted`` under the token's user,
    ``User started enrollment process`` (v1.6.6 ``grpc/enrollment.rs`` 134-300 and ``db/models/enrollment.rs``
    168-202; v2.0.1 ``crates/defguard_proxy_manager/src/servers/enrollment.rs`` 150-290 and
    ``db/models/enrollment.rs`` 163-197; ``description.rs``)."""
    token = emu.mint_as("carol", "alice")
    emu.open_enrollment(token)
    record = emu.token(token)
    assert record is not None
    assert record.used_at is not None
    assert abs(record.used_at - emu.activity_log()[-1]["timestamp"]) < dt.timedelta(seconds=1)
    assert not emu.token_accepted(token)
    newest = _rows(emu)[0]
    assert (newest["username"], newest["event"], newest["module"], newest["description"]) == (
        "alice",
        "enrollment_started",
        "enrollment",
        "User started enrollment process",
    )
    emu.open_enrollment(token)  # again within the session: another row
    assert [r["event"] for r in emu.activity_log()].count("enrollment_started") == 2
    emu.mint_as("carol", "bob")
    assert emu.token(token) is not None  # used tokens survive delete_unused_user_tokens
    clock.advance(minutes=11)
    with pytest.raises(ValueError, match="already used"):
        emu.open_enrollment(token)


def test_redeem_completes_under_the_member(emu: DefguardEmulator) -> None:
    """``activate_user`` emits ``EnrollmentCompleted`` under the token's user (v1.6.6 ``grpc/enrollment.rs`` 487,
    v2.0.1 ``servers/enrollment.rs`` 513); with a device, ``EnrollmentDeviceAdded`` (``create_device``, 877);
    a token opened first completes in the same session."""
    token = emu.mint_as("carol", "alice")
    emu.open_enrollment(token)
    emu.redeem(token)
    events = [(r["username"], r["event"]) for r in emu.activity_log()]
    assert events[-3:] == [
        ("alice", "enrollment_started"),
        ("alice", "enrollment_completed"),
        ("alice", "enrollment_device_added"),
    ]
    assert len(emu.devices_of("alice")) == 1
    with pytest.raises(ValueError, match="already used"):
        emu.redeem(token)
    desktop = _start(emu, "alice", "start_desktop")
    emu.redeem(desktop, device=False)  # a desktop token completes nothing: only the start
    assert emu.activity_log()[-1]["event"] == "enrollment_started"


# -- the shared clock ----------------------------------------------------------------------------------------------


def test_advancing_the_clock_expires_a_token(emu: DefguardEmulator, clock: Clock) -> None:
    """Tokens expire at ``created_at + lifetime`` by the server's now (``Token::is_expired``: v1.6.6
    ``crates/defguard_core/src/db/models/enrollment.rs`` 143, v2.0.1 138); every "now" of the emulator is its clock:
    expiry, ``created_at``, devices and log rows."""
    token = emu.mint_as("carol", "alice")
    record = emu.token(token)
    assert record is not None
    assert record.expires_at - record.created_at == dt.timedelta(hours=24)
    assert abs(record.created_at - T0) < dt.timedelta(seconds=5)
    clock.advance(hours=23)
    assert emu.token_accepted(token)
    clock.advance(days=1)
    assert not emu.token_accepted(token)
    assert emu.current_token("alice") is None
    with pytest.raises(ValueError, match="expired"):
        emu.redeem(token)
    emu.add_device("bob")
    assert emu.devices_of("bob")[0].created - T0 > dt.timedelta(hours=47)
