"""Naming the group: suggestions for a name that is not found, and ``--group-id`` (the CLI and the library, end to
end against both emulators)."""

from __future__ import annotations

import json
import unicodedata

import pytest

from defguard_entra import ConfigurationError, PreflightError, ProvisioningService, Settings
from defguard_entra.testing import environment
from helpers import Org, run_cli

PARIS = "Équipe VPN / Paris"
PARIS_NFD = unicodedata.normalize("NFD", PARIS)


def _defguard_id(org: Org, name: str) -> int:
    return next(g["id"] for g in org.defguard.groups if g["name"] == name)


def _one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1, stderr
    return stderr


@pytest.fixture
def paris(org: Org) -> Org:
    """The sample organisation, and a second group whose name carries an accent (NFC), in both directories."""
    org.defguard.add_group(PARIS, ["alice", "bob"])
    org.graph.add_group(PARIS, [org.scenario.entra_ids["alice"], org.scenario.entra_ids["bob"]])
    return org


@pytest.mark.parametrize(
    ("typed", "existing", "how"),
    [
        ("VPN USERS", "VPN Users", "differs only in case"),
        ("VPN Users ", "VPN Users", "yours has a trailing space"),
        (PARIS_NFD, PARIS, "differs in Unicode normalisation, yours is NFD"),
    ],
)
def test_a_defguard_group_not_found_suggests_the_existing_one(paris: Org, typed: str, existing: str, how: str) -> None:
    result = run_cli(["provision", "--group-name", typed], paris.env)
    assert result.code == 3, result.stderr
    stderr = _one_line(result.stderr)
    assert f"Defguard has no group named {typed!r}" in stderr
    assert f"did you mean {existing!r} (id {_defguard_id(paris, existing)}: {how})" in stderr
    assert paris.defguard.issued_count == 0
    # the suggested name is the thing: it runs
    assert run_cli(["provision", "--group-name", existing, "--dry-run"], paris.env).code in {0, 1}


@pytest.mark.parametrize(
    ("typed", "existing", "how"),
    [
        ("VPN Users ", "VPN Users", "yours has a trailing space"),
        (PARIS_NFD, PARIS, "differs in Unicode normalisation, yours is NFD"),
    ],
)
def test_an_entra_group_not_found_suggests_the_existing_one(paris: Org, typed: str, existing: str, how: str) -> None:
    result = run_cli(["provision", "--group-source", "entra", "--group-name", typed], paris.env)
    assert result.code == 3, result.stderr
    stderr = _one_line(result.stderr)
    assert f"Entra has no group with displayName {typed!r}" in stderr
    (group_id,) = paris.graph.group_ids(existing)
    assert f"did you mean {existing!r} (id {group_id}: {how})" in stderr
    assert paris.defguard.issued_count == 0


def test_an_entra_group_in_other_case_is_found_as_graph_compares(org: Org, tmp_path) -> None:
    """Graph's displayName eq is case-insensitive: ``VPN USERS`` is the group, no suggestion needed."""
    path = tmp_path / "r.json"
    result = run_cli(
        ["provision", "--group-source", "entra", "--group-name", "VPN USERS", "--dry-run", "--report", str(path)],
        org.env,
    )
    assert result.code == 1, result.stderr
    assert json.loads(path.read_text())["summary"]["planned"] > 0


def test_no_suggestion_for_a_name_far_from_every_group(org: Org) -> None:
    for source in ("defguard", "entra"):
        result = run_cli(["provision", "--group-source", source, "--group-name", "Marketing"], org.env)
        assert result.code == 3
        assert "did you mean" not in result.stderr
        assert _one_line(result.stderr).rstrip().endswith("check --group-name")


def test_group_id_names_the_defguard_group(org: Org, tmp_path) -> None:
    by_name, by_id = tmp_path / "name.json", tmp_path / "id.json"
    group_id = _defguard_id(org, org.scenario.group)
    assert run_cli(["provision", "--group-name", org.scenario.group, "--dry-run", "--report", str(by_name)], org.env)
    result = run_cli(["provision", "--group-id", str(group_id), "--dry-run", "--report", str(by_id)], org.env)
    assert result.code == 1, result.stderr
    named, ided = json.loads(by_name.read_text()), json.loads(by_id.read_text())
    assert ided["group"] == named["group"] == {"name": org.scenario.group, "source": "defguard"}
    assert ided["summary"] == named["summary"]
    assert ided["users"] == named["users"]
    assert ided["audit"]["group_id"] == str(group_id)
    assert "group_id" not in named["audit"]


