"""``--user NAME`` (and the library's ``users=``): a command restricted to the members it names, end to end against
both emulators over HTTP; a name that is no member's refused before anything is minted or written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from defguard_entra.exceptions import ConfigurationError
from defguard_entra.models import Status
from defguard_entra.provisioning.plan import Member
from defguard_entra.provisioning.roster import checked_users, restrict_to
from defguard_entra.testing import DefguardEmulator, GraphEmulator
from helpers import Org, run_cli


def _users(path: Any) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in json.loads(path.read_text())["users"]}


def _mints(defguard: DefguardEmulator) -> list[Any]:
    return defguard.requests_to("start_enrollment") + defguard.requests_to("start_desktop")


def _patches(graph: GraphEmulator) -> list[Any]:
    return [r for r in graph.requests if r.method == "PATCH"]


def test_status_reports_only_the_members_named(org: Org, tmp_path) -> None:
    path = tmp_path / "status.json"
    argv = ["status", "--group-name", org.scenario.group, "--user", "alice", "--user", "GRACE@Example.com"]
    result = run_cli([*argv, "--report", str(path)], org.env)
    assert result.code == 0, result.stderr
    assert sorted(_users(path)) == ["alice", "grace"]  # a username, and an e-mail address in another case
    report = json.loads(path.read_text())
    assert report["audit"]["options"]["users"] == ["alice", "GRACE@Example.com"]


def test_provision_mints_only_for_the_members_named(org: Org, tmp_path) -> None:
    path = tmp_path / "provision.json"
    result = run_cli(
        ["provision", "--group-name", org.scenario.group, "--user", "Alice", "--no-progress", "--report", str(path)],
        org.env,
    )
    assert result.code == 0, result.stderr
    assert {n: u["status"] for n, u in _users(path).items()} == {"alice": "provisioned"}
    assert [r.raw_path.split("/")[-2] for r in _mints(org.defguard)] == ["alice"]
    assert org.defguard.issued_count == 1
    stored = org.graph.attributes(org.scenario.entra_ids["alice"])["Defguard"]["EnrollmentToken"]
    assert stored == org.defguard.current_token("alice")
    for name in ("grace", "heidi", "oneil", "peggy"):  # the other members to provision were not touched
        assert org.graph.attributes(org.scenario.entra_ids[name]).get("Defguard", {}) == {}


def test_clear_clears_only_the_members_named(org: Org, tmp_path) -> None:
    assert run_cli(["provision", "--group-name", org.scenario.group, "--no-progress"], org.env).code == 1
    path = tmp_path / "clear.json"
    result = run_cli(
        ["clear", "--group-name", org.scenario.group, "--all", "--user", "heidi", "--report", str(path)], org.env
    )
    assert result.code == 0, result.stderr
    assert {n: u["status"] for n, u in _users(path).items()} == {"heidi": "cleared"}
    assert org.graph.attributes(org.scenario.entra_ids["heidi"]).get("Defguard", {}).get("EnrollmentToken") is None
    for name in ("alice", "grace", "oneil", "peggy"):
        assert org.graph.attributes(org.scenario.entra_ids[name])["Defguard"]["EnrollmentToken"]


def test_a_name_that_is_no_members_is_refused_before_anything_is_minted(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    argv = ["provision", "--group-name", org.scenario.group, "--user", "alice", "--user", "alcie"]
    result = run_cli([*argv, "--report", str(path)], org.env)
    assert result.code == 3  # judged against the group the server holds now, like a group name
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'alcie' is not a member of group 'VPN Users'" in lines[0]
    assert "did you mean 'alice'" in lines[0]
    assert "--user" in lines[0]
    assert "Traceback" not in result.stderr
    assert org.defguard.issued_count == 0
    assert _mints(org.defguard) == []
    assert _patches(org.graph) == []
    assert json.loads(path.read_text())["users"] == []  # the report of a run that could not start


def test_an_empty_user_is_a_usage_error_and_nothing_is_sent(org: Org) -> None:
    org.defguard.reset_log()
    org.graph.reset_log()
    result = run_cli(["clear", "--group-name", org.scenario.group, "--user", " "], org.env)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --user is empty: give a member's Defguard username or e-mail address"
    ]
    assert org.defguard.requests == []
    assert org.graph.requests == []


def test_check_takes_no_user() -> None:
    result = run_cli(["check", "--group-name", "VPN", "--user", "alice"])
    assert result.code == 2
    assert "unrecognized arguments: --user" in result.stderr


# -- the library's users= ----------------------------------------------------------------------------------------


def test_users_must_be_a_sequence_of_names() -> None:
    assert checked_users(None) is None
    assert checked_users(["alice", " alice ", "bob"]) == ("alice", "bob")
    with pytest.raises(TypeError, match=r"not a string"):
        checked_users("alice")
    with pytest.raises(ConfigurationError, match=r"users is empty"):
        checked_users([])
    with pytest.raises(ConfigurationError, match=r"empty name"):
        checked_users(["alice", ""])


def test_restrict_to_keeps_the_group_order_and_names_every_unknown_name() -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    assert [m.username for m in restrict_to(members, ("CAROL", "alice"), "G")] == ["alice", "carol"]
    with pytest.raises(Exception, match=r"'bobb', 'zed' are not members of group 'G' \(for 'bobb': did you mean 'bob'"):
        restrict_to(members, ("bobb", "zed"), "G")
    settled = Member("dave")
    settled.settle(Status.NO_EMAIL)
    assert restrict_to([settled], ("dave",), "G") == [settled]
