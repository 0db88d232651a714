"""Conformance tests: the Defguard emulator in the states real deployments are in.

Each test names the Defguard source it follows (DefGuard/defguard at v1.6.6 and v2.0.1; paths under ``crates/``);
``docs/reference/defguard-deployments.md`` collects them. Every call goes over HTTP with plain ``requests``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from defguard_entra.testing import DefguardEmulator

JSON = "application/json"


@pytest.fixture(params=["1.6", "2.0"])
def emu(request: pytest.FixtureRequest) -> Iterator[DefguardEmulator]:
    with DefguardEmulator(request.param) as emulator:
        yield emulator


def _get(emu: DefguardEmulator, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or emu.admin_token}"}
    return requests.get(emu.url + path, headers=headers, timeout=10)


def _start(emu: DefguardEmulator, username: str, endpoint: str = "start_enrollment") -> requests.Response:
    return requests.post(
        f"{emu.url}/api/v1/user/{username}/{endpoint}",
        json={"send_enrollment_notification": False},
        headers={"Authorization": f"Bearer {emu.admin_token}"},
        timeout=10,
    )


def _users(emu: DefguardEmulator) -> dict[str, dict[str, Any]]:
    response = _get(emu, "/api/v1/user?per_page=100")
    payload = response.json()
    rows = payload if isinstance(payload, list) else payload["data"]
    return {row["username"]: row for row in rows}


# -- users created by directory sync and by SSO --------------------------------------------------------------------


def test_prefetched_user_looks_enrolled_without_password_or_device(emu: DefguardEmulator) -> None:
    """directory_sync/mod.rs (prefetch: username = local part, password None, openid_sub = the directory id) and
    ``User::is_enrolled`` (1.6.6 defguard_core/src/db/models/user.rs 255-258; 2.0.1 defguard_common/.../user.rs
    290-308): such a user is ``enrolled: true`` from day one."""
    username = emu.prefetch_user("6f1c0e6a-entra-object-id", "dana@example.com", first_name="Dana")
    assert username == "dana"
    row = _users(emu)["dana"]
    assert row["enrolled"] is True
    if emu.version == "2.0":
        assert row["devices"] == []
    assert emu.devices_of("dana") == []


def test_start_enrollment_for_a_synced_user_by_line(emu: DefguardEmulator) -> None:
    """1.6.6 db/models/enrollment.rs 414-421 refuses only a user with a password; 2.0.1
    enrollment_management.rs 26-29 refuses when ``is_enrolled()``. start_desktop has no such check (both)."""
    emu.prefetch_user("entra-id-1", "dana@example.com")
    response = _start(emu, "dana")
    if emu.version == "1.6":
        assert response.status_code == 201
    else:
        assert (response.status_code, response.json()) == (400, {"msg": "User account is already activated"})
        assert emu.tokens_of("dana") == []  # refused before step 10: nothing deleted, nothing created
    desktop = _start(emu, "dana", "start_desktop")
    assert desktop.status_code == 201
    assert emu.token_kind(desktop.json()["enrollment_token"]) == "desktop"


def test_password_user_without_device_is_refused_enrollment_on_both_lines(emu: DefguardEmulator) -> None:
    """A password means activated on both lines (1.6.6 enrollment.rs 414-421; 2.0.1 is_enrolled)."""
    emu.add_user("peggy", enrolled=True)
    response = _start(emu, "peggy")
    assert (response.status_code, response.json()) == (400, {"msg": "User account is already activated"})


def test_sso_sign_in_merges_by_email_and_sets_the_subject(emu: DefguardEmulator) -> None:
    """enterprise/handlers/openid_login.rs ``user_from_claims``: a user matched by e-mail gains ``openid_sub``."""
    emu.add_user("erin")
    assert _users(emu)["erin"]["enrolled"] is False
    emu.sso_sign_in("erin")
    assert _users(emu)["erin"]["enrolled"] is True


# -- devices ---------------------------------------------------------------------------------------------------------


def test_device_list_names_the_owner_by_user_id_only(emu: DefguardEmulator) -> None:
    """``GET /api/v1/device`` (1.6.6 handlers/wireguard.rs 1266; 2.0.1 1261): every device, network ones too, not
    paginated; fields of defguard_core/src/db/models/device.rs; the owner is ``user_id``."""
    emu.add_user("bob", devices=2)
    emu.add_device("admin", "edge-router", device_type="network")
    response = _get(emu, "/api/v1/device")
    assert (response.status_code, response.headers["content-type"]) == (200, JSON)
    rows = response.json()
    assert len(rows) == 3
    assert set(rows[0]) == {
        "id",
        "name",
        "wireguard_pubkey",
        "user_id",
        "created",
        "device_type",
        "description",
        "configured",
    }
    bob_id = _users(emu)["bob"]["id"]
    assert sorted(r["device_type"] for r in rows if r["user_id"] == bob_id) == ["user", "user"]
    assert [r["device_type"] for r in rows if r["name"] == "edge-router"] == ["network"]
    assert "T" in rows[0]["created"]
    assert not rows[0]["created"].endswith(("Z", "+00:00"))  # a naive UTC timestamp


def test_user_list_carries_devices_on_2x_only(emu: DefguardEmulator) -> None:
    """2.0.1 defguard_common/src/types/user_info.rs: ``UserInfo.devices`` (user devices, with ``networks``);
    1.6.6 db/models/mod.rs has no such field."""
    emu.add_user("bob", devices=1)
    emu.add_device("bob", "router", device_type="network")
    row = _users(emu)["bob"]
    if emu.version == "1.6":
        assert "devices" not in row
    else:
        assert [d["device_type"] for d in row["devices"]] == ["user"]
        assert row["devices"][0]["networks"] == []


def test_user_details_carry_devices_per_line(emu: DefguardEmulator) -> None:
    """``GET /api/v1/user/{u}``: 1.6.6 ``{user, devices, …}``; 2.0.1 devices inside ``user``."""
    emu.add_user("bob", devices=1)
    details = _get(emu, "/api/v1/user/bob").json()
    devices = details["devices"] if emu.version == "1.6" else details["user"]["devices"]
    assert len(devices) == 1


def test_redeeming_with_the_client_adds_a_device(emu: DefguardEmulator) -> None:
    """The desktop client finishes enrollment by creating its device (DefGuard/client enrollment flow)."""
    emu.add_user("heidi")
    token = _start(emu, "heidi").json()["enrollment_token"]
    emu.redeem(token)
    assert len(emu.devices_of("heidi")) == 1
    emu.add_user("ivan")
    emu.redeem(_start(emu, "ivan").json()["enrollment_token"], device=False)
    assert emu.devices_of("ivan") == []


# -- what the deployment says about itself ------------------------------------------------------------------------


def test_app_info_reports_the_openid_provider(emu: DefguardEmulator) -> None:
    """handlers/app_info.rs: ``external_openid_enabled`` (a provider is configured), ``ldap_info``; 1.6.6 also
    ``license_info``. Any session may read it, an admin's API token included."""
    info = _get(emu, "/api/v1/info").json()
    assert info["external_openid_enabled"] is False
    assert info["ldap_info"] == {"enabled": False, "ad": False}
    assert ("license_info" in info) is (emu.version == "1.6")
    emu.openid_provider = True
    assert _get(emu, "/api/v1/info").json()["external_openid_enabled"] is True


