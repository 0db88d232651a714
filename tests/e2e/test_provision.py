"""End to end: the real CLI, the real requests and msgraph-sdk stacks, both emulators over HTTP on 127.0.0.1."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys

import pytest

from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from defguard_entra.testing._scenarios import expiry_difference
from helpers import Org, run_cli

PROVISIONED = "provisioned"


def _assert_consistent(org: Org, report: dict) -> None:
    """Entra holds exactly Defguard's valid token for every provisioned member; nobody else was touched."""
    users = {u["username"]: u for u in report["users"]}
    for name, status in org.scenario.expected.items():
        assert users[name]["status"] == status, (name, users[name])
        entra_id = org.scenario.entra_ids.get(name)
        stored = org.graph.attributes(entra_id).get("Defguard", {}) if entra_id else {}
        if status == PROVISIONED:
            token = org.defguard.current_token(name)
            assert token is not None
            expiry = stored.pop("EnrollmentTokenExpiresAt", None)  # the sample set defines the optional third
            if org.defguard.version.startswith("2"):  # 1.6 does not tell its default lifetime: null is stored
                assert expiry is not None, name
            assert expiry_difference(expiry, org.defguard.token_expiry(token)) is None
            assert stored == {"EnrollmentToken": token, "EnrollmentUrl": "https://enroll.example.com/"}
            assert users[name]["enrollment_token"] == token[:4] + "…"
            assert users[name]["entra_id"] == entra_id
            assert users[name]["token_kind"] == org.scenario.token_kinds[name] == org.defguard.token_kind(token)
        else:
            assert stored == {}, name
            assert users[name]["enrollment_token"] is None


