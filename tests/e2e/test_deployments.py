"""The documented Entra flow as real deployments run it, end to end on both API lines.

Directory sync with *Prefetch users* creates users with an OpenID subject and no password, whom Defguard lists
``enrolled`` (``User::is_enrolled``, v1.6.6 and v2.0.1); "enrolled" in practice means "has a device". These tests
check afterwards that Entra holds exactly the token Defguard considers valid.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests
from requests.adapters import HTTPAdapter

from defguard_entra import DefguardClient, ProvisioningService, Settings, Status
from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from defguard_entra.testing._server import Faults
from helpers import run_cli

GROUP = "DgProvisioning"


@attrs.define
class Deployment:
    defguard: DefguardEmulator
    graph: GraphEmulator
    ids: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return environment(self.defguard, self.graph)

    def stored(self, name: str) -> dict[str, Any]:
        return dict(self.graph.attributes(self.ids[name]).get("Defguard", {}))


def _seed(defguard: DefguardEmulator, graph: GraphEmulator, synced: int = 3) -> Deployment:
    """A prefetched group: ``synced`` directory-synced users without a device, one with a device (bob), one with a
    password and no device (peggy)."""
    graph.define_attribute_set("Defguard")
    ids: dict[str, str] = {}
    names = []
    for i in range(synced):
        email = f"user{i}@example.com"
        ids[f"user{i}"] = graph.add_user(email, mail=email)
        names.append(defguard.prefetch_user(ids[f"user{i}"], email))
    ids["bob"] = graph.add_user("bob@example.com", mail="bob@example.com")
    defguard.add_user("bob", openid_sub=ids["bob"], devices=1)
    ids["peggy"] = graph.add_user("peggy@example.com", mail="peggy@example.com")
    defguard.add_user("peggy", enrolled=True)
    defguard.add_group(GROUP, [*names, "bob", "peggy"])
    return Deployment(defguard, graph, ids)


@pytest.fixture
def deployment(defguard: DefguardEmulator, graph: GraphEmulator) -> Deployment:
    return _seed(defguard, graph)


def _report(path: Path) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in json.loads(path.read_text())["users"]}


def _assert_holds_valid_token(d: Deployment, name: str) -> None:
    token = d.defguard.current_token(name)
    assert token is not None, name
    assert d.stored(name) == {"EnrollmentToken": token, "EnrollmentUrl": "https://enroll.example.com/"}, name


def test_prefetched_users_without_a_device_are_provisioned(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", GROUP, "--enrollment-token-expiration-time", "2d", "--report", str(path)], d.env)
    assert result.code == 0, result.stderr
    users = _report(path)
    synced_kind = "enrollment" if d.defguard.version == "1.6" else "desktop"
    for name in ("user0", "user1", "user2"):
        assert (users[name]["status"], users[name]["token_kind"]) == ("provisioned", synced_kind)
        _assert_holds_valid_token(d, name)
        assert d.defguard.token_kind(d.defguard.current_token(name) or "") == synced_kind
    assert (users["peggy"]["status"], users["peggy"]["token_kind"]) == ("provisioned", "desktop")
    _assert_holds_valid_token(d, "peggy")
    assert users["bob"]["status"] == "already_enrolled"
    assert users["bob"]["devices"] == 1
    assert d.stored("bob") == {}
    assert d.defguard.tokens_of("bob") == []
    assert "desktop-activation token" in result.stdout  # the lifetime note, in the summary too
    notes = json.loads(path.read_text())["notes"]
    assert any("server's default lifetime" in n for n in notes)
    if d.defguard.version == "1.6":  # a password is not visible in 1.6's list: tried, refused, then start_desktop
        refused = [r for r in d.defguard.requests_to("start_enrollment") if r.status == 400]
        assert [r.raw_path for r in refused] == ["/api/v1/user/peggy/start_enrollment"]
    else:  # 2.x: users flagged enrolled go straight to start_desktop
        assert d.defguard.requests_to("start_enrollment") == []


def test_default_clear_keeps_the_tokens_of_members_without_a_device(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    assert run_cli(["--group-name", GROUP], d.env).code == 0
    token = d.defguard.current_token("user0")
    assert token is not None
    d.defguard.redeem(token)  # user0 installs the client: a device now
    path = tmp_path / "clear.json"
    result = run_cli(["clear", "--group-name", GROUP, "--report", str(path)], d.env)
    assert result.code == 0, result.stderr
    users = _report(path)
    assert users["user0"]["status"] == "cleared"
    assert d.stored("user0") == {}
    for name in ("user1", "user2", "peggy"):
        assert users[name]["status"] == "kept"
        _assert_holds_valid_token(d, name)


def test_status_shows_devices_and_what_provision_would_mint(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    path = tmp_path / "status.json"
    result = run_cli(["status", "--group-name", GROUP, "--report", str(path)], d.env)
    assert result.code == 0, result.stderr
    users = _report(path)
    synced_kind = "enrollment" if d.defguard.version == "1.6" else "desktop"
    assert {n: (u["devices"], u["would_mint"]) for n, u in users.items()} == {
        "user0": (0, synced_kind),
        "user1": (0, synced_kind),
        "user2": (0, synced_kind),
        "bob": (1, None),
        # 1.6 cannot show the password: the first try is start_enrollment, then start_desktop
        "peggy": (0, "enrollment" if d.defguard.version == "1.6" else "desktop"),
    }
    assert "would mint" in result.stdout
    assert d.defguard.issued_count == 0


def test_enrolled_skip_reproduces_the_old_rule(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", GROUP, "--enrolled", "skip", "--report", str(path)], d.env)
    assert result.code == 0, result.stderr
    users = _report(path)
    assert {n: u["status"] for n, u in users.items()} == dict.fromkeys(users, "already_enrolled")
    assert d.defguard.issued_count == 0


def test_enrolled_desktop_also_gives_members_with_a_device_a_token(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    path = tmp_path / "r.json"
    assert run_cli(["--group-name", GROUP, "--enrolled", "desktop", "--report", str(path)], d.env).code == 0
    assert (_report(path)["bob"]["status"], _report(path)["bob"]["token_kind"]) == ("provisioned", "desktop")
    _assert_holds_valid_token(d, "bob")


# -- the enrollment URL, checked before any token is minted ---------------------------------------------------------


@pytest.mark.parametrize("url", ["http://localhost:8080", "http://127.0.0.1:8080/"])
def test_a_localhost_enrollment_url_is_refused_before_any_token(
    defguard: DefguardEmulator, graph: GraphEmulator, url: str
) -> None:
    """Defguard's default enrollment URL points every user's machine at itself: exit 3, the setting named."""
    d = _seed(defguard, graph)
    defguard.enrollment_url = url
    setting = "DEFGUARD_ENROLLMENT_URL" if defguard.version == "1.6" else "public proxy URL"
    with _remote_service(d) as service, pytest.raises(Exception, match=setting) as caught:
        service.provision(GROUP)
    assert type(caught.value).__name__ == "PreflightError"
    assert "localhost" in str(caught.value) or "127.0.0.1" in str(caught.value)
    assert defguard.issued_count == 0


def test_a_localhost_enrollment_url_is_fine_when_defguard_itself_is_local(deployment: Deployment) -> None:
    deployment.defguard.enrollment_url = "http://localhost:8080"
    assert run_cli(["--group-name", GROUP], deployment.env).code == 0


def test_an_unparseable_public_proxy_url_is_refused_on_2x(defguard2: DefguardEmulator, graph: GraphEmulator) -> None:
    """2.x answers 500 to every token request while its public proxy URL does not parse (v2.0.1
    ``enrollment_management.rs``): the run says so before minting."""
    d = _seed(defguard2, graph)
    defguard2.enrollment_url = "not a url"
    result = run_cli(["--group-name", GROUP], d.env)
    assert result.code == 3
    assert "not an http(s) URL" in result.stderr
    assert "public proxy URL" in result.stderr
    assert defguard2.requests_to("start_enrollment") + defguard2.requests_to("start_desktop") == []


class _Route(HTTPAdapter):
    """Sends what is addressed to https://defguard.example.com to the emulator: a Defguard that is not on loopback,
    as far as the client can tell, over real HTTP."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        request.url = (request.url or "").replace("https://defguard.example.com", self.target, 1)
        return super().send(request, *args, **kwargs)