def test_default_enrollment_url_is_localhost(emu: DefguardEmulator) -> None:
    """1.6.6 defguard_common/src/config.rs 106 (``DEFGUARD_ENROLLMENT_URL`` default); 2.0.1 settings migration
    default of ``public_proxy_url``: ``http://localhost:8080``."""
    if emu.version == "1.6":
        config = _get(emu, "/api/v1/support/configuration").json()["config"]
        assert config["enrollment_url"] == "http://localhost:8080/"  # serialised by the url crate
        assert "enrollment_token_timeout" not in config  # #[serde(skip_serializing)]
    else:
        settings = _get(emu, "/api/v1/settings").json()
        assert settings["public_proxy_url"] == "http://localhost:8080"  # stored as typed
        assert settings["enrollment_token_timeout_hours"] == 24
    assert _start(emu, "admin", "start_desktop").json()["enrollment_url"] == "http://localhost:8080/"


def test_settings_routes_per_line(emu: DefguardEmulator) -> None:
    """2.0.1 lib.rs 380 ``GET /settings`` carries the proxy URL; 1.6.6 keeps it in the environment, read through
    ``GET /support/configuration`` (lib.rs 475), which this emulator serves on 1.6 only."""
    emu.enrollment_url = "https://enroll.example.com"
    emu.default_token_lifetime = dt.timedelta(hours=48)
    if emu.version == "2.0":
        settings = _get(emu, "/api/v1/settings").json()
        assert (settings["public_proxy_url"], settings["enrollment_token_timeout_hours"]) == (
            "https://enroll.example.com",
            48,
        )
        assert _get(emu, "/api/v1/support/configuration").status_code == 501  # exists, not emulated
    else:
        config = _get(emu, "/api/v1/support/configuration").json()["config"]
        assert config["enrollment_url"] == "https://enroll.example.com/"
        assert _get(emu, "/api/v1/settings").status_code == 501