def test_sample_organisation(org: Org, tmp_path) -> None:
    path = tmp_path / "report.json"
    result = run_cli(["provision", "--group-name", org.scenario.group, "--report", str(path)], org.env)
    assert result.code == 1, result.stderr  # not_found, ambiguous and no_email need attention
    report = json.loads(path.read_text())
    assert sorted(u["username"] for u in report["users"]) == sorted(org.scenario.expected)
    _assert_consistent(org, report)
    by_name = {u["username"]: u for u in report["users"]}
    assert by_name["alice"]["matched_by"] == "mail"
    assert by_name["oneil"]["matched_by"] == "mail"
    assert by_name["grace"]["matched_by"] == "userPrincipalName"
    assert by_name["heidi"]["matched_by"] == "otherMails"
    assert by_name["frank"]["status"] == "ambiguous"
    assert "frank.jones@example.com" in by_name["frank"]["error"]
    assert report["summary"] == {
        "provisioned": 5,
        "already_enrolled": 1,
        "disabled": 1,
        "no_email": 1,
        "not_found": 1,
        "ambiguous": 1,
    }
    assert report["defguard"]["version"].startswith(org.defguard.version)
    assert report["group"] == {"name": "VPN Users", "source": "defguard"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert org.defguard.issued_count == len(org.scenario.provisioned)  # none for the skipped or unresolved
    # Never one GET per member: the bulk list only
    assert org.defguard.request_counts["user"] == 0
    for name, status in org.scenario.expected.items():
        if status == PROVISIONED:
            assert org.defguard.current_token(name) not in result.stdout + result.stderr


def test_previous_token_survives_a_failed_lookup(org: Org) -> None:
    """The scripts mint before looking the user up, killing the token already stored. We do not."""
    import requests

    for name in ("frank", "erin"):
        response = requests.post(  # start_desktop: frank is a directory-synced user, refused enrollment on 2.x
            f"{org.defguard.url}/api/v1/user/{name}/start_desktop",
            json={},
            headers={"Authorization": f"Bearer {org.defguard.admin_token}"},
            timeout=5,
        )
        assert response.status_code == 201
    before = {name: org.defguard.current_token(name) for name in ("frank", "erin")}
    result = run_cli(["--group-name", org.scenario.group], org.env)
    assert result.code == 1
    assert {name: org.defguard.current_token(name) for name in ("frank", "erin")} == before


def test_documented_powershell_form_through_python_m(org: Org, tmp_path) -> None:
    report = tmp_path / "r.csv"
    env = {
        "PATH": "/usr/bin:/bin",
        "DEFGUARD_ENTRA_GRAPH_URL": org.graph.url,
        "DEFGUARD_ENTRA_GRAPH_TOKEN": org.graph.admin_token,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defguard_entra",
            "-Url",
            org.defguard.url + "/",
            "-ApiToken",
            org.defguard.admin_token,
            "-GroupName",
            org.scenario.group,
            "--no-progress",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "visible to other local users" in proc.stderr
    assert org.defguard.admin_token not in proc.stdout + proc.stderr
    rows = list(csv.DictReader(report.read_text().splitlines()))
    assert {r["username"]: r["status"] for r in rows} == dict(org.scenario.expected)
    assert "provisioned" in proc.stdout


def test_enrolled_users_get_desktop_tokens_when_asked(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--enrolled", "desktop", "--report", str(path)], org.env)
    assert result.code == 1
    bob = next(u for u in json.loads(path.read_text())["users"] if u["username"] == "bob")
    assert bob["status"] == "provisioned"
    assert bob["token_kind"] == "desktop"
    if org.defguard.version == "1.6":  # 1.6 does not expose DEFGUARD_ENROLLMENT_TOKEN_TIMEOUT
        assert bob["token_expires_at"] is None
    else:  # 2.x: enrollment_token_timeout_hours, read from GET /api/v1/settings
        expires = dt.datetime.fromisoformat(bob["token_expires_at"])
        assert abs(expires - dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)) < dt.timedelta(minutes=1)
    token = org.defguard.current_token("bob")
    assert org.defguard.token_kind(token) == "desktop"
    assert org.graph.attributes(org.scenario.entra_ids["bob"])["Defguard"]["EnrollmentToken"] == token
    assert "server's default lifetime" in result.stdout


def test_lifetime_is_sent_and_reported(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    result = run_cli(
        ["-GroupName", org.scenario.group, "-EnrollmentTokenExpirationTime", "1d 12h", "--report", str(path)], org.env
    )
    assert result.code == 1
    alice = next(u for u in json.loads(path.read_text())["users"] if u["username"] == "alice")
    token = org.defguard.current_token("alice")
    expiry = org.defguard.token_expiry(token)
    import datetime as dt

    reported = dt.datetime.fromisoformat(alice["token_expires_at"])
    assert abs((reported - expiry).total_seconds()) < 5
    sent = org.defguard.requests_to("start_enrollment")[0].json()
    assert sent == {"email": None, "send_enrollment_notification": False, "token_expiration_time": "129600s"}


def test_short_lifetime_is_a_warning_not_a_refusal(org: Org) -> None:
    result = run_cli(["--group-name", org.scenario.group, "--enrollment-token-expiration-time", "1s"], org.env)
    assert result.code == 1  # the scenario's problem members, as without the option
    warning = next(line for line in result.stderr.splitlines() if "shorter than 5 minutes" in line)
    assert warning.startswith("warning: --enrollment-token-expiration-time: a token lifetime of 1 s")
    assert "only destroys the user's previous token" in warning
    sent = org.defguard.requests_to("start_enrollment")
    assert sent
    assert {r.json()["token_expiration_time"] for r in sent} == {"1s"}


def test_lifetime_from_the_floor_up_has_no_warning(org: Org) -> None:
    result = run_cli(["--group-name", org.scenario.group, "--enrollment-token-expiration-time", "5m"], org.env)
    assert result.code == 1
    assert "shorter than" not in result.stderr
    assert org.defguard.requests_to("start_enrollment")


def test_entra_group_source(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--group-source", "entra", "--report", str(path)], org.env)
    assert result.code == 1
    report = json.loads(path.read_text())
    ivan = next(u for u in report["users"] if u["user_principal_name"] == "ivan@example.com")
    assert ivan["status"] == "not_in_defguard"
    assert ivan["username"] is None
    assert ivan["entra_id"]
    statuses = {u["username"]: u["status"] for u in report["users"] if u["username"]}
    assert statuses["alice"] == PROVISIONED
    assert statuses["carol"] == "disabled"
    assert "erin" not in statuses  # not in the Entra group


def test_group_name_with_spaces_and_unicode_and_trailing_slash(defguard: DefguardEmulator, graph: GraphEmulator):
    graph.define_attribute_set("Defguard")
    defguard.add_user("zoe", email="zoe@example.com")
    entra_id = graph.add_user("zoe@example.com", mail="zoe@example.com")
    defguard.add_group("Équipe VPN / Paris #1", ["zoe"])
    env = environment(defguard, graph)
    env["DEFGUARD_URL"] += "/"
    result = run_cli(["--group-name", "Équipe VPN / Paris #1"], env)
    assert result.code == 0, result.stderr
    assert graph.attributes(entra_id)["Defguard"]["EnrollmentToken"] == defguard.current_token("zoe")


def test_large_group_on_2x_pages_the_user_list(defguard2: DefguardEmulator, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Defguard")
    names = [f"user{n:03}" for n in range(230)]
    ids = {}
    for name in names:
        defguard2.add_user(name, email=f"{name}@example.com")
        ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
    defguard2.add_group("Big", names)
    result = run_cli(["--group-name", "Big", "--graph-write-rate", "0"], environment(defguard2, graph))
    assert result.code == 0, result.stderr
    assert defguard2.request_counts["user-list"] == 3  # 100 + 100 + 30
    for name in names:
        assert graph.attributes(ids[name])["Defguard"]["EnrollmentToken"] == defguard2.current_token(name)
    # The request-count target (N/10 + 10 Graph requests): the queue of writes sends a part-filled batch when the
    # tokens ready are few, which a loaded machine makes more often, so 20 a batch is not a bound (22-24 seen).
    assert graph.request_counts["batch"] <= 230 / 10 + 10


def test_empty_group(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Defguard")
    defguard.add_group("Empty")
    result = run_cli(["--group-name", "Empty"], environment(defguard, graph))
    assert result.code == 0
    assert "no members" in result.stdout


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("bad-token", "Invalid API token"),
        ("non-admin", "not allowed for normal users"),
        ("gate-off", "license"),
        ("no-group", "no group named"),
        ("no-set", "attribute set 'Defguard' does not exist"),
        ("graph-token", "Graph refused the access token"),
    ],
)
def test_preflight_failures_exit_3_without_minting(org: Org, setup: str, expected: str) -> None:
    env = org.env
    group = org.scenario.group
    if setup == "bad-token":
        env["DEFGUARD_API_TOKEN"] = "dg-" + "x" * 32
    elif setup == "non-admin":
        env["DEFGUARD_API_TOKEN"] = org.defguard.add_api_token("alice")
    elif setup == "gate-off":
        org.defguard.license_gate = False
    elif setup == "no-group":
        group = "Nope"
    elif setup == "no-set":
        env_result = run_cli(["--group-name", group, "--attribute-set-name", "Other"], env)
        assert env_result.code == 3
        assert "attribute set 'Other' does not exist" in env_result.stderr
        assert org.defguard.issued_count == 0
        return
    elif setup == "graph-token":
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = "not-a-real-token"
    result = run_cli(["--group-name", group], env)
    assert result.code == 3, result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line that says what to fix
    assert org.defguard.issued_count == 0
    assert env["DEFGUARD_API_TOKEN"] not in result.stderr


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("bad-token", "Invalid API token"),
        ("graph-token", "Graph refused the access token"),
        ("none", "attribute set 'Other' does not exist"),
    ],
)
def test_preflight_reads_run_together_but_the_earliest_check_is_reported(org: Org, setup: str, expected: str) -> None:
    """The preflight's reads go out together (``provisioning._preflight``); with every later check failing too
    (no such group, no such attribute set) the one line names the earliest check's failure, nothing minted."""
    env = org.env
    if setup == "bad-token":
        env["DEFGUARD_API_TOKEN"] = "dg-" + "x" * 32
    elif setup == "graph-token":
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = "not-a-real-token"
    result = run_cli(["--group-name", "Nope", "--attribute-set-name", "Other"], env)
    assert result.code == 3, result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert org.defguard.issued_count == 0


def test_unreachable_defguard(org: Org) -> None:
    env = org.env
    env["DEFGUARD_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    result = run_cli(["--group-name", org.scenario.group, "--retries", "0"], env)
    assert result.code == 3
    assert "cannot reach Defguard" in result.stderr


def test_enrollment_url_too_long_is_refused_before_any_token(org: Org, tmp_path) -> None:
    org.defguard.enrollment_url = "https://enrollment.vpn.department-of-examples.example.com/very/long/path"
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--report", str(path)], org.env)
    assert result.code == 3
    assert "64-character limit" in result.stderr
    setting = "DEFGUARD_ENROLLMENT_URL" if org.defguard.version == "1.6" else "public proxy URL"
    assert setting in result.stderr
    assert org.defguard.issued_count == 0
    report = json.loads(path.read_text())
    assert "64-character limit" in report["fatal_error"]
    assert report["users"] == []
    assert all(not org.graph.attributes(i) for i in org.scenario.entra_ids.values())


def test_write_refused_stops_before_any_token(org: Org, tmp_path) -> None:
    """A sign-in that may read but not write: the write probe is refused before the first mint (exit 3)."""
    env = org.env
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = org.graph.add_principal("reader", write_attributes=False)
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--report", str(path)], env)
    assert result.code == 3
    assert "403" in result.stderr
    assert org.defguard.issued_count == 0
    assert json.loads(path.read_text())["users"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-name", "G", "--enrollment-token-expiration-time", "24H"], "did you mean 'h'"),
        (["--group-name", "G", "--url", "ftp://x"], "--url"),
        (["--group-name", "G", "--url", "defguard.example.com"], "--url"),
        (["--group-name", "G", "--attribute-set-name", "Def guard"], "--attribute-set-name"),
        (["--group-name", "G", "--attribute-set-name", "1Defguard"], "--attribute-set-name"),
        (["--group-name", "  "], "--group-name"),
        (["--url", "https://defguard.example.com"], "--group-name is required"),
        (["--group-name", "G", "--report", "/nonexistent/dir/r.json"], "does not exist"),
        (["--group-name", "G", "--report", "r.txt"], ".json or .csv"),
        (["--group-name", "G", "--graph-url", "http://graph.example.com/v1.0"], "--graph-url"),
        (["--group-name", "G", "--concurrency", "0"], "--concurrency"),
        (["--group-name", "G", "--bogus"], "unrecognized arguments"),
        (["--group-name", "G", "--api-token", "a", "--api-token-file", "f"], "not both"),
    ],
)
def test_usage_errors_exit_2_before_any_request(org: Org, args: list[str], message: str) -> None:
    result = run_cli(args, org.env)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert org.defguard.requests == []
    assert org.graph.requests == []


def test_api_token_from_file_and_stdin(org: Org, tmp_path) -> None:
    env = org.env
    token = env.pop("DEFGUARD_API_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    assert run_cli(["--group-name", org.scenario.group, "--api-token-file", str(token_file)], env).code == 1
    result = run_cli(["--group-name", org.scenario.group, "--api-token", "-"], env, stdin=token + "\n")
    assert result.code == 1
    assert "visible to other local users" not in result.stderr


def test_no_token_in_any_output_at_debug_verbosity(org: Org, tmp_path, caplog) -> None:
    caplog.set_level("DEBUG")
    result = run_cli(["--group-name", org.scenario.group, "-vv", "--report", str(tmp_path / "r.json")], org.env)
    assert result.code == 1
    everything = result.stdout + result.stderr + caplog.text + (tmp_path / "r.json").read_text()
    secrets = [org.defguard.admin_token, org.graph.admin_token]
    secrets += [t for n in org.scenario.expected if (t := org.defguard.current_token(n))]
    assert len(secrets) >= 6
    for secret in secrets:
        assert secret not in everything


def test_reveal_tokens_puts_full_tokens_in_an_owner_only_report(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--report", str(path), "--reveal-tokens"], org.env)
    assert result.code == 1
    alice = next(u for u in json.loads(path.read_text())["users"] if u["username"] == "alice")
    assert alice["enrollment_token"] == org.defguard.current_token("alice")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert org.defguard.current_token("alice") not in result.stdout + result.stderr


def test_2x_paginated_lists_without_content_type_are_accepted(graph: GraphEmulator) -> None:
    """Defguard 2.x sends its paginated lists with no Content-Type; the web UI (text/html) is still refused."""
    with DefguardEmulator("2.0", enrollment_url="https://enroll.example.com", paginated_content_type=None) as dg:
        graph.define_attribute_set("Defguard")
        dg.add_user("zoe", email="zoe@example.com")
        entra_id = graph.add_user("zoe@example.com", mail="zoe@example.com")
        dg.add_group("G", ["zoe"])
        result = run_cli(["--group-name", "G"], environment(dg, graph))
        assert result.code == 0, result.stderr
        assert graph.attributes(entra_id)["Defguard"]["EnrollmentToken"] == dg.current_token("zoe")


def test_web_ui_answer_is_refused_with_a_hint(org: Org) -> None:
    env = org.env
    env["DEFGUARD_URL"] += "/defguard"  # a path prefix the server does not have: the UI answers every GET
    result = run_cli(["--group-name", org.scenario.group, "--retries", "0"], env)
    assert result.code == 3
    assert "web UI" in result.stderr or "Defguard" in result.stderr
    assert org.defguard.issued_count == 0


def test_a_report_that_could_not_start_keeps_the_url_and_the_audit(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    argv = ["--group-name", "No such group", "--enrollment-token-expiration-time", "2d", "--report", str(path)]
    result = run_cli(argv, org.env)
    assert result.code == 3
    report = json.loads(path.read_text())
    assert "no group named" in report["fatal_error"]
    assert report["defguard"]["url"] == org.env["DEFGUARD_URL"]
    options = report["audit"]["options"]
    assert options["command"] == "provision"
    assert options["group_name"] == "No such group"
    assert options["enrollment_token_expiration_time"] == "2d"
    assert options["defguard_url"] == org.env["DEFGUARD_URL"]
    assert options["api_token_source"] == "environment"
    assert "graceful_stop" not in options
    assert org.defguard.admin_token not in path.read_text()


def test_a_report_that_could_not_start_names_the_url_given_as_a_flag(org: Org, tmp_path) -> None:
    env = org.env
    url = env.pop("DEFGUARD_URL")
    path = tmp_path / "r.json"
    result = run_cli(["status", "--url", url, "--group-name", "No such group", "--report", str(path)], env)
    assert result.code == 3
    report = json.loads(path.read_text())
    assert report["defguard"]["url"] == url
    assert report["audit"]["options"]["url"] == url
    assert report["audit"]["options"]["command"] == "status"


@pytest.mark.parametrize("command", ["provision", "status", "clear"])
def test_no_internal_flag_in_the_audit(org: Org, tmp_path, command: str) -> None:
    path = tmp_path / "r.json"
    run_cli([command, "--group-name", org.scenario.group, "--report", str(path)], org.env)
    options = json.loads(path.read_text())["audit"]["options"]
    assert options["command"] == command
    assert "graceful_stop" not in options


def test_a_run_that_cannot_start_replaces_the_report(org: Org, tmp_path) -> None:
    """Automation must never read an earlier run's report as this run's."""
    path = tmp_path / "r.json"
    path.write_text('{"summary": {"provisioned": 9}}')
    result = run_cli(["--group-name", "No such group", "--report", str(path)], org.env)
    assert result.code == 3
    report = json.loads(path.read_text())
    assert report["users"] == []
    assert "no group named" in report["fatal_error"]