class _remote_service:  # noqa: N801 - used as a context manager
    def __init__(self, d: Deployment) -> None:
        self.session = requests.Session()
        self.session.mount("https://defguard.example.com", _Route(d.defguard.url))
        settings = Settings.from_env(d.env)
        self.service = ProvisioningService.from_settings(settings)
        self.service.defguard.close()
        self.service.defguard = DefguardClient(
            "https://defguard.example.com", d.defguard.admin_token, session=self.session
        )

    def __enter__(self) -> ProvisioningService:
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.service.close()
        self.session.close()


# -- one member's problem stays that member's ------------------------------------------------------------------------


def test_a_member_disabled_mid_run_is_disabled_and_the_rest_provisioned(
    defguard: DefguardEmulator, graph: GraphEmulator
) -> None:
    d = _seed(defguard, graph, synced=40)
    seen = threading.Event()

    def progress(done: int, total: int) -> None:
        if not seen.is_set():  # after the first member (minted alone): directory sync disables another
            seen.set()
            defguard.disable_user("user39", by="directory_sync")

    settings = attrs.evolve(Settings.from_env(d.env), graph_write_rate=0)
    with ProvisioningService.from_settings(settings) as service:
        report = service.provision(GROUP, progress=progress)
    assert report.outcome("user39").status is Status.DISABLED
    assert "disabled in Defguard since" in (report.outcome("user39").error or "")
    assert report.fatal_error is None
    for i in range(39):
        assert report.outcome(f"user{i}").status is Status.PROVISIONED
        _assert_holds_valid_token(d, f"user{i}")
    assert report.ok


