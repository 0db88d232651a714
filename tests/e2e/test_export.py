"""``export``: one provisioning.json per member for device management, and a manifest accounting for every member.
End to end: the real CLI and clients against both emulators over 127.0.0.1."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from defguard_entra.testing import DefguardEmulator, Faults, GraphEmulator, environment
from helpers import Org, run_cli

URL = "https://enroll.example.com/"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "manifest.csv").read_text(encoding="utf-8").splitlines()))


def _assert_files_match_defguard(org: Org, out: Path) -> None:
    """Every provisioned member has exactly Defguard's current token in an owner-only file; nobody else has one."""
    members = {m["username"]: m for m in _manifest(out)["members"]}
    assert sorted(members) == sorted(org.scenario.expected)  # every member exactly once
    for name, expected in org.scenario.expected.items():
        member = members[name]
        if expected == "provisioned":
            upn = org.graph.user(org.scenario.entra_ids[name])["userPrincipalName"]
            assert member["status"] == "exported", member
            assert member["user_principal_name"] == upn
            assert member["path"] == f"{upn}/provisioning.json"
            path = out / member["path"]
            assert json.loads(path.read_bytes()) == {
                "enrollment_url": URL,
                "enrollment_token": org.defguard.current_token(name),
            }
            assert _mode(path) == 0o600
            assert _mode(path.parent) == 0o700
        else:
            assert member["status"] == expected, member
            assert member["path"] is None
            assert member["error"]
    exported = sorted(p.parent.name for p in out.glob("*/provisioning.json"))
    assert len(exported) == sum(1 for s in org.scenario.expected.values() if s == "provisioned")


def _secrets(org: Org) -> list[str]:
    tokens = [t for n in org.scenario.expected if (t := org.defguard.current_token(n))]
    return [org.defguard.admin_token, org.graph.admin_token, *tokens]


def test_export_after_provision(org: Org, tmp_path: Path) -> None:
    assert run_cli(["provision", "--group-name", org.scenario.group], org.env).code == 1
    out = tmp_path / "out"
    result = run_cli(["export", "--group-name", org.scenario.group, "--output-dir", str(out)], org.env)
    assert result.code == 1, result.stderr  # not_found, ambiguous and no_email members need attention
    _assert_files_match_defguard(org, out)
    assert _mode(out) == 0o700
    assert _mode(out / "manifest.json") == 0o600
    assert _mode(out / "manifest.csv") == 0o600
    rows = _rows(out)
    assert {r["username"]: r["status"] for r in rows} == {
        n: ("exported" if s == "provisioned" else s) for n, s in org.scenario.expected.items()
    }
    assert list(rows[0]) == ["username", "email", "status", "user_principal_name", "path", "file", "error"]
    assert {r["file"] for r in rows if r["status"] == "exported"} == {"written"}
    assert "5 of 10 members have a provisioning.json" in result.stdout
    for secret in _secrets(org):
        assert secret not in result.stdout + result.stderr
        assert secret not in (out / "manifest.json").read_text() + (out / "manifest.csv").read_text()
    assert org.defguard.issued_count == len(org.scenario.provisioned)  # export itself mints nothing
    assert org.graph.write_count == len(org.scenario.provisioned) + 1  # and the write probe, which changes nothing


def test_export_with_provision_and_deep_links_in_one_run(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--deep-links"]
    result = run_cli([*argv, "--no-progress"], org.env)
    assert result.code == 1, result.stderr
    assert org.defguard.issued_count == len(org.scenario.provisioned)
    _assert_files_match_defguard(org, out)
    members = {m["username"]: m for m in _manifest(out)["members"]}
    for name, expected in org.scenario.expected.items():
        link = members[name]["deep_link"]
        if expected != "provisioned":
            assert link is None
            continue
        parts = urlsplit(link)
        assert (parts.scheme, parts.netloc) == ("defguard", "addinstance")
        assert parse_qs(parts.query) == {"token": [org.defguard.current_token(name)], "url": [URL]}
    assert "deep_link" in _rows(out)[0]
    assert _mode(out / "manifest.csv") == 0o600  # deep links hold tokens
    assert "provision of group" in result.stdout  # the provision summary is shown first
    for secret in _secrets(org):
        assert secret not in result.stdout + result.stderr


def test_second_export_is_byte_identical(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out)]
    assert run_cli([*argv, "--provision", "--no-progress"], org.env).code == 1
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = run_cli(argv, org.env)
    assert again.code == 1
    assert "0 written, 0 replaced, 5 unchanged" in again.stdout
    assert {r["file"] for r in _rows(out) if r["status"] == "exported"} == {"unchanged"}
    second = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name == "provisioning.json"}
    assert second == {p: b for p, b in first.items() if p.name == "provisioning.json"}