def test_settings_need_an_admin(emu: DefguardEmulator) -> None:
    emu.add_user("eve")
    token = emu.add_api_token("eve")
    path = "/api/v1/settings" if emu.version == "2.0" else "/api/v1/support/configuration"
    assert _get(emu, path, token).status_code == 403


# -- users disabled, licenses lapsing ------------------------------------------------------------------------------


def test_disabled_user_gets_401_at_mint_time(emu: DefguardEmulator) -> None:
    """1.6.6 enrollment.rs 424-430; 2.0.1 enrollment_management.rs 31-35: 401 ``Enrollment user is disabled``."""
    emu.add_user("carol")
    emu.disable_user("carol", by="directory_sync")
    for endpoint in ("start_enrollment", "start_desktop"):
        response = _start(emu, "carol", endpoint)
        assert (response.status_code, response.json()) == (401, {"msg": "Enrollment user is disabled"})


def test_disabling_an_admin_through_the_api_deletes_their_api_tokens(emu: DefguardEmulator) -> None:
    """1.6.6 handlers/user.rs 749-755, 2.0.1 781-787: ``PUT /user/{u}`` with ``is_active: false`` deletes the API
    tokens; re-enabling does not bring them back. Directory sync only flips the flag."""
    emu.add_user("ops", is_admin=True)
    token = emu.add_api_token("ops")
    emu.disable_user("ops")
    emu.set_user("ops", active=True)
    assert (_get(emu, "/api/v1/me", token).json(), _get(emu, "/api/v1/me", token).status_code) == (
        {"msg": "Invalid API token"},
        401,
    )
    emu.add_user("ops2", is_admin=True)
    token2 = emu.add_api_token("ops2")
    emu.disable_user("ops2", by="directory_sync")
    assert _get(emu, "/api/v1/me", token2).status_code == 401  # an inactive owner's token
    emu.set_user("ops2", active=True)
    assert _get(emu, "/api/v1/me", token2).status_code == 200


@pytest.mark.parametrize(("overdue", "open_gate"), [(None, True), (14, True), (15, False)])
def test_2x_license_gate_closes_after_14_days_overdue(overdue: float | None, *, open_gate: bool) -> None:
    """2.0.1 enterprise/license.rs 403-411: a subscription license is honoured up to 14 days past its end."""
    with DefguardEmulator("2.0", license_overdue_days=overdue) as emu:
        response = _get(emu, "/api/v1/me")
        if open_gate:
            assert response.status_code == 200
        else:
            assert (response.status_code, response.json()) == (401, {"msg": "Session is required"})


# -- unordered pages -----------------------------------------------------------------------------------------------


def test_2x_pages_can_skip_a_user_when_users_change_between_reads() -> None:
    """2.0.1 handlers/user.rs ``list_users``: ``LIMIT $1 OFFSET $2`` with no ORDER BY, so a row updated between two
    page reads moves in the scan; a later page can then skip a user while the total stays right."""
    with DefguardEmulator("2.0") as emu:
        for i in range(9):
            emu.add_user(f"user{i}")
        first = _get(emu, "/api/v1/user?per_page=5").json()
        seen = [row["username"] for row in first["data"]]
        emu.sso_sign_in(seen[1])  # an UPDATE of a row already read: it moves to the end
        second = _get(emu, "/api/v1/user?page=2&per_page=5").json()
        seen += [row["username"] for row in second["data"]]
        assert first["pagination"]["total_items"] == 10
        assert len(set(seen)) == 9  # one user was skipped, one read twice
        assert len(seen) == 10


def test_page_churn_is_seeded_and_bounded() -> None:
    def read(seed: int) -> list[str]:
        with DefguardEmulator("2.0", page_churn=0.5, seed=seed) as emu:
            for i in range(30):
                emu.add_user(f"user{i:02d}")
            names: list[str] = []
            for page in range(1, 5):
                names += [r["username"] for r in _get(emu, f"/api/v1/user?page={page}&per_page=10").json()["data"]]
            return names

    assert read(3) == read(3)
    assert len(read(3)) == 31


# -- the optional rate limiter (2.x) -------------------------------------------------------------------------------


