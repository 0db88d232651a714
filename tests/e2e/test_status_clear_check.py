"""status, clear and check, end to end: the real CLI and clients against both emulators over HTTP."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from defguard_entra.models import CheckState, GraphPrincipal
from defguard_entra.provisioning.checklist import READ_ATTRIBUTES, ROLE_TEMPLATE_IDS, WRITE_ATTRIBUTES, permission_item
from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from helpers import Org, run_cli

PROVISIONED = ("alice", "grace", "heidi", "oneil", "peggy")


def _provision(org: Org, *extra: str) -> None:
    result = run_cli(["provision", "--group-name", org.scenario.group, "--no-progress", *extra], org.env)
    assert result.code == 1, result.stderr  # the sample organisation has members that need attention


def _patches(graph: GraphEmulator) -> list[Any]:
    return [r for r in graph.requests if r.method == "PATCH"]


def _mints(defguard: DefguardEmulator) -> list[Any]:
    return defguard.requests_to("start_enrollment") + defguard.requests_to("start_desktop")


def _users(path: Any) -> dict[str, dict[str, Any]]:
    report = json.loads(path.read_text())
    return {u["username"] or u["user_principal_name"]: u for u in report["users"]}


def _stored(org: Org, name: str) -> dict[str, Any]:
    return org.graph.attributes(org.scenario.entra_ids[name]).get("Defguard", {})


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'typ': 'JWT', 'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def _jwt_principal(graph: GraphEmulator, claims: dict[str, Any], **permissions: Any) -> str:
    """A JWT-shaped bearer token the emulator accepts for a principal with ``permissions``.

    The emulator mints opaque tokens; Entra's are JWTs. Map a JWT to the same principal so the claims path of
    ``check`` and of the audit runs against real HTTP (test-only use of the emulator's token table)."""
    opaque = graph.add_principal("jwt", **permissions)
    token = _jwt(claims)
    with graph.lock:
        graph._tokens[token] = graph._tokens[opaque]
    return token


# -- status ----------------------------------------------------------------------------------------------------


def test_status_shows_every_member_and_changes_nothing(org: Org, tmp_path) -> None:
    _provision(org)
    carol = org.scenario.entra_ids["carol"]
    org.graph.set_attributes(carol, "Defguard", {"EnrollmentUrl": "https://enroll.example.com/"})  # half a pair
    org.defguard.reset_log()
    org.graph.reset_log()
    writes, issued = org.graph.write_count, org.defguard.issued_count
    path = tmp_path / "status.json"
    result = run_cli(["status", "--group-name", org.scenario.group, "--report", str(path)], org.env)
    assert result.code == 1, result.stderr  # dave, erin and frank cannot be looked up
    users = _users(path)
    assert {n: u["status"] for n, u in users.items()} == {
        "alice": "set",
        "grace": "set",
        "heidi": "set",
        "oneil": "set",
        "peggy": "set",
        "bob": "not_set",
        "carol": "partial",
        "dave": "no_email",
        "erin": "not_found",
        "frank": "ambiguous",
    }
    for name in PROVISIONED:
        token = org.defguard.current_token(name)
        assert token is not None
        assert users[name]["enrollment_token"] == token[:4] + "…"
        assert users[name]["enrollment_url"] == "https://enroll.example.com/"
        assert token not in result.stdout + result.stderr
        assert token[:4] + "…" in result.stdout  # the per-member table shows the masked token
    assert (users["bob"]["defguard_enrolled"], users["bob"]["devices"], users["bob"]["would_mint"]) == (True, 1, None)
    assert "has a device" in users["bob"]["error"]
    assert users["carol"]["defguard_active"] is False
    assert users["alice"]["devices"] == 0
    assert users["alice"]["would_mint"] == org.scenario.token_kinds["alice"]
    assert users["heidi"]["would_mint"] == "enrollment"
    assert "would mint an enrollment token" in users["heidi"]["error"]
    assert users["heidi"]["matched_by"] == "otherMails"
    assert json.loads(path.read_text())["summary"] == {
        "no_email": 1,
        "not_found": 1,
        "ambiguous": 1,
        "not_set": 1,
        "set": 5,
        "partial": 1,
    }
    assert _patches(org.graph) == []
    assert _mints(org.defguard) == []
    assert (org.graph.write_count, org.defguard.issued_count) == (writes, issued)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_status_before_anything_is_stored_says_why_values_may_be_missing(org: Org) -> None:
    result = run_cli(["status", "--group-name", org.scenario.group], org.env)
    assert result.code == 1
    assert "note: Graph returned no attribute values" in result.stdout
    assert "Attribute Assignment Reader" in result.stdout


def test_status_csv_with_an_entra_group(org: Org, tmp_path) -> None:
    _provision(org)
    path = tmp_path / "status.csv"
    result = run_cli(
        ["status", "--group-name", org.scenario.group, "--group-source", "entra", "--report", str(path)], org.env
    )
    assert result.code == 1
    import csv

    rows = {r["username"] or r["user_principal_name"]: r for r in csv.DictReader(path.read_text().splitlines())}
    assert rows["ivan@example.com"]["status"] == "not_in_defguard"
    assert rows["ivan@example.com"]["defguard_enrolled"] == ""
    assert rows["alice"]["status"] == "set"
    assert rows["bob"]["defguard_enrolled"] == "True"
    assert "erin" not in rows  # not in the Entra group


# -- clear -----------------------------------------------------------------------------------------------------


def test_clear_removes_exactly_the_enrolled_members_attributes(org: Org, tmp_path) -> None:
    org.graph.define_attribute("Defguard", "Other")
    for name in ("alice", "heidi"):
        org.graph.set_attributes(org.scenario.entra_ids[name], "Defguard", {"Other": "keep me"})
    _provision(org)
    for name in ("alice", "grace"):  # they finish enrolling: their stored tokens are now spent secrets
        token = org.defguard.current_token(name)
        assert token is not None
        org.defguard.redeem(token)
    pending = {name: org.defguard.current_token(name) for name in ("heidi", "oneil")}
    org.graph.reset_log()
    path = tmp_path / "clear.json"
    result = run_cli(["clear", "--group-name", org.scenario.group, "--report", str(path)], org.env)
    assert result.code == 1, result.stderr  # not_found and ambiguous members
    users = _users(path)
    assert {n: u["status"] for n, u in users.items()} == {
        "alice": "cleared",
        "grace": "cleared",
        "heidi": "kept",
        "oneil": "kept",
        "peggy": "kept",
        "bob": "not_set",
        "carol": "not_set",
        "dave": "not_found",
        "erin": "not_found",
        "frank": "ambiguous",
    }
    assert "no e-mail" in users["dave"]["error"]
    assert "--all" in users["heidi"]["error"]
    assert _stored(org, "alice") == {"Other": "keep me"}  # only the tool's three attributes were nulled
    assert _stored(org, "grace") == {}
    heidi = _stored(org, "heidi")
    heidi.pop("EnrollmentTokenExpiresAt", None)  # the sample set defines the optional third (null on 1.6)
    assert heidi == {
        "Other": "keep me",
        "EnrollmentToken": pending["heidi"],
        "EnrollmentUrl": "https://enroll.example.com/",
    }
    assert _stored(org, "oneil")["EnrollmentToken"] == pending["oneil"]
    patches = _patches(org.graph)
    assert len(patches) == 2
    for patch in patches:
        values = patch.json()["customSecurityAttributes"]["Defguard"]
        assert values["EnrollmentToken"] is None
        assert values["EnrollmentUrl"] is None
        assert values["EnrollmentTokenExpiresAt"] is None
        assert "Other" not in values
    assert users["alice"]["enrollment_token"] is not None  # what was cleared, masked
    assert "clear of group" in result.stdout


def test_clear_all_with_a_dry_run_first(org: Org, tmp_path) -> None:
    _provision(org)
    before = {name: dict(_stored(org, name)) for name in org.scenario.entra_ids}
    org.graph.reset_log()
    dry = tmp_path / "dry.json"
    result = run_cli(["clear", "--group-name", org.scenario.group, "--all", "--dry-run", "--report", str(dry)], org.env)
    assert result.code == 1
    assert {n for n, u in _users(dry).items() if u["status"] == "planned"} == set(PROVISIONED)
    assert json.loads(dry.read_text())["dry_run"] is True
    assert "(dry run)" in result.stdout
    assert _patches(org.graph) == []
    assert {name: dict(_stored(org, name)) for name in org.scenario.entra_ids} == before
    real = tmp_path / "real.json"
    result = run_cli(["clear", "--group-name", org.scenario.group, "--all", "--report", str(real)], org.env)
    assert result.code == 1
    assert {n for n, u in _users(real).items() if u["status"] == "cleared"} == set(PROVISIONED)
    assert all(not org.graph.attributes(i) for i in org.scenario.entra_ids.values())
    assert len(_patches(org.graph)) == len(PROVISIONED)


def test_clear_exits_0_when_every_member_is_settled(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    graph.define_attribute_set("Defguard")
    defguard.add_user("ann", email="ann@example.com", enrolled=True, devices=1)
    defguard.add_user("ben", email="ben@example.com")
    ann = graph.add_user("ann@example.com", mail="ann@example.com")
    graph.add_user("ben@example.com", mail="ben@example.com")
    graph.set_attributes(ann, "Defguard", {"EnrollmentToken": "a" * 32, "EnrollmentUrl": "https://e.example.com/"})
    defguard.add_group("VPN", ["ann", "ben"])
    result = run_cli(["clear", "--group-name", "VPN"], environment(defguard, graph))
    assert result.code == 0, result.stderr
    assert graph.attributes(ann) == {}
    assert "a" * 32 not in result.stdout + result.stderr


def test_clear_reports_a_refused_write_failed(org: Org, tmp_path) -> None:
    _provision(org)
    env = org.env
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = org.graph.add_principal("reader", write_attributes=False)
    path = tmp_path / "clear.json"
    result = run_cli(["clear", "--group-name", org.scenario.group, "--all", "--report", str(path)], env)
    assert result.code == 1
    users = _users(path)
    for name in PROVISIONED:
        assert users[name]["status"] == "failed"
        assert "403" in users[name]["error"]
        assert _stored(org, name)["EnrollmentToken"] == org.defguard.current_token(name)


def test_clear_an_entra_group_keeps_members_without_a_defguard_user_unless_all(org: Org, tmp_path) -> None:
    ivan = org.graph.user("ivan@example.com")["id"]
    org.graph.set_attributes(ivan, "Defguard", {"EnrollmentToken": "b" * 32, "EnrollmentUrl": "https://e.example/"})
    argv = ["clear", "--group-name", org.scenario.group, "--group-source", "entra", "--report"]
    path = tmp_path / "clear.json"
    assert run_cli([*argv, str(path)], org.env).code in {0, 1}
    row = _users(path)["ivan@example.com"]
    assert row["status"] == "kept"
    assert "--all" in row["error"]
    assert org.graph.attributes(ivan) != {}
    assert run_cli([*argv, str(path), "--all"], org.env).code in {0, 1}
    assert _users(path)["ivan@example.com"]["status"] == "cleared"
    assert org.graph.attributes(ivan) == {}


# -- check -----------------------------------------------------------------------------------------------------


def _check(org: Org, env: dict[str, str] | None = None, *extra: str, group: str | None = None) -> Any:
    result = run_cli(["check", "--group-name", group or org.scenario.group, *extra], env or org.env)
    assert _mints(org.defguard) == []
    assert _patches(org.graph) == []
    assert org.defguard.issued_count == 0
    return result


def _line(output: str, title: str) -> tuple[str, str]:
    """The checklist line that starts with ``title`` (after the mark) and the hint line under it, if any."""
    lines = output.splitlines()
    for n, line in enumerate(lines):
        if line[8:].startswith(title):
            hint = lines[n + 1].strip() if n + 1 < len(lines) and lines[n + 1].startswith("        ") else ""
            return line, hint
    raise AssertionError(f"no line {title!r} in:\n{output}")


def test_check_a_ready_setup(org: Org) -> None:
    result = _check(org)
    assert result.code == 0, result.stdout + result.stderr
    assert "ready: provision can run" in result.stdout
    line, _ = _line(result.stdout, "Defguard reachable")
    assert line.startswith("  ok")
    assert org.defguard.component_version in line
    assert "10 members" in _line(result.stdout, "group 'VPN Users'")[0]
    assert "application" in _line(result.stdout, "Microsoft Graph sign-in")[0]
    for title in ("permission to write the attributes", "permission to read the attributes"):
        line, hint = _line(result.stdout, title)
        assert line.startswith("  warn")
        assert "not verified" in line
        assert "Attribute Assignment" in hint
    _, hint = _line(result.stdout, "permission to write the attributes")
    assert "CustomSecAttributeAssignment.ReadWrite.All" in hint


def test_check_an_entra_group(org: Org) -> None:
    result = _check(org, None, "--group-source", "entra")
    assert result.code == 0, result.stdout
    line, _ = _line(result.stdout, "Entra group 'VPN Users'")
    assert line.startswith("  ok")
    assert "user members" in line


def _broken(org: Org, setup: str) -> tuple[dict[str, str], list[str], str | None]:
    """Break one precondition; returns the environment, extra CLI arguments and the group name to use."""
    env, extra, group = org.env, [], None
    graph = org.graph
    if setup == "bad-token":
        env["DEFGUARD_API_TOKEN"] = "dg-" + "x" * 32
    elif setup == "non-admin":
        env["DEFGUARD_API_TOKEN"] = org.defguard.add_api_token("alice")
    elif setup == "gate-off":
        org.defguard.license_gate = False
    elif setup == "unreachable":
        env["DEFGUARD_URL"] = "http://127.0.0.1:9"
        extra = ["--retries", "0"]
    elif setup == "no-group":
        group = "Nope"
    elif setup == "group-case":
        group = "vpn users"
    elif setup == "graph-token":
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = "not-a-real-token"
    elif setup in {"no-read-users", "no-read-groups"}:
        permission = setup.removeprefix("no-").replace("-", "_")
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.add_principal("limited", **{permission: False})
        extra = ["--group-source", "entra"] if setup == "no-read-groups" else []
    elif setup == "no-set":
        extra = ["--attribute-set-name", "Missing"]
    else:
        graph.define_attribute_set("Broken", attributes=())
        token: dict[str, Any] = {}
        if setup == "integer":
            token = {"type": "Integer"}
        elif setup == "collection":
            token = {"is_collection": True}
        elif setup == "predefined":
            token = {"use_predefined_values_only": True, "allowed_values": ["x"]}
        elif setup == "deprecated":
            token = {"status": "Deprecated"}
        graph.define_attribute("Broken", "EnrollmentToken", **token)
        if setup != "attribute-missing":
            graph.define_attribute("Broken", "EnrollmentUrl")
        extra = ["--attribute-set-name", "Broken"]
    return env, extra, group


@pytest.mark.parametrize(
    ("setup", "title", "detail", "fix"),
    [
        ("bad-token", "API token valid", "Invalid API token", "create a new API token for an admin"),
        ("non-admin", "API token owner is an admin", "not allowed for normal users", "API token of a Defguard admin"),
        ("gate-off", "license: API tokens honoured", "Session is required", "license"),
        ("unreachable", "Defguard reachable", "cannot reach Defguard", "--url"),
        ("no-group", "group 'Nope'", "no group named 'Nope'", "check --group-name"),
        ("group-case", "group 'vpn users'", "no group named", "did you mean 'VPN Users'"),
        ("graph-token", "Microsoft Graph sign-in", "Graph refused the access token", "fresh token"),
        ("no-read-users", "permission to read users", "403", "User.Read.All"),
        ("no-read-groups", "Entra group 'VPN Users'", "403", "GroupMember.Read.All"),
        ("no-set", "attribute set 'Missing'", "no attribute set 'Missing'", "create the attribute set Missing"),
        ("attribute-missing", "Broken.EnrollmentUrl", "not defined", "add the attribute EnrollmentUrl"),
        ("integer", "Broken.EnrollmentToken", "has type Integer", "in a new attribute set"),
        ("collection", "Broken.EnrollmentToken", "multiple values", "cannot be changed"),
        ("predefined", "Broken.EnrollmentToken", "predefined values", "'Allow only predefined values' to No"),
        ("deprecated", "Broken.EnrollmentToken", "Deprecated", "reactivate it"),
    ],
)
def test_check_reports_each_broken_precondition(org: Org, setup: str, title: str, detail: str, fix: str) -> None:
    env, extra, group = _broken(org, setup)
    result = _check(org, env, *extra, group=group)
    assert result.code == 3, result.stdout + result.stderr
    line, hint = _line(result.stdout, title)
    assert line.startswith("  FAIL"), line
    assert detail in line
    assert hint.startswith("fix:"), hint
    assert fix in hint, hint
    assert result.stdout.splitlines()[-1].startswith("not ready: 1 problem ")
    assert org.defguard.admin_token not in result.stdout + result.stderr


def test_check_cannot_see_a_missing_write_permission_in_an_opaque_token(org: Org) -> None:
    env = org.env
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = org.graph.add_principal("reader", write_attributes=False)
    result = _check(org, env)
    assert result.code == 0  # not provably broken: reported as not verified, with what to grant
    line, hint = _line(result.stdout, "permission to write the attributes")
    assert line.startswith("  warn")
    assert "not verified" in line
    assert "CustomSecAttributeAssignment.ReadWrite.All" in hint
    assert "Attribute Assignment Administrator" in hint


def test_check_reads_permissions_from_a_jwt(org: Org) -> None:
    env = org.env
    client = "11111111-2222-3333-4444-555555555555"
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = _jwt_principal(
        org.graph,
        {"appid": client, "idtyp": "app", "roles": ["User.Read.All", "CustomSecAttributeDefinition.Read.All"]},
    )
    result = _check(org, env)
    assert result.code == 3
    assert f"application (client id {client})" in _line(result.stdout, "Microsoft Graph sign-in")[0]
    line, hint = _line(result.stdout, "permission to write the attributes")
    assert line.startswith("  FAIL")
    assert "no CustomSecAttributeAssignment.ReadWrite.All permission" in line
    assert "admin consent" in hint
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = _jwt_principal(
        org.graph, {"appid": client, "roles": ["User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"]}
    )
    result = _check(org, env)
    assert result.code == 0
    assert _line(result.stdout, "permission to write the attributes")[0].startswith("  ok")
    assert _line(result.stdout, "permission to read the attributes")[0].startswith("  ok")


def test_check_delegated_jwt_names_the_missing_scope_and_role(org: Org) -> None:
    env = org.env
    alice = org.scenario.entra_ids["alice"]
    claims = {"scp": "User.Read.All CustomSecAttributeDefinition.Read.All", "upn": "alice@example.com"}
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = _jwt_principal(org.graph, claims, user=alice)
    result = _check(org, env)
    assert result.code == 3
    assert "signed in as alice@example.com" in _line(result.stdout, "Microsoft Graph sign-in")[0]
    line, hint = _line(result.stdout, "permission to write the attributes")
    assert line.startswith("  FAIL")
    assert "no delegated scope CustomSecAttributeAssignment.ReadWrite.All" in line
    assert "Attribute Assignment Administrator" in hint
    claims["scp"] += " CustomSecAttributeAssignment.ReadWrite.All"
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = _jwt_principal(org.graph, claims, user=alice)
    result = _check(org, env)
    assert result.code == 0
    line, hint = _line(result.stdout, "permission to write the attributes")
    assert line.startswith("  warn")
    assert "does not show in the token" in line
    claims["wids"] = [ROLE_TEMPLATE_IDS["Attribute Assignment Administrator"]]
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = _jwt_principal(org.graph, claims, user=alice)
    result = _check(org, env)
    assert _line(result.stdout, "permission to write the attributes")[0].startswith("  ok")
    assert "ready: provision can run for this group" in result.stdout.splitlines()[-1]


def test_check_quiet_prints_only_problems(org: Org) -> None:
    org.defguard.license_gate = False
    result = _check(org, None, "--quiet")
    assert result.code == 3
    assert "  ok  " not in result.stdout
    assert "FAIL  license" in result.stdout


# -- the pure part ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "kind", "state"),
    [
        (None, None, CheckState.WARN),
        ({"roles": ["CustomSecAttributeAssignment.ReadWrite.All"]}, "application", CheckState.OK),
        ({"roles": ["customsecattributeassignment.readwrite.all"]}, "application", CheckState.OK),
        ({"idtyp": "app"}, "application", CheckState.FAIL),
        ({"scp": "User.Read"}, "delegated", CheckState.FAIL),
        ({"scp": "CustomSecAttributeAssignment.ReadWrite.All"}, "delegated", CheckState.WARN),
        (
            {
                "scp": "CustomSecAttributeAssignment.ReadWrite.All",
                "wids": [ROLE_TEMPLATE_IDS["Attribute Assignment Reader"]],
            },
            "delegated",
            CheckState.WARN,
        ),
        (
            {
                "scp": "CustomSecAttributeAssignment.ReadWrite.All",
                "wids": [ROLE_TEMPLATE_IDS["Attribute Assignment Administrator"]],
            },
            "delegated",
            CheckState.OK,
        ),
        ({"sub": "x"}, "unknown", CheckState.WARN),
    ],
)
def test_write_permission_from_claims(claims: dict[str, Any] | None, kind: str | None, state: CheckState) -> None:
    principal = GraphPrincipal.from_claims(claims)
    assert (principal.kind if principal else None) == kind
    item = permission_item(WRITE_ATTRIBUTES, principal)
    assert item.state is state
    if state is not CheckState.OK:
        assert item.hint
        missing = "Attribute Assignment Administrator" if "scp" in (claims or {}) and state is CheckState.WARN else ""
        assert (missing or "CustomSecAttributeAssignment.ReadWrite.All") in item.hint


def test_read_permission_accepts_the_write_scope() -> None:
    principal = GraphPrincipal.from_claims({"roles": ["CustomSecAttributeAssignment.ReadWrite.All"]})
    assert permission_item(READ_ATTRIBUTES, principal).state is CheckState.OK
