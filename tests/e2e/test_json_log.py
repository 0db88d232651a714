"""``--log-format json``: stderr carries only JSON objects, one per line: an event per member, one per run, and every
message and log line as an event; never a token. End to end against both emulators over HTTP."""

from __future__ import annotations

import json
from typing import Any

from defguard_entra.testing import DefguardEmulator
from helpers import Org, run_cli


def _events(stderr: str) -> list[dict[str, Any]]:
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    return [json.loads(line) for line in lines]  # every line parses, or the test fails here


def _issued(defguard: DefguardEmulator) -> list[str]:
    """Every token the emulator minted in the test, deleted ones too (test-only read of its table of kinds)."""
    with defguard.lock:
        return list(defguard._kinds)


def test_provision_emits_one_event_per_member_and_one_per_run(org: Org, tmp_path) -> None:
    path = tmp_path / "r.json"
    argv = ["provision", "--group-name", org.scenario.group, "--log-format", "json", "-v", "--report", str(path)]
    result = run_cli(argv, org.env)
    assert result.code == 1  # the sample organisation has members that need attention
    events = _events(result.stderr)
    report = json.loads(path.read_text())
    members = [e for e in events if e["event"] == "member"]
    assert sorted(e["username"] for e in members) == sorted(u["username"] for u in report["users"])
    alice = next(e for e in members if e["username"] == "alice")
    assert alice["status"] == "provisioned"
    assert alice["command"] == "provision"
    assert alice["entra_id"] == org.scenario.entra_ids["alice"]
    assert alice["user_principal_name"] == "alice@example.com"
    assert {"action", "token_state", "reason"} <= set(alice)
    erin = next(e for e in members if e["username"] == "erin")
    assert erin["status"] == "not_found"
    assert erin["reason"]
    runs = [e for e in events if e["event"] == "run"]
    assert len(runs) == 1
    assert events[-1] is runs[0]  # the run event comes last
    run = runs[0]
    assert run["exit_code"] == 1
    assert run["statuses"] == report["summary"]
    assert run["members"] == len(report["users"])
    assert run["group"] == org.scenario.group
    assert run["dry_run"] is False
    assert run["held"] is None
    assert isinstance(run["duration_seconds"], float)
    logs = [e for e in events if e["event"] == "log"]
    assert any(e["level"] == "info" and "preflight passed" in e["message"] for e in logs)  # -v's lines, as JSON
    assert {e["event"] for e in events} == {"member", "run", "log"}
    assert all(e["time"].endswith("Z") for e in events)
    issued = _issued(org.defguard)
    assert len(issued) >= len(org.scenario.provisioned)
    for token in issued:
        assert token not in result.stderr
        assert token not in result.stdout
        assert token[:8] not in result.stderr  # not even a prefix longer than the report's mask


def test_a_warning_is_a_json_event(org: Org) -> None:
    result = run_cli(
        [
            "status",
            "--group-name",
            org.scenario.group,
            "--log-format",
            "json",
            "--api-token",
            org.env["DEFGUARD_API_TOKEN"],
        ],
        {k: v for k, v in org.env.items() if k != "DEFGUARD_API_TOKEN"},
    )
    events = _events(result.stderr)
    warnings = [e for e in events if e["event"] == "log" and e["level"] == "warning"]
    assert any("visible to other local users" in e["message"] for e in warnings)
    assert org.env["DEFGUARD_API_TOKEN"] not in result.stderr


def test_a_run_that_cannot_start_is_an_error_event_and_a_run_event(org: Org) -> None:
    result = run_cli(["status", "--group-name", "No Such Group", "--log-format", "json"], org.env)
    assert result.code == 3
    events = _events(result.stderr)
    assert [e["event"] for e in events] == ["log", "run"]
    assert events[0]["level"] == "error"
    assert "No Such Group" in events[0]["message"]
    assert events[1]["exit_code"] == 3
    assert events[1]["error"] == events[0]["message"]
    assert events[1]["group"] == "No Such Group"


def test_usage_errors_are_json_too() -> None:
    for argv in (
        ["status", "--group-name", "G", "--log-format", "json", "--no-such-flag"],  # refused by argparse
        ["sync", "--group-name", "G", "--log-format=json", "--max-changes", "0"],  # refused by the CLI
    ):
        result = run_cli(argv)
        assert result.code == 2, argv
        events = _events(result.stderr)
        assert [e["event"] for e in events] == ["log", "run"], argv
        assert events[1]["exit_code"] == 2


def test_text_stays_the_default(org: Org) -> None:
    result = run_cli(["status", "--group-name", "No Such Group"], org.env)
    assert result.code == 3
    assert result.stderr.startswith("error: Defguard has no group named 'No Such Group'")
