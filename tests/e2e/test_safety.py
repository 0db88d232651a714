"""Operating safely: dry run, --only-missing, secrets, interruption, bad input and the audit trail.

Everything runs the real CLI (in-process, or as a real ``python -m defguard_entra`` process for signals) against
both emulators over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from defguard_entra.testing import DefguardEmulator, Faults, GraphEmulator, environment
from helpers import Org, run_cli

PROVISIONED = ("alice", "grace", "heidi", "oneil", "peggy")
COMMANDS = ("provision", "status", "clear", "check")


def _users(path: Path) -> dict[str, dict[str, Any]]:
    return {u["username"] or u["user_principal_name"]: u for u in json.loads(path.read_text())["users"]}


def _mints(defguard: DefguardEmulator) -> list[Any]:
    return defguard.requests_to("start_enrollment") + defguard.requests_to("start_desktop")


def _patches(graph: GraphEmulator) -> list[Any]:
    return [r for r in graph.requests if r.method == "PATCH"]


def _snapshot(org: Org) -> dict[str, Any]:
    """Everything both emulators hold that a run could change."""
    dg = org.defguard
    names = [u["username"] for u in dg.users]
    entra = [*org.scenario.entra_ids.values(), "frank.jones@example.com", "ivan@example.com"]
    return {
        "users": dg.users,
        "groups": dg.groups,
        "issued": dg.issued_count,
        "tokens": {n: [(t.token, t.kind, t.used_at, t.expires_at) for t in dg.tokens_of(n)] for n in names},
        "entra": [org.graph.user(i) for i in entra],
        "writes": org.graph.write_count,
    }


def _reads(org: Org) -> set[tuple[str, str]]:
    return {
        (name, r.endpoint)
        for name, emulator in (("defguard", org.defguard), ("graph", org.graph))
        for r in emulator.requests
        if r.method == "GET"
    }


def _assert_consistent(defguard: DefguardEmulator, graph: GraphEmulator, ids: dict[str, str]) -> None:
    """Entra holds exactly the token Defguard accepts now, for every member; no dead token anywhere."""
    for name, entra_id in ids.items():
        token = defguard.current_token(name)
        assert token is not None, name
        assert graph.attributes(entra_id)["Defguard"]["EnrollmentToken"] == token, name


# -- dry run ---------------------------------------------------------------------------------------------------


def test_dry_run_reads_what_provision_reads_and_changes_nothing(org: Org, tmp_path: Path) -> None:
    before = _snapshot(org)
    path = tmp_path / "dry.json"
    result = run_cli(["provision", "--group-name", org.scenario.group, "--dry-run", "--report", str(path)], org.env)
    assert result.code == 1, result.stderr  # the same exit code the real run will have
    assert _snapshot(org) == before
    assert _mints(org.defguard) == []
    assert _patches(org.graph) == []
    users = _users(path)
    assert {n for n, u in users.items() if u["status"] == "planned"} == set(PROVISIONED)
    # 1.6 cannot show a password, so a dry run plans enrollment for peggy; the real run falls back to desktop
    planned = {**org.scenario.token_kinds, **({"peggy": "enrollment"} if org.defguard.version == "1.6" else {})}
    assert {n: users[n]["token_kind"] for n in PROVISIONED} == planned
    assert all(u["enrollment_token"] is None for u in users.values())
    assert json.loads(path.read_text())["dry_run"] is True
    assert "provision (dry run) of group" in result.stdout
    dry_reads = _reads(org)
    org.defguard.reset_log()
    org.graph.reset_log()
    real = tmp_path / "real.json"
    assert run_cli(["provision", "--group-name", org.scenario.group, "--report", str(real)], org.env).code == 1
    assert _reads(org) == dry_reads  # every read the real run makes, and no other
    assert {n: u["status"] for n, u in _users(real).items()} == {
        n: u["status"] for n, u in users.items()
    } | dict.fromkeys(PROVISIONED, "provisioned")


def test_dry_run_with_only_missing_after_a_run(org: Org, tmp_path: Path) -> None:
    assert run_cli(["--group-name", org.scenario.group], org.env).code == 1
    org.graph.set_attributes(org.scenario.entra_ids["grace"], "Defguard", {"EnrollmentToken": None})
    before = _snapshot(org)
    org.defguard.reset_log()
    path = tmp_path / "dry.json"
    argv = ["--group-name", org.scenario.group, "--dry-run", "--only-missing", "--report", str(path)]
    assert run_cli(argv, org.env).code == 1
    assert _snapshot(org) == before
    assert _mints(org.defguard) == []
    users = _users(path)
    assert users["grace"]["status"] == "planned"
    assert {users[n]["status"] for n in ("alice", "heidi", "oneil")} == {"existing"}


# -- only missing ----------------------------------------------------------------------------------------------


def test_only_missing_mints_nothing_on_a_stable_group(org: Org, tmp_path: Path) -> None:
    assert run_cli(["--group-name", org.scenario.group], org.env).code == 1
    tokens = {n: org.defguard.current_token(n) for n in PROVISIONED}
    org.defguard.reset_log()
    org.graph.reset_log()
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", org.scenario.group, "--only-missing", "--report", str(path)], org.env)
    assert result.code == 1  # not_found, ambiguous, no_email still need attention
    assert org.defguard.requests_to("start_enrollment") == []
    assert _patches(org.graph) == []
    assert {n: u["status"] for n, u in _users(path).items() if n in PROVISIONED} == dict.fromkeys(
        PROVISIONED, "existing"
    )
    assert {n: org.defguard.current_token(n) for n in PROVISIONED} == tokens  # nobody's token was rotated
    reads = [r for r in org.graph.requests if r.endpoint == "batch-item:user-get"]
    assert len(reads) == len(PROVISIONED)  # the stored values, read for them in bulk (one $batch)
    assert org.graph.request_counts["batch"] <= 4


def test_only_missing_re_provisions_a_half_set_pair(org: Org, tmp_path: Path) -> None:
    assert run_cli(["--group-name", org.scenario.group], org.env).code == 1
    ids = org.scenario.entra_ids
    org.graph.set_attributes(ids["alice"], "Defguard", {"EnrollmentToken": None})  # URL without token
    org.graph.set_attributes(ids["heidi"], "Defguard", {"EnrollmentUrl": None})  # token without URL
    kept = {n: org.defguard.current_token(n) for n in ("grace", "oneil")}
    org.defguard.reset_log()
    path = tmp_path / "r.json"
    assert run_cli(["--group-name", org.scenario.group, "--only-missing", "--report", str(path)], org.env).code == 1
    users = _users(path)
    assert {n: users[n]["status"] for n in PROVISIONED} == {
        "alice": "provisioned",
        "heidi": "provisioned",
        "grace": "existing",
        "oneil": "existing",
        "peggy": "existing",
    }
    assert len(_mints(org.defguard)) == 2
    assert {n: org.defguard.current_token(n) for n in ("grace", "oneil")} == kept
    _assert_consistent(org.defguard, org.graph, {n: ids[n] for n in PROVISIONED})


def test_only_missing_help_says_it_trusts_what_is_stored() -> None:
    result = run_cli(["provision", "--help"])
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "--only-missing" in text
    assert "trusts what is stored" in text


def test_help_of_each_command_lists_its_statuses() -> None:
    status = " ".join(run_cli(["status", "--help"]).stdout.split())
    for value in ("set", "partial", "not_set", "no_email", "not_found", "ambiguous", "not_in_defguard", "failed"):
        assert value in status
    clear = " ".join(run_cli(["clear", "--help"]).stdout.split())
    for value in ("cleared", "not_set", "kept", "planned", "not_found", "ambiguous", "failed", "--all", "--dry-run"):
        assert value in clear
    check = " ".join(run_cli(["check", "--help"]).stdout.split())
    assert "not verified" in check


# -- secrets ---------------------------------------------------------------------------------------------------


def test_no_secret_in_any_output_or_log_at_debug_verbosity(org: Org, tmp_path: Path, caplog) -> None:
    caplog.set_level("DEBUG")
    group = org.scenario.group
    runs = [
        ["provision", "--group-name", group],
        ["provision", "--group-name", group, "--only-missing"],
        ["provision", "--group-name", group, "--dry-run"],
        ["status", "--group-name", group],
        ["clear", "--group-name", group, "--dry-run"],
        ["check", "--group-name", group],
        ["clear", "--group-name", group, "--all"],
    ]
    seen: list[str] = []
    minted: set[str] = set()
    for n, argv in enumerate(runs):
        report = tmp_path / f"r{n}.json"
        extra = ["--report", str(report)] if argv[0] != "check" else []
        result = run_cli([*argv, *extra, "-vv", "--no-progress"], org.env)
        assert result.code in {1, 0}, (argv, result.stderr)
        seen += [result.stdout, result.stderr, report.read_text() if report.exists() else ""]
        minted |= {t for name in org.scenario.expected if (t := org.defguard.current_token(name))}
    seen.append(caplog.text)
    everything = "\n".join(seen)
    assert "DEBUG" in everything  # the runs did log at debug level
    assert len(minted) >= 4
    for secret in (org.defguard.admin_token, org.graph.admin_token, *minted):
        assert secret not in everything
        assert secret[:12] not in everything  # not even a long prefix


def test_api_token_from_stdin_and_file_for_every_command(org: Org, tmp_path: Path) -> None:
    env = org.env
    token = env.pop("DEFGUARD_API_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    for command in ("status", "clear", "check"):
        argv = [command, "--group-name", org.scenario.group]
        from_file = run_cli([*argv, "--api-token-file", str(token_file)], env)
        from_stdin = run_cli([*argv, "--api-token", "-"], env, stdin=token + "\n")
        assert from_file.code == from_stdin.code, (from_file.stderr, from_stdin.stderr)
        assert from_file.code in {0, 1}
        assert "visible to other local users" not in from_file.stderr + from_stdin.stderr
    literal = run_cli(["status", "--group-name", org.scenario.group, "--api-token", token], env)
    assert literal.code == 1  # works, as documented …
    assert "visible to other local users" in literal.stderr  # … with a warning
    assert token not in literal.stdout + literal.stderr


# -- interruption ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_then_a_rerun_leaves_every_member_consistent(tmp_path: Path, signum: int) -> None:
    latency = Faults(latency=0.05)
    with (
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com", faults=latency) as defguard,
        GraphEmulator(faults=Faults(latency=0.05)) as graph,
    ):
        graph.define_attribute_set("Defguard")
        names = [f"user{n:03}" for n in range(200)]
        ids = {}
        for name in names:
            defguard.add_user(name, email=f"{name}@example.com")
            ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        defguard.add_group("Nightly", names)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment(defguard, graph)}
        report = tmp_path / "interrupted.json"
        argv = ["provision", "--group-name", "Nightly", "--concurrency", "2", "--no-progress", "--report", str(report)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "defguard_entra", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while defguard.issued_count < 5:  # minting has started: the signal lands mid-run
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run never started minting"
                time.sleep(0.01)
            proc.send_signal(signum)
            signalled = time.monotonic()
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, stderr
        assert time.monotonic() - signalled < 30  # in-flight work is bounded
        assert "stopping" in stderr
        data = json.loads(report.read_text())
        assert data["interrupted"] is True
        statuses = {u["username"]: u["status"] for u in data["users"]}
        assert set(statuses.values()) == {"provisioned", "interrupted"}, data["summary"]
        done = [n for n, s in statuses.items() if s == "provisioned"]
        left = [n for n, s in statuses.items() if s == "interrupted"]
        assert done
        assert left
        _assert_consistent(defguard, graph, {n: ids[n] for n in done})  # the in-flight chunks were written
        for name in left:
            assert defguard.tokens_of(name) == []  # not reached: nothing minted …
            assert graph.attributes(ids[name]) == {}  # … and nothing written
        for secret in (defguard.admin_token, graph.admin_token):
            assert secret not in stdout + stderr

        defguard.reset_log()
        rerun = tmp_path / "rerun.json"
        result = run_cli(["provision", "--group-name", "Nightly", "--only-missing", "--report", str(rerun)], env)
        assert result.code == 0, result.stderr
        again = {u["username"]: u["status"] for u in json.loads(rerun.read_text())["users"]}
        assert again == {n: "existing" if n in done else "provisioned" for n in names}
        assert len(defguard.requests_to("start_enrollment")) == len(left)
        _assert_consistent(defguard, graph, ids)


def test_clear_stops_between_slices_when_asked(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    """The library form of an interruption: stop is set after the first slice; the rest is reported, untouched."""
    from defguard_entra import ProvisioningService, Settings

    graph.define_attribute_set("Defguard")
    names = [f"user{n:03}" for n in range(100)]
    ids = {}
    for name in names:
        defguard.add_user(name, email=f"{name}@example.com", enrolled=True, devices=1)
        ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        graph.set_attributes(ids[name], "Defguard", {"EnrollmentToken": "t" * 32, "EnrollmentUrl": "https://e/"})
    defguard.add_group("Done", names)
    stop = threading.Event()
    settings = attrs.evolve(Settings.from_env(environment(defguard, graph)), graph_write_rate=0)
    with ProvisioningService.from_settings(settings) as service:
        report = service.clear("Done", progress=lambda done, total: stop.set(), stop=stop)
        assert report.interrupted
        cleared = {o.username for o in report.by_status("cleared")}
        left = {o.username for o in report.by_status("interrupted")}
        assert len(cleared) == 80  # the first slice (four batches) finished
        assert cleared | left == set(names)
        assert all(graph.attributes(ids[n]) == {} for n in cleared)
        assert all(graph.attributes(ids[n])["Defguard"]["EnrollmentToken"] == "t" * 32 for n in left)
        stop.set()
        status = service.status("Done", stop=stop)  # a stop before the reads: nothing is claimed about values
        assert {o.status.value for o in status.outcomes} == {"interrupted"}
        assert status.interrupted


# -- bad input -------------------------------------------------------------------------------------------------

_EVERY_COMMAND = [
    (["--url", "defguard.example.com"], "--url"),
    (["--url", "ftp://defguard.example.com"], "--url"),
    (["--url", "https://"], "--url"),
    (["--url", "https://user:pw@defguard.example.com"], "--url"),
    (["--attribute-set-name", "1Defguard"], "--attribute-set-name"),
    (["--attribute-set-name", "Def_guard"], "--attribute-set-name"),
    (["--attribute-set-name", "A" * 33], "--attribute-set-name"),
    (["--graph-url", "http://graph.example.com/v1.0"], "--graph-url"),
    (["--graph-url", "https://graph.microsoft.com"], "--graph-url"),
    (["--quiet", "-v"], "--quiet and --verbose"),
    (["--api-token", "dg-x", "--api-token-file", "token.txt"], "not both"),
    (["--api-token-file", "/nonexistent/token"], "--api-token-file"),
    (["--retries", "-1"], "--retries"),
    (["--timeout", "0"], "--timeout"),
    (["--cloud", "mars"], "invalid choice"),
    (["--group-source", "ldap"], "invalid choice"),
]
_REPORT_COMMANDS = [
    (["--report", "/nonexistent/dir/r.json"], "does not exist"),
    (["--report", "r.txt"], ".json or .csv"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        *_EVERY_COMMAND,
        ([], "--group-name is required"),
        (["--group-name", "  "], "--group-name"),
    ],
)
def test_bad_input_exits_2_before_any_request(org: Org, command: str, args: list[str], message: str) -> None:
    group = [] if any(a == "--group-name" for a in args) or message.startswith("--group-name") else ["-GroupName", "G"]
    _assert_usage_error(org, [command, *group, *args], message)


@pytest.mark.parametrize("command", ["provision", "status", "clear"])
@pytest.mark.parametrize(("args", "message"), _REPORT_COMMANDS)
def test_bad_report_path_exits_2(org: Org, command: str, args: list[str], message: str) -> None:
    _assert_usage_error(org, [command, "--group-name", "G", *args], message)


@pytest.mark.parametrize("command", ["provision", "status", "clear"])
def test_report_that_would_overwrite_the_token_file(org: Org, tmp_path: Path, command: str) -> None:
    token = tmp_path / "token.json"
    token.write_text(org.defguard.admin_token)
    argv = [command, "--group-name", "G", "--api-token-file", str(token), "--report", str(token)]
    _assert_usage_error(org, argv, "would overwrite --api-token-file")
    assert token.read_text() == org.defguard.admin_token


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_report_directory(org: Org, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for command in ("provision", "status", "clear"):
        _assert_usage_error(org, [command, "--group-name", "G", "--report", str(locked / "r.json")], "not writable")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--enrollment-token-expiration-time", "24H"], "did you mean 'h'"),
        (["--enrollment-token-expiration-time", "soon"], "--enrollment-token-expiration-time"),
        (["--enrollment-token-expiration-time", "-1h"], "'-1h' is negative"),
        (["--enrollment-token-expiration-time=-1h"], "'-1h' is negative"),
        (["-EnrollmentTokenExpirationTime", "-1h"], "'-1h' is negative"),
        (["--enrollment-token-expiration-time", "١h"], "ASCII digits 0-9"),
        (["--enrollment-token-expiration-time", "1M"], "1M is a month: did you mean 1m (minutes)?"),
        (["--dry-run", "--reveal-tokens", "--report", "r.json"], "nothing to reveal"),
        (["--reveal-tokens"], "--reveal-tokens needs --report"),
        (["--concurrency", "0"], "--concurrency"),
        (["--graph-write-rate", "-1"], "--graph-write-rate"),
    ],
)
def test_provision_only_bad_input(org: Org, args: list[str], message: str) -> None:
    _assert_usage_error(org, ["provision", "--group-name", "G", *args], message)


def test_clear_options_are_only_for_clear(org: Org) -> None:
    _assert_usage_error(org, ["status", "--group-name", "G", "--all"], "unrecognized arguments: --all")
    _assert_usage_error(org, ["clear", "--group-name", "G", "--graph-write-rate", "-2"], "--graph-write-rate")


def test_a_token_shaped_group_name_is_shown_not_masked(org: Org) -> None:
    name = "A1b2" * 8  # 32 alphanumerics, the shape of an enrollment token, but a group name
    result = run_cli(["status", "--group-name", name], org.env)
    assert result.code == 3, result.stderr
    assert name in result.stderr
    assert "***" not in result.stderr


def _assert_usage_error(org: Org, argv: list[str], message: str) -> None:
    result = run_cli(argv, org.env)
    assert result.code == 2, (argv, result.stdout, result.stderr)
    assert message in result.stderr, (argv, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, naming the flag
    assert result.stderr.startswith("error: ")
    assert org.defguard.requests == []
    assert org.graph.requests == []


# -- audit -----------------------------------------------------------------------------------------------------


def test_report_records_who_ran_it_with_what_and_how_long(org: Org, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    argv = ["--group-name", org.scenario.group, "--enrollment-token-expiration-time", "2d", "--report", str(path)]
    assert run_cli(argv, org.env).code == 1
    text = path.read_text()
    report = json.loads(text)
    audit = report["audit"]
    assert audit["defguard_user"] == "admin"
    assert audit["graph_principal"] == {"type": "application", "user": None, "client_id": None}
    assert audit["graph_url"] == org.graph.url
    options = audit["options"]
    assert options["command"] == "provision"
    assert options["group_name"] == org.scenario.group
    assert options["enrollment_token_expiration_time"] == "2d"
    assert options["enrolled"] == "auto"
    assert options["api_token_source"] == "environment"
    assert options["graph_auth"] == "token"
    assert options["defguard_url"] == org.defguard.url
    assert options["attribute_set"] == "Defguard"
    assert set(audit["timings"]) == {"preflight_seconds", "resolve_seconds", "write_seconds"}
    assert all(v >= 0 for v in audit["timings"].values())
    assert report["defguard"]["version"] == org.defguard.component_version
    assert report["tool_version"]
    assert report["duration_seconds"] >= 0
    for secret in (org.defguard.admin_token, org.graph.admin_token):
        assert secret not in text


def test_audit_names_a_signed_in_user_and_a_literal_token_source(org: Org, tmp_path: Path) -> None:
    env = org.env
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = org.graph.add_principal("alice-session", user="alice@example.com")
    token = env.pop("DEFGUARD_API_TOKEN")
    path = tmp_path / "status.json"
    argv = ["status", "--group-name", org.scenario.group, "--api-token", token, "--report", str(path)]
    result = run_cli(argv, env)
    assert result.code == 1, result.stderr
    text = path.read_text()
    audit = json.loads(text)["audit"]
    assert audit["graph_principal"] == {"type": "delegated", "user": "alice@example.com", "client_id": None}
    assert audit["options"]["api_token_source"] == "command line"
    assert "api_token" not in audit["options"]
    assert token not in text
    assert set(audit["timings"]) == {"preflight_seconds", "resolve_seconds", "read_seconds"}


def test_audit_of_clear_records_its_options(org: Org, tmp_path: Path) -> None:
    path = tmp_path / "clear.json"
    argv = ["clear", "--group-name", org.scenario.group, "--all", "--dry-run", "--report", str(path)]
    assert run_cli(argv, org.env).code == 1
    options = json.loads(path.read_text())["audit"]["options"]
    assert options["all"] is True
    assert options["all_members"] is True
    assert options["dry_run"] is True
    assert options["command"] == "clear"


def test_auto_auth_uses_flags_with_a_secret_from_the_environment() -> None:
    """--tenant-id/--client-id plus AZURE_CLIENT_SECRET is a service principal, not an interactive sign-in."""
    from defguard_entra.config import AuthMode, GraphSettings

    settings = GraphSettings(tenant_id="t", client_id="c", environment={"AZURE_CLIENT_SECRET": "s"})
    assert settings.resolved_auth() is AuthMode.ENVIRONMENT
    assert GraphSettings(environment={"AZURE_CLIENT_SECRET": "s"}).resolved_auth() is AuthMode.INTERACTIVE
