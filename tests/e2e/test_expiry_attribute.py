"""The optional third attribute, ``EnrollmentTokenExpiresAt``, end to end: the real CLI and clients against both
emulators over HTTP. ``provision`` stores each token's expiry in the same write as the token when the set defines
it (and equal to Defguard's own record), never sends it to a set that does not; ``clear`` nulls it; ``status``
shows it; ``check`` says whether the set defines it (a warning, never a failure)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from defguard_entra.testing import DefguardEmulator, GraphEmulator, seed_sample_organisation
from defguard_entra.testing._scenarios import EXPIRY_SLACK
from helpers import Org, run_cli

EXPIRES = "EnrollmentTokenExpiresAt"


def _provision(org: Org, *extra: str) -> dict[str, dict[str, Any]]:
    result = run_cli(["provision", "--group-name", org.scenario.group, "--no-progress", *extra], org.env)
    assert result.code == 1, result.stderr  # the sample organisation has members that need attention
    return {name: _stored(org, name) for name in org.scenario.provisioned}


def _stored(org: Org, name: str) -> dict[str, Any]:
    return org.graph.attributes(org.scenario.entra_ids[name]).get("Defguard", {})


def _patched(graph: GraphEmulator) -> list[dict[str, Any]]:
    return [r.json()["customSecurityAttributes"]["Defguard"] for r in graph.requests if r.method == "PATCH"]


def _batched(graph: GraphEmulator) -> list[dict[str, Any]]:
    """Every PATCH item of every ``$batch``: the writes as Graph received them."""
    items = []
    for request in graph.requests:
        if request.endpoint == "batch":
            items += [i for i in request.json()["requests"] if i["method"] == "PATCH"]
    return [i["body"]["customSecurityAttributes"]["Defguard"] for i in items]


def _parse(value: str) -> dt.datetime:
    assert len(value) == 20, value
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value)


@pytest.mark.parametrize("lifetime", [None, "2d"], ids=["server-default", "asked"])
def test_provision_stores_each_tokens_expiry_as_defguard_records_it(
    defguard2: DefguardEmulator, graph: GraphEmulator, lifetime: str | None
) -> None:
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph))
    extra = ["--enrollment-token-expiration-time", lifetime] if lifetime else []
    stored = _provision(org, *extra)
    for name, values in stored.items():
        token = values["EnrollmentToken"]
        assert token == org.defguard.current_token(name)
        expires = org.defguard.token_expiry(token)
        assert expires is not None
        held = _parse(values[EXPIRES])
        assert dt.timedelta(0) <= expires - held <= EXPIRY_SLACK, (name, held, expires)
    if lifetime == "2d":  # an enrollment token gets the asked lifetime; a desktop token the server's (24 h)
        kinds = org.scenario.token_kinds
        for name, values in stored.items():
            hours = 48 if kinds[name] == "enrollment" else 24
            left = _parse(values[EXPIRES]) - dt.datetime.now(dt.UTC)
            assert dt.timedelta(hours=hours) - dt.timedelta(minutes=1) < left <= dt.timedelta(hours=hours), name
    writes = [w for w in _batched(graph) if w.get("EnrollmentToken")]
    assert len(writes) == len(stored)
    assert all(EXPIRES in w for w in writes)  # in the same PATCH as the token


def test_on_1_6_an_asked_lifetime_is_stored_and_the_servers_unknown_one_is_null(graph: GraphEmulator) -> None:
    with DefguardEmulator("1.6", enrollment_url="https://enroll.example.com") as defguard:
        org = Org(defguard, graph, seed_sample_organisation(defguard, graph))
        first = _provision(org)  # 1.6 does not tell its default lifetime: the expiry is unknown, nulled
        assert all(EXPIRES not in values for values in first.values())
        assert all(w[EXPIRES] is None for w in _batched(graph) if w.get("EnrollmentToken"))
        second = _provision(org, "--enrollment-token-expiration-time", "3h")
        kinds = {name: org.defguard.token_kind(values["EnrollmentToken"]) for name, values in second.items()}
        assert "enrollment" in kinds.values()
        for name, values in second.items():
            if kinds[name] != "enrollment":  # a desktop token always gets the server's lifetime: unknown on 1.6
                assert EXPIRES not in values, name
                continue
            expires = org.defguard.token_expiry(values["EnrollmentToken"])
            assert expires is not None
            assert dt.timedelta(0) <= expires - _parse(values[EXPIRES]) <= EXPIRY_SLACK, name


def test_a_set_without_the_attribute_is_never_sent_it(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    org = Org(defguard, graph, seed_sample_organisation(defguard, graph, expiry_attribute=False))
    stored = _provision(org)
    assert stored
    for name, values in stored.items():
        assert values == {
            "EnrollmentToken": org.defguard.current_token(name),
            "EnrollmentUrl": "https://enroll.example.com/",
        }
    writes = _batched(graph)
    assert writes
    assert not any(EXPIRES in w for w in writes)
    graph.reset_log()
    result = run_cli(["clear", "--group-name", org.scenario.group, "--all", "--no-progress"], org.env)
    assert result.code == 1, result.stderr
    assert not any(EXPIRES in w for w in _batched(graph) + _patched(graph))
    assert all(_stored(org, name) == {} for name in org.scenario.provisioned)


def test_clear_nulls_the_expiry_with_the_pair(defguard2: DefguardEmulator, graph: GraphEmulator) -> None:
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph))
    assert all(EXPIRES in values for values in _provision(org).values())
    graph.reset_log()
    result = run_cli(["clear", "--group-name", org.scenario.group, "--all", "--no-progress"], org.env)
    assert result.code == 1, result.stderr  # not_found and ambiguous members
    writes = _batched(graph)
    assert len(writes) == len(org.scenario.provisioned)
    assert all(
        w == {"@odata.type": w["@odata.type"], "EnrollmentToken": None, "EnrollmentUrl": None, EXPIRES: None}
        for w in writes
    )
    assert all(_stored(org, name) == {} for name in org.scenario.provisioned)


def test_status_shows_the_stored_expiry(defguard2: DefguardEmulator, graph: GraphEmulator, tmp_path: Path) -> None:
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph))
    stored = _provision(org)
    graph.set_attributes(org.scenario.entra_ids["alice"], "Defguard", {EXPIRES: "soon"})  # edited by hand
    path = tmp_path / "status.json"
    result = run_cli(["status", "--group-name", org.scenario.group, "--report", str(path)], org.env)
    assert result.code == 1, result.stderr
    users = {u["username"]: u for u in json.loads(path.read_text())["users"]}
    assert users["alice"]["token_expires_at"] is None  # not a date: unknown, and no crash
    for name in set(stored) - {"alice"}:
        assert _parse(users[name]["token_expires_at"].replace("+00:00", "Z")) == _parse(stored[name][EXPIRES])


def _check_line(output: str) -> tuple[str, str]:
    lines = output.splitlines()
    for n, line in enumerate(lines):
        if EXPIRES in line:
            hint = lines[n + 1].strip() if n + 1 < len(lines) and lines[n + 1].startswith("        ") else ""
            return line, hint
    raise AssertionError(f"no {EXPIRES} line in:\n{output}")


@pytest.mark.parametrize(
    ("define", "state", "words"),
    [
        ({}, "ok", "single-valued String"),
        (None, "warn", "not defined"),
        ({"type": "Integer"}, "warn", "has type Integer"),
    ],
    ids=["defined", "missing", "integer"],
)
def test_check_says_whether_the_set_defines_the_expiry(
    defguard2: DefguardEmulator, graph: GraphEmulator, define: dict[str, Any] | None, state: str, words: str
) -> None:
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph, expiry_attribute=False))
    if define is not None:
        graph.define_attribute("Defguard", EXPIRES, **define)
    result = run_cli(["check", "--group-name", org.scenario.group], org.env)
    assert result.code == 0, result.stdout + result.stderr  # optional: never a failure
    line, hint = _check_line(result.stdout)
    assert line.strip().startswith(state), line
    assert words in line
    if define is None:
        assert "String" in hint
        assert "single value" in hint
        assert "docs/entra-setup.md" in hint
    assert not [r for r in graph.requests if r.method == "PATCH"]


def test_unreadable_definitions_mean_the_expiry_is_not_written(
    defguard2: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    """Without CustomSecAttributeDefinition.Read.All the tool cannot know whether the set defines the attribute, and
    a write naming an undefined one would fail with the token in it: the pair is stored, the expiry is not, and the
    report says so."""
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph))  # the set does define it
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_TOKEN": graph.add_principal("no-definitions", read_definitions=False)}
    path = tmp_path / "report.json"
    result = run_cli(["provision", "--group-name", org.scenario.group, "--no-progress", "--report", str(path)], env)
    assert result.code == 1, result.stderr
    stored = {name: _stored(org, name) for name in org.scenario.provisioned}
    assert all(values.get("EnrollmentToken") for values in stored.values())
    assert not any(EXPIRES in values for values in stored.values())
    assert not any(EXPIRES in w for w in _batched(graph))
    notes = json.loads(path.read_text())["notes"]
    assert any("expiry is not stored" in note for note in notes)
