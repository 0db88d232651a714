"""Microsoft Graph's real limits: one odd member never stops the run for everyone.

The limits come from Microsoft's pages: the known issues page ("Some limitations apply to query parameters": an
``eq`` value has at most 120 characters) and the throttling page (a batch whose items were throttled may answer
424 as a whole). The emulator's side of each is pinned in the first tests; the rest drive the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from defguard_entra.testing.graph import WriteQuota
from helpers import run_cli

GROUP = "Staff"
LONG = "a" * 110 + "@example.com"  # 122 characters


def _seed(defguard: DefguardEmulator, graph: GraphEmulator, names: list[str]) -> dict[str, str]:
    graph.define_attribute_set("Defguard")
    ids = {}
    for name in names:
        email = LONG if name == "long" else f"{name}@example.com"
        ids[name] = graph.add_user(email if len(email) < 100 else f"{name}@example.com", mail=email)
        defguard.add_user(name, email=email)
    defguard.add_group(GROUP, names)
    return ids


def _users(path: Path) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in json.loads(path.read_text())["users"]}


# -- the emulator -----------------------------------------------------------------------------------------------


def test_emulator_refuses_an_eq_value_over_120_characters(graph: GraphEmulator) -> None:
    """Graph known issues, "Some limitations apply to query parameters": "When filtering using the eq operator, the
    maximum limit of the value to match is 120 characters"."""
    headers = {"Authorization": f"Bearer {graph.admin_token}"}
    ok = requests.get(
        f"{graph.url}/users", params={"$filter": f"mail eq '{'a' * 108}@x.com'"}, headers=headers, timeout=5
    )
    assert ok.status_code == 200  # 114 characters
    refused = requests.get(f"{graph.url}/users", params={"$filter": f"mail eq '{LONG}'"}, headers=headers, timeout=5)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "Request_UnsupportedQuery"


def test_emulator_can_answer_a_throttled_batch_with_424() -> None:
    """Graph's throttling page: a batch whose requests were throttled may itself answer 424 (opt-in here)."""
    with GraphEmulator(throttled_batch_status=424, write_quota=WriteQuota(writes=1, per_seconds=60)) as graph:
        graph.define_attribute_set("Defguard")
        ids = [graph.add_user(f"u{i}@example.com", mail=f"u{i}@example.com") for i in range(2)]
        body = {
            "requests": [
                {
                    "id": str(n),
                    "method": "PATCH",
                    "url": f"/users/{user}",
                    "headers": {"Content-Type": "application/json"},
                    "body": {
                        "customSecurityAttributes": {
                            "Defguard": {
                                "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
                                "EnrollmentUrl": "https://e.example/",
                            }
                        }
                    },
                }
                for n, user in enumerate(ids)
            ]
        }
        answer = requests.post(
            f"{graph.url}/$batch", json=body, headers={"Authorization": f"Bearer {graph.admin_token}"}, timeout=5
        )
        assert answer.status_code == 424
        assert answer.headers.get("Retry-After")


# -- the client ---------------------------------------------------------------------------------------------------


def test_an_address_over_120_characters_affects_only_that_member(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    _seed(defguard, graph, ["ann", "long", "ben"])
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", GROUP, "--no-progress", "--report", str(path)], environment(defguard, graph))
    assert result.code == 1, result.stderr
    users = _users(path)
    assert users["long"]["status"] == "not_found"
    assert "Graph filters on at most 120" in users["long"]["error"]
    assert (users["ann"]["status"], users["ben"]["status"]) == ("provisioned", "provisioned")
    assert defguard.tokens_of("long") == []  # nothing minted for it
    status = run_cli(["status", "--group-name", GROUP], environment(defguard, graph))
    assert status.code == 1  # status too goes on for everyone else
    assert "ann" in status.stdout


def test_a_failed_attribute_read_fails_only_that_member(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    """A user deleted since the lookup answers 404 to the read of its attributes: that member fails, the others go
    on (status, and --only-missing, which never mints for a member whose stored values it could not read)."""
    from defguard_entra.testing._server import Faults

    names = [f"u{i:02}" for i in range(12)]
    _seed(defguard, graph, names)
    env = environment(defguard, graph)
    assert run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    graph.item_faults = Faults(rates={404: 0.3}, endpoints={"user-get"}, seed=5)
    path = tmp_path / "s.json"
    result = run_cli(["status", "--group-name", GROUP, "--report", str(path)], env)
    assert result.code == 1
    users = _users(path)
    failed = {n for n, u in users.items() if u["status"] == "failed"}
    assert failed
    assert failed != set(names)
    assert all("404" in users[n]["error"] for n in failed)
    assert all(users[n]["status"] == "set" for n in set(names) - failed)
    issued = defguard.issued_count
    only_missing = run_cli(["--group-name", GROUP, "--only-missing", "--report", str(path)], env)
    assert only_missing.code == 1
    users = _users(path)
    assert {u["status"] for u in users.values()} <= {"failed", "existing"}
    assert all("not minted" in u["error"] for u in users.values() if u["status"] == "failed")
    assert defguard.issued_count == issued


def test_a_batch_answered_424_is_retried(defguard: DefguardEmulator, tmp_path: Path) -> None:
    # A batch of 20 fits once the bucket refills (5 writes a second). The bucket is emptied before the run, so the
    # first batch of several writes surely finds it short and is answered 424, whatever the pacer does (it cannot
    # know the budget before Graph says anything).
    quota = WriteQuota(writes=20, per_seconds=4)
    with GraphEmulator(throttled_batch_status=424, write_quota=quota) as graph:
        ids = _seed(defguard, graph, [f"u{i:02}" for i in range(30)])
        while quota.take() == 0.0:
            pass
        path = tmp_path / "r.json"
        argv = ["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0", "--report", str(path)]
        result = run_cli(argv, environment(defguard, graph))
        assert result.code == 0, result.stdout + result.stderr
        assert graph.throttled_count > 0  # some batches were answered 424 and retried
        for name, entra_id in ids.items():
            assert graph.attributes(entra_id)["Defguard"]["EnrollmentToken"] == defguard.current_token(name)


def test_a_retry_after_beyond_the_retry_time_fails_at_once_naming_the_wait(
    defguard: DefguardEmulator, tmp_path: Path
) -> None:
    with GraphEmulator(write_quota=WriteQuota(writes=3, per_seconds=600), retry_after="integer") as graph:
        _seed(defguard, graph, [f"u{i:02}" for i in range(8)])
        path = tmp_path / "r.json"
        argv = ["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0", "--max-retry-time", "5"]
        result = run_cli([*argv, "--report", str(path)], environment(defguard, graph))
        assert result.code == 1
        failed = [u for u in _users(path).values() if u["status"] == "failed"]
        assert failed
        assert all("Graph asked to wait" in u["error"] and "--max-retry-time" in u["error"] for u in failed)


def test_a_disabled_entra_account_gets_no_token(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    graph.define_attribute_set("Defguard")
    graph.add_user("ann@example.com", mail="ann@example.com")
    off = graph.add_user("ben@example.com", mail="ben@example.com", account_enabled=False)
    defguard.add_user("ann")
    defguard.add_user("ben")
    defguard.add_group(GROUP, ["ann", "ben"])
    path = tmp_path / "r.json"
    result = run_cli(["--group-name", GROUP, "--no-progress", "--report", str(path)], environment(defguard, graph))
    assert result.code == 0, result.stderr
    users = _users(path)
    assert users["ben"]["status"] == "entra_disabled"
    assert defguard.tokens_of("ben") == []
    assert graph.attributes(off) == {}
    assert users["ann"]["status"] == "provisioned"