def test_rate_limiter_follows_tower_governor() -> None:
    """v2.0.1 ``crates/defguard_core/src/lib.rs`` 640-676 (tower_governor 0.8, ``SmartIpKeyExtractor``, every
    ``/api/v1`` route) and tower_governor ``src/errors.rs``: after ``burst`` requests the 429 body is
    ``Too Many Requests! Wait for {n}s`` with ``n`` truncated to whole seconds, in ``x-ratelimit-after`` and
    ``retry-after`` too, and no Content-Type; one bucket per client IP, reads included."""
    from defguard_entra.testing import RateLimit

    with DefguardEmulator("2.0", rate_limit=RateLimit(period=0.5, burst=3)) as emu:
        answers = [_get(emu, "/api/v1/me") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        refused = answers[-1]
        assert refused.text == "Too Many Requests! Wait for 0s"  # 0.5 s truncated
        assert refused.headers["x-ratelimit-after"] == refused.headers["retry-after"] == "0"
        assert "content-type" not in {k.lower() for k in refused.headers}
        other = requests.get(
            emu.url + "/api/v1/me",
            headers={"Authorization": f"Bearer {emu.admin_token}", "X-Forwarded-For": "198.51.100.7"},
            timeout=10,
        )
        assert other.status_code == 200  # another client IP, another bucket
        assert requests.get(emu.url + "/api/v1/health", timeout=10).status_code == 429  # unauthenticated too
        time.sleep(0.55)
        assert _get(emu, "/api/v1/me").status_code == 200  # one request back per period
    with DefguardEmulator("2.0", rate_limit=RateLimit(period=2.5, burst=1)) as emu:
        assert _get(emu, "/api/v1/me").status_code == 200
        assert _get(emu, "/api/v1/me").headers["retry-after"] == "2"


# -- load: the database pool, a proxy's connection limit ------------------------------------------------------------


def test_requests_beyond_the_database_pool_wait_their_turn() -> None:
    """v2.0.1 ``crates/defguard_common/src/db/mod.rs`` ``setup_pool``: ``PgPoolOptions::new().max_connections(5)``;
    ``handlers/user.rs`` ``start_enrollment`` (439-475) runs in a transaction on that pool, so a request that finds
    the five connections in use waits (sqlx's ``acquire``) and answers later. ``Load(workers=5, work=…)``: ten
    requests at once, each worked on for 0.2 s: five answer after one turn, five after two."""
    from concurrent.futures import ThreadPoolExecutor

    from defguard_entra.testing import Load

    load = Load(workers=5, work=0.2)
    with DefguardEmulator("2.0", load=load) as emu:
        for i in range(10):
            emu.add_user(f"u{i}", email=f"u{i}@example.com")

        def timed(i: int) -> tuple[int, float]:
            started = time.monotonic()
            return _start(emu, f"u{i}").status_code, time.monotonic() - started

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(timed, range(10)))
    assert [status for status, _ in answers] == [201] * 10
    times = sorted(seconds for _, seconds in answers)
    assert max(times[:5]) < 0.35
    assert min(times[5:]) >= 0.35
    assert load.peak == 10
    assert sorted(load.waits)[5] >= 0.15  # the second five waited a turn for a connection


def test_a_proxy_connection_limit_answers_503() -> None:
    """nginx's ``ngx_http_limit_conn_module`` (nginx.org documentation): beyond ``limit_conn`` requests being
    processed for one key, "the server will return the error in reply to a request", ``limit_conn_status`` 503 by
    default, with nginx's HTML error page; the refused request is not processed (nor counted in flight)."""
    from concurrent.futures import ThreadPoolExecutor

    from defguard_entra.testing import Load

    load = Load(limit_conn=2, work=0.3)
    with DefguardEmulator("2.0", load=load) as emu:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _get(emu, "/api/v1/me"), range(3)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 503]
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers["content-type"].startswith("text/html")
        assert "503 Service Temporarily Unavailable" in refused.text
        assert load.refused == 1
        assert load.peak == 2
        assert emu.request_counts["limit_conn"] == 1
        assert _get(emu, "/api/v1/me").status_code == 200  # one at a time is within the limit


@pytest.mark.parametrize("kind", ["defguard", "graph"])
def test_a_silent_emulator_accepts_and_never_answers(kind: str) -> None:
    """A hung server (issue 14: "accepts connections and never answers"): the TCP connection is accepted and the
    request read, and no byte comes back, so the client's read timeout is what ends the wait (requests
    documentation, "Timeouts": the read timeout is "the number of seconds the client will wait for the server to
    send a response"; httpx documentation, "Timeouts": ``ReadTimeout``). ``go_silent(after=n)`` answers n more
    requests first, so a test can make a server stop answering mid-run; ``resume`` answers again."""
    import socket

    from defguard_entra.testing import GraphEmulator

    emulator: Any = DefguardEmulator("2.0") if kind == "defguard" else GraphEmulator()
    with emulator:
        path = "/api/v1/health" if kind == "defguard" else "/v1.0/users"
        emulator.go_silent(after=1)
        assert requests.get(emulator.base_url + path, timeout=5).status_code in {200, 401}
        assert emulator.silent
        with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            assert emulator.requests_to("held")
            emulator.resume()
            sock.settimeout(5)
            assert sock.recv(1) == b""  # the held request is dropped, not answered
        assert requests.get(emulator.base_url + path, timeout=5).status_code in {200, 401}