def test_a_server_failing_every_token_request_stops_after_a_few(
    defguard: DefguardEmulator, graph: GraphEmulator
) -> None:
    d = _seed(defguard, graph, synced=300)
    defguard.faults = Faults(rates={500: 1.0}, endpoints={"start_enrollment", "start_desktop"})
    result = run_cli(["--group-name", GROUP, "--no-progress"], d.env)
    assert result.code == 1, result.stderr
    mints = defguard.requests_to("start_enrollment") + defguard.requests_to("start_desktop")
    assert len(mints) <= 3 * 2  # three members, one retry each: not 300 members through a whole back-off
    assert defguard.issued_count == 0
    assert "not attempted" in result.stdout
    assert "answered 500 to 3 token requests in a row" in result.stdout


# -- unordered 2.x pages ---------------------------------------------------------------------------------------------


def test_users_skipped_by_unordered_pages_are_found(graph: GraphEmulator) -> None:
    """v2.0.1 ``list_users`` has no ORDER BY: users updated during the page reads move; none may be reported
    missing from the user list."""
    with DefguardEmulator("2.0", enrollment_url="https://enroll.example.com", page_churn=1.0, seed=7) as defguard:
        d = _seed(defguard, graph, synced=450)
        settings = attrs.evolve(Settings.from_env(d.env), graph_write_rate=0)
        with ProvisioningService.from_settings(settings) as service:
            report = service.status(GROUP)
        assert all(o.error is None or "missing from the user list" not in o.error for o in report.outcomes)
        assert len(report.outcomes) == 452
        assert all(o.devices is not None for o in report.outcomes)


def test_user_list_is_read_again_when_a_page_skipped_someone() -> None:
    with DefguardEmulator("2.0", page_churn=1.0, seed=7) as defguard:
        for i in range(450):
            defguard.add_user(f"user{i:03}")
        with DefguardClient(defguard.url, defguard.admin_token) as client:
            users = client.users()
        assert len(users) == 451
        assert defguard.request_counts["user-list"] > 5  # more than one pass over the 5 pages


# -- check knows the deployment --------------------------------------------------------------------------------------


def test_check_names_openid_users_and_the_enrollment_url(deployment: Deployment) -> None:
    d = deployment
    d.defguard.openid_provider = True
    result = run_cli(["check", "--group-name", GROUP], d.env)
    assert result.code == 0, result.stdout + result.stderr
    assert "Defguard's enrollment URL: https://enroll.example.com/" in result.stdout
    assert "Prefetch users" in result.stdout
    assert "--enrolled auto" in result.stdout
    assert "domain-joined" in result.stdout  # the Windows reader and hybrid-joined machines, said once
    assert result.stdout.count("domain-joined") == 1


def test_check_fails_a_localhost_enrollment_url_and_warns_about_another_set(
    defguard: DefguardEmulator, graph: GraphEmulator
) -> None:
    d = _seed(defguard, graph)
    graph.define_attribute_set("Vpn")
    defguard.enrollment_url = "http://localhost:8080"
    with _remote_service(d) as service:
        service.attribute_set = "Vpn"
        checklist = service.check(GROUP)
    item = checklist.item("enrollment_url")
    assert item.state.value == "fail"
    assert "localhost" in item.detail
    assert item.hint is not None
    assert ("DEFGUARD_ENROLLMENT_URL" if defguard.version == "1.6" else "public proxy URL") in item.hint
    reader = checklist.item("client_reader")
    assert reader.state.value == "warn"
    assert "'Defguard'" in reader.detail
    assert not checklist.ready