def test_reprovisioning_replaces_the_files(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--no-progress"]
    assert run_cli(argv, org.env).code == 1
    old = org.defguard.current_token("alice")
    assert run_cli(argv, org.env).code == 1
    assert org.defguard.current_token("alice") != old
    _assert_files_match_defguard(org, out)
    assert {r["file"] for r in _rows(out) if r["status"] == "exported"} == {"replaced"}


def test_clean_group_exits_0(defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path) -> None:
    graph.define_attribute_set("Defguard")
    for name in ("ann", "ben"):
        defguard.add_user(name, email=f"{name}@example.com")
        graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
    defguard.add_user("cid", email="cid@example.com", active=False)
    defguard.add_group("Clean", ["ann", "ben", "cid"])
    out = tmp_path / "out"
    argv = ["export", "--group-name", "Clean", "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli(argv, environment(defguard, graph))
    assert result.code == 0, result.stdout + result.stderr
    assert {m["username"]: m["status"] for m in _manifest(out)["members"]} == {
        "ann": "exported",
        "ben": "exported",
        "cid": "disabled",
    }


def test_unprovisioned_members_are_not_set(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(["export", "--group-name", org.scenario.group, "--output-dir", str(out)], org.env)
    assert result.code == 1
    statuses = {m["username"]: m["status"] for m in _manifest(out)["members"]}
    assert {n for n, s in statuses.items() if s == "not_set"} == {
        n for n, s in org.scenario.expected.items() if s == "provisioned"
    }
    assert not list(out.glob("*/provisioning.json"))
    assert "Attribute Assignment Reader" in result.stdout  # the note: maybe not permitted


def test_unreadable_attributes_write_no_file(org: Org, tmp_path: Path) -> None:
    """A sign-in without the reader role gets null for everyone: no files, a note naming the role, exit 1."""
    assert run_cli(["provision", "--group-name", org.scenario.group], org.env).code == 1
    env = {**org.env, "DEFGUARD_ENTRA_GRAPH_TOKEN": org.graph.add_principal("no-role", read_attributes=False)}
    out = tmp_path / "out"
    result = run_cli(["export", "--group-name", org.scenario.group, "--output-dir", str(out)], env)
    assert result.code == 1
    assert "none of the 5 resolved members has readable attributes" in result.stdout
    assert "Attribute Assignment Reader" in result.stdout
    assert not list(out.glob("*/provisioning.json"))
    assert len(_manifest(out)["members"]) == len(org.scenario.expected)


def test_incomplete_pair_is_failed_without_a_file(org: Org, tmp_path: Path) -> None:
    assert run_cli(["provision", "--group-name", org.scenario.group], org.env).code == 1
    org.graph.set_attributes(org.scenario.entra_ids["alice"], "Defguard", {"EnrollmentToken": None})
    out = tmp_path / "out"
    result = run_cli(["export", "--group-name", org.scenario.group, "--output-dir", str(out)], org.env)
    assert result.code == 1
    alice = next(m for m in _manifest(out)["members"] if m["username"] == "alice")
    assert alice["status"] == "failed"
    assert "incomplete" in alice["error"]
    assert "holds EnrollmentUrl but no EnrollmentToken" in alice["error"]
    assert not (out / "alice@example.com").exists()


def test_failed_provision_write_is_not_exported(org: Org, tmp_path: Path) -> None:
    """Provision cancels the old token in Defguard even when the Graph write then fails: the stored one is dead."""
    alice = org.scenario.entra_ids["alice"]
    org.graph.set_attributes(alice, "Defguard", {"EnrollmentToken": "D" * 32, "EnrollmentUrl": URL})
    env = org.env
    org.graph.item_faults = Faults(rates={503: 1.0}, endpoints={"user-patch"})  # every write fails
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli([*argv, "--retries", "0"], env)
    assert result.code == 1
    member = next(m for m in _manifest(out)["members"] if m["username"] == "alice")
    assert member["status"] == "failed"
    assert "provision failed for this member in this run" in member["error"]
    assert not list(out.glob("*/provisioning.json"))
    assert "D" * 32 not in result.stdout + result.stderr


def test_guest_upn_gets_a_safe_directory(defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path) -> None:
    graph.define_attribute_set("Defguard")
    upn = "jane_contoso.com#EXT#@tenant.onmicrosoft.com"
    defguard.add_user("jane", email="jane@contoso.com")
    graph.add_user(upn, mail="jane@contoso.com")
    defguard.add_group("Guests", ["jane"])
    out = tmp_path / "out"
    argv = ["export", "--group-name", "Guests", "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli(argv, environment(defguard, graph))
    assert result.code == 0, result.stdout + result.stderr
    member = _manifest(out)["members"][0]
    assert member["user_principal_name"] == upn
    assert member["path"] == "jane_contoso.com%23EXT%23@tenant.onmicrosoft.com/provisioning.json"
    assert json.loads((out / member["path"]).read_text())["enrollment_token"] == defguard.current_token("jane")
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["jane_contoso.com%23EXT%23@tenant.onmicrosoft.com"]


def test_stale_directories_are_reported_not_deleted(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "left.over@example.com").mkdir(parents=True)
    (out / "left.over@example.com" / "provisioning.json").write_text("{}")
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli(argv, org.env)
    assert result.code == 1
    assert "left.over@example.com" in result.stderr
    assert "not part of this export" in result.stderr
    assert (out / "left.over@example.com" / "provisioning.json").exists()


def test_output_dir_open_to_others_is_warned_about(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli(argv, org.env)
    assert result.code == 1
    assert "open to other local users" in result.stderr
    assert _mode(out) == 0o755  # not ours to change
    assert all(_mode(p) == 0o600 for p in out.rglob("*") if p.is_file())
    assert all(_mode(p) == 0o700 for p in out.iterdir() if p.is_dir())


def test_enrolled_members_exported_with_desktop_tokens(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "--no-progress"]
    result = run_cli([*argv, "--enrolled", "desktop"], org.env)
    assert result.code == 1
    bob = next(m for m in _manifest(out)["members"] if m["username"] == "bob")
    assert bob["status"] == "exported"
    token = json.loads((out / bob["path"]).read_text())["enrollment_token"]
    assert token == org.defguard.current_token("bob")
    assert org.defguard.token_kind(token) == "desktop"


def test_entra_group_source(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--group-source", "entra", "--output-dir", str(out)]
    result = run_cli([*argv, "--provision", "--no-progress"], org.env)
    assert result.code == 1
    members = _manifest(out)["members"]
    ivan = next(m for m in members if m["user_principal_name"] == "ivan@example.com")
    assert ivan["status"] == "not_in_defguard"
    alice = next(m for m in members if m["username"] == "alice")
    assert json.loads((out / alice["path"]).read_text())["enrollment_token"] == org.defguard.current_token("alice")


def test_preflight_failure_exits_3_and_writes_nothing(org: Org, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(["export", "--group-name", "Nope", "--output-dir", str(out)], org.env)
    assert result.code == 3
    assert "no group named" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-name", "G"], "--output-dir"),
        (["--output-dir", "{tmp}"], "--group-name is required"),
        (["--group-name", "G", "--output-dir", "{tmp}/file"], "is a file"),
        (["--group-name", "G", "--output-dir", "{tmp}/no/such/dir"], "does not exist"),
        (["--group-name", "G", "--output-dir", "{tmp}", "--only-missing"], "only with --provision"),
        (["--group-name", "G", "--output-dir", "{tmp}", "--enrollment-token-expiration-time", "1d"], "--provision"),
        (["--group-name", "G", "--output-dir", "{tmp}", "--provision", "-EnrollmentTokenExpirationTime", "1x"], "1x"),
        (["--group-name", "G", "--output-dir", "{tmp}", "--url", "ftp://x"], "--url"),
        (["--group-name", "G", "--output-dir", "{tmp}", "--attribute-set-name", "a-b"], "--attribute-set-name"),
    ],
)
def test_usage_errors_exit_2_before_any_request(org: Org, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("x")
    result = run_cli(["export", *(a.replace("{tmp}", str(tmp_path)) for a in args)], org.env)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert org.defguard.requests == []
    assert org.graph.requests == []


def test_no_token_in_any_output_at_debug_verbosity(org: Org, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    out = tmp_path / "out"
    argv = ["export", "--group-name", org.scenario.group, "--output-dir", str(out), "--provision", "-vv"]
    result = run_cli(argv, org.env)
    assert result.code == 1
    everything = result.stdout + result.stderr + caplog.text
    secrets = _secrets(org)
    assert len(secrets) >= 6
    for secret in secrets:
        assert secret not in everything