def test_group_id_not_in_defguard(org: Org) -> None:
    result = run_cli(["provision", "--group-id", "999"], org.env)
    assert result.code == 3
    assert "Defguard has no group with id 999: check --group-id" in _one_line(result.stderr)
    assert org.defguard.issued_count == 0


def test_two_entra_groups_with_one_name_list_their_ids_and_group_id_picks_one(org: Org, tmp_path) -> None:
    (first,) = org.graph.group_ids(org.scenario.group)
    second = org.graph.add_group(org.scenario.group, [org.scenario.entra_ids["alice"]])
    result = run_cli(["provision", "--group-source", "entra", "--group-name", org.scenario.group], org.env)
    assert result.code == 3
    stderr = _one_line(result.stderr)
    assert f"2 Entra groups are named {org.scenario.group!r} ({first}, {second})" in stderr
    assert "pass --group-id" in stderr
    path = tmp_path / "r.json"
    result = run_cli(
        ["provision", "--group-source", "entra", "--group-id", second, "--dry-run", "--report", str(path)], org.env
    )
    assert result.code in {0, 1}, result.stderr
    report = json.loads(path.read_text())
    assert [u["username"] for u in report["users"]] == ["alice"]
    assert report["audit"]["group_id"] == second
    assert org.graph.request_counts["group-get"] == 1


def test_entra_group_id_not_found(org: Org) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    result = run_cli(["provision", "--group-source", "entra", "--group-id", missing], org.env)
    assert result.code == 3
    assert f"Entra has no group with object id {missing}: check --group-id" in _one_line(result.stderr)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--group-name", "VPN Users", "--group-id", "2"], "--group-name and --group-id both name the group"),
        (["--group-id", "abc"], "--group-id must be the Defguard group's id (a positive whole number), not 'abc'"),
        (["--group-id", "0"], "--group-id must be the Defguard group's id"),
        (["--group-id", "١٢"], "--group-id must be the Defguard group's id"),
        (["--group-source", "entra", "--group-id", "2"], "--group-id must be the Entra group's object id (a GUID"),
    ],
)
def test_group_id_usage_errors_before_any_request(org: Org, argv: list[str], expected: str) -> None:
    result = run_cli(["provision", *argv], org.env)
    assert result.code == 2, result.stderr
    assert expected in _one_line(result.stderr)
    assert sum(org.defguard.request_counts.values()) == 0
    assert sum(org.graph.request_counts.values()) == 0


def test_status_and_check_take_group_id(org: Org) -> None:
    group_id = str(_defguard_id(org, org.scenario.group))
    status = run_cli(["status", "--group-id", group_id], org.env)
    assert status.code in {0, 1}, status.stderr
    assert org.scenario.group in status.stdout
    check = run_cli(["check", "--group-id", group_id], org.env)
    assert check.code == 0, check.stdout + check.stderr
    assert f"group {org.scenario.group!r}" in check.stdout


def test_check_lists_the_ids_of_duplicate_entra_groups(org: Org) -> None:
    second = org.graph.add_group(org.scenario.group, [org.scenario.entra_ids["alice"]])
    result = run_cli(["check", "--group-source", "entra", "--group-name", org.scenario.group], org.env)
    assert result.code == 3
    assert second in result.stdout
    assert "pass --group-id" in result.stdout
    assert run_cli(["check", "--group-source", "entra", "--group-id", second], org.env).code == 0


def test_library_group_id_and_suggestions(paris: Org) -> None:
    settings = Settings.from_env(environment(paris.defguard, paris.graph))
    with ProvisioningService.from_settings(settings) as service:
        report = service.provision(group_id=_defguard_id(paris, PARIS), dry_run=True)
        assert report.group_name == PARIS
        assert sorted(o.username for o in report.outcomes) == ["alice", "bob"]
        with pytest.raises(PreflightError, match="yours is NFD"):
            service.status(PARIS_NFD)
        with pytest.raises(ConfigurationError, match="give one of them"):
            service.status("VPN Users", group_id=2)
        (entra_id,) = paris.graph.group_ids(PARIS)
        assert service.check(group_id=entra_id, group_source="entra").group_name == PARIS
