"""Nothing lost: a member's working token is never destroyed without its replacement stored, or the member is
reported ``stale`` and repaired by the next run. Against the emulators; afterwards each member's Entra attributes
are compared with the token Defguard considers valid."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defguard_entra.exceptions import PreflightError
from defguard_entra.provisioning.journal import Journal, RunLock, run_key
from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from defguard_entra.testing._server import Faults
from helpers import run_cli

GROUP = "Staff"


def _seed(defguard: DefguardEmulator, graph: GraphEmulator, n: int) -> dict[str, str]:
    graph.define_attribute_set("Defguard")
    ids = {}
    for i in range(n):
        name = f"user{i:03}"
        ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        defguard.add_user(name, email=f"{name}@example.com")
    defguard.add_group(GROUP, list(ids))
    return ids


def _consistent(defguard: DefguardEmulator, graph: GraphEmulator, ids: dict[str, str]) -> list[str]:
    """Members whose Entra attributes do not hold the token Defguard considers valid."""
    wrong = []
    for name, entra_id in ids.items():
        stored = graph.attributes(entra_id).get("Defguard", {}).get("EnrollmentToken")
        if stored is None or stored != defguard.current_token(name):
            wrong.append(name)
    return wrong


def test_a_read_only_principal_destroys_nothing(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    ids = _seed(defguard, graph, 300)
    env = environment(defguard, graph)
    assert run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    before = {name: defguard.current_token(name) for name in ids}
    issued = defguard.issued_count
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.add_principal("reader", write_attributes=False)
    result = run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env)
    assert result.code == 3, result.stdout + result.stderr
    assert "Graph refused to write attribute set 'Defguard'" in result.stderr
    assert "CustomSecAttributeAssignment.ReadWrite.All" in result.stderr
    assert "no token was minted" in result.stderr
    assert defguard.issued_count == issued
    assert {name: defguard.current_token(name) for name in ids} == before
    assert _consistent(defguard, graph, ids) == []


def test_the_write_probe_changes_nothing(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    """The probe writes the first member's current values back (or the set with no attribute when nothing is
    stored): the first member's token is the same before and after a dry look at the probe."""
    ids = _seed(defguard, graph, 3)
    env = environment(defguard, graph)
    graph.set_attributes(ids["user000"], "Defguard", {"EnrollmentToken": "k" * 32, "EnrollmentUrl": "https://e/"})
    graph.reset_log()
    assert run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    first_write = next(r for r in graph.requests if r.method == "PATCH")
    assert json.loads(first_write.body)["customSecurityAttributes"]["Defguard"] == {
        "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
        "EnrollmentToken": "k" * 32,
        "EnrollmentUrl": "https://e/",
    }
    assert _consistent(defguard, graph, ids) == []


# -- the journal of tokens in flight --------------------------------------------------------------------------------


def test_journal_records_before_and_forgets_after(tmp_path: Path) -> None:
    key = run_key("https://defguard.example.com/", "defguard", GROUP)
    with Journal(tmp_path, key, group_name=GROUP, defguard_url="https://defguard.example.com") as journal:
        journal.minting(["ann", "ben"])
        assert Journal.peek(tmp_path, key) == {"ann", "ben"}  # on disk before the tokens are asked for
        journal.done(["ann"])
    assert Journal.peek(tmp_path, key) == {"ben"}
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"
    with Journal(tmp_path, key, group_name=GROUP, defguard_url="https://defguard.example.com") as again:
        assert again.stale == {"ben"}
        again.done(["ben"])
    assert not again.path.exists()


def test_journal_survives_a_line_cut_short(tmp_path: Path) -> None:
    key = run_key("https://d.example.com", "defguard", GROUP)
    path = tmp_path / f"journal-{key}.jsonl"
    path.write_text('{"op": "mint", "user": "ann"}\n{"op": "mint", "us', encoding="utf-8")
    assert Journal.peek(tmp_path, key) == {"ann"}


def test_a_run_killed_mid_way_leaves_at_most_two_batches_stale_and_the_next_run_repairs_them(
    defguard2: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    defguard = defguard2
    ids = _seed(defguard, graph, 400)
    env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    assert (
        run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    )  # everyone holds a working token
    graph.faults = Faults(latency=0.05)  # slow writes: the kill lands while tokens are in flight
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "defguard_entra",
            "--group-name",
            GROUP,
            "--no-progress",
            "-q",
            "--graph-write-rate",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while defguard.issued_count < 400 + 60 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    graph.faults = Faults()
    key = run_key(defguard.url, "defguard", GROUP)
    stale = Journal.peek(tmp_path, key)
    wrong = set(_consistent(defguard, graph, ids))
    assert wrong, "the kill should have landed while tokens were in flight"
    assert wrong <= stale  # every damaged member is in the journal ...
    assert len(stale) <= 3 * 20  # ... and the journal holds at most three batches
    status = run_cli(["status", "--group-name", GROUP, "--report", str(tmp_path / "s.json")], env)
    assert status.code == 1
    users = {u["username"]: u for u in json.loads((tmp_path / "s.json").read_text())["users"]}
    assert {n for n, u in users.items() if u["status"] == "stale"} == set(stale)
    repaired = run_cli(["--group-name", GROUP, "--only-missing", "--no-progress", "--graph-write-rate", "0"], env)
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert "given new tokens first" in repaired.stdout
    assert _consistent(defguard, graph, ids) == []
    assert Journal.peek(tmp_path, key) == frozenset()


def test_a_graph_outage_mid_run_is_reported_and_repaired(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    ids = _seed(defguard, graph, 120)
    env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path)}
    assert run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    import threading

    first = defguard.issued_count

    def outage() -> None:  # Graph goes down once the second run has minted a few batches
        deadline = time.monotonic() + 30
        while defguard.issued_count < first + 30 and time.monotonic() < deadline:
            time.sleep(0.002)
        graph.faults = Faults(rates={503: 1.0}, endpoints={"batch"})

    watcher = threading.Thread(target=outage)
    graph.faults = Faults(latency=0.02)
    watcher.start()
    result = run_cli(["--group-name", GROUP, "--no-progress", "--retries", "0", "--graph-write-rate", "0"], env)
    watcher.join()
    assert result.code != 0
    graph.faults = Faults()
    stale = Journal.peek(tmp_path, run_key(defguard.url, "defguard", GROUP))
    assert set(_consistent(defguard, graph, ids)) <= stale
    assert stale  # the members minted before the outage stopped the run
    status = run_cli(["status", "--group-name", GROUP], env)
    assert status.code == 1
    assert "stale" in status.stdout
    assert run_cli(["--group-name", GROUP, "--only-missing", "--no-progress", "--graph-write-rate", "0"], env).code == 0
    assert _consistent(defguard, graph, ids) == []


# -- one run per group at a time ------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_group_waits_then_refuses(tmp_path: Path) -> None:
    key = run_key("https://d.example.com", "defguard", GROUP)
    with RunLock(tmp_path, key, what="group 'Staff'"):
        started = time.monotonic()
        with pytest.raises(PreflightError, match="another run on group 'Staff' is in progress") as caught:
            RunLock(tmp_path, key, what="group 'Staff'", wait=0.3).acquire()
        assert time.monotonic() - started >= 0.3
        assert f"pid {os.getpid()}" in str(caught.value)
    with RunLock(tmp_path, key, what="group 'Staff'", wait=0.3):  # released: free again
        pass


def test_a_second_run_waits_for_the_first_across_processes(
    defguard2: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    """The CLI takes the same lock as the library (per Defguard instance and group): while another process holds
    it, nothing is minted; once it is released, the waiting run goes ahead."""
    defguard = defguard2
    ids = _seed(defguard, graph, 50)
    env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    command = [sys.executable, "-m", "defguard_entra", "--group-name", GROUP, "-q", "--graph-write-rate", "0"]
    with RunLock(tmp_path, run_key(defguard.url, "defguard", GROUP), what="test"):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the run has started, found the lock taken, and waits
        assert defguard.issued_count == 0
        assert proc.poll() is None
    _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert _consistent(defguard, graph, ids) == []


# -- every way a run can end leaves the journal true ----------------------------------------------------------------


def test_a_raising_progress_callback_does_not_end_the_run(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    import attrs

    from defguard_entra import ProvisioningService, Settings

    ids = _seed(defguard, graph, 90)
    settings = attrs.evolve(Settings.from_env(environment(defguard, graph)), graph_write_rate=0)
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        raise BrokenPipeError(32, "Broken pipe")  # what a progress line on a closed stderr raises

    with ProvisioningService.from_settings(settings, state_dir=tmp_path) as service:
        report = service.provision(GROUP, progress=progress)
    assert report.summary == {"provisioned": 90}
    assert len(calls) == 1  # called once, then left alone
    assert _consistent(defguard, graph, ids) == []
    assert Journal.peek(tmp_path, run_key(defguard.url, "defguard", GROUP)) == frozenset()


def test_clear_without_all_also_clears_offboarded_members(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    ids = _seed(defguard, graph, 3)
    env = environment(defguard, graph)
    assert run_cli(["--group-name", GROUP, "--no-progress"], env).code == 0
    defguard.disable_user("user001", by="directory_sync")
    result = run_cli(["clear", "--group-name", GROUP], env)
    assert result.code == 0, result.stdout + result.stderr
    assert graph.attributes(ids["user001"]) == {}
    assert graph.attributes(ids["user000"])["Defguard"]["EnrollmentToken"] == defguard.current_token("user000")


@pytest.mark.parametrize(
    ("lifetime", "error"),
    [
        (dt.timedelta(0), "ConfigurationError"),
        (dt.timedelta(days=400), "ConfigurationError"),
        (-dt.timedelta(hours=1), "ConfigurationError"),
        ("1 fortnight", "ConfigurationError"),
        (86400, "TypeError"),
    ],
)
def test_the_library_checks_lifetime_like_the_cli(
    defguard: DefguardEmulator, graph: GraphEmulator, lifetime: object, error: str
) -> None:
    from defguard_entra import ProvisioningService, Settings

    _seed(defguard, graph, 2)
    with ProvisioningService.from_settings(Settings.from_env(environment(defguard, graph))) as service:
        with pytest.raises(Exception) as caught:
            service.provision(GROUP, lifetime=lifetime)  # type: ignore[arg-type]
        assert type(caught.value).__name__ == error
    assert defguard.issued_count == 0


def test_the_library_takes_a_lifetime_string(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    from defguard_entra import ProvisioningService, Settings

    _seed(defguard, graph, 1)
    with ProvisioningService.from_settings(Settings.from_env(environment(defguard, graph))) as service:
        report = service.provision(GROUP, lifetime="2d")  # type: ignore[arg-type]
    expires = report.outcome("user000").token_expires_at
    assert expires is not None
    assert abs(expires - dt.datetime.now(dt.UTC) - dt.timedelta(days=2)) < dt.timedelta(minutes=1)


def test_check_probe_write_proves_or_refuses_the_write(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    _seed(defguard, graph, 2)
    env = environment(defguard, graph)
    from defguard_entra import ProvisioningService, Settings

    with ProvisioningService.from_settings(Settings.from_env(env)) as service:
        probed = service.check(GROUP, probe_write=True).item("graph_write_attributes")
    assert probed.state.value == "ok", probed
    assert "changes nothing" in probed.detail
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.add_principal("reader", write_attributes=False)
    with ProvisioningService.from_settings(Settings.from_env(env)) as service:
        refused = service.check(GROUP, probe_write=True)
    item = refused.item("graph_write_attributes")
    assert item.state.value == "fail"
    assert "403" in item.detail
    assert not refused.ready
    assert defguard.issued_count == 0


def test_sighup_and_a_second_ctrl_c_still_write_the_report(
    defguard2: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    """An SSH session dropping (SIGHUP), then an impatient Ctrl-C: the run finishes what is in flight, writes the
    report, exits 130, and the journal holds no more than what the next run repairs."""
    defguard = defguard2
    ids = _seed(defguard, graph, 400)
    env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path), "PATH": os.environ["PATH"]}
    graph.faults = Faults(latency=0.05)
    report = tmp_path / "r.json"
    command = [sys.executable, "-m", "defguard_entra", "--group-name", GROUP, "--no-progress", "--report", str(report)]
    proc = subprocess.Popen(
        [*command, "--graph-write-rate", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while defguard.issued_count < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130, errors
    assert "still stopping" in errors
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    graph.faults = Faults()
    stale = Journal.peek(tmp_path, run_key(defguard.url, "defguard", GROUP))
    provisioned = {u["username"] for u in data["users"] if u["status"] == "provisioned"}
    assert set(_consistent(defguard, graph, {n: ids[n] for n in provisioned})) == set()
    assert len(stale) <= 2 * 20
    assert run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0"], env).code == 0
    assert _consistent(defguard, graph, ids) == []


def test_an_unwritable_report_path_falls_back_and_keeps_the_exit_code(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's directory disappears while the run goes on: everything was sent, so the summary still prints,
    the report goes to a named fallback file, and the exit code is the members' (not "usage error")."""
    import tempfile
    import threading

    ids = _seed(defguard, graph, 100)
    graph.faults = Faults(latency=0.02)
    folder = tmp_path / "reports"
    folder.mkdir()
    fallback_dir = tmp_path / "tmp"
    fallback_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback_dir))

    def remove_when_minting() -> None:
        deadline = time.monotonic() + 30
        while defguard.issued_count == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        folder.rmdir()

    remover = threading.Thread(target=remove_when_minting)
    remover.start()
    argv = ["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0", "--report", str(folder / "r.json")]
    result = run_cli(argv, environment(defguard, graph))
    remover.join()
    assert result.code == 0, result.stderr
    assert "provision of group Staff:" in result.stdout
    written = list(fallback_dir.glob("defguard-entra-provision-*.json"))
    assert len(written) == 1
    assert f"wrote it to {written[0]} instead" in result.stderr
    assert json.loads(written[0].read_text())["summary"] == {"provisioned": 100}
    assert _consistent(defguard, graph, ids) == []


def test_the_library_never_prints_retry_messages(defguard: DefguardEmulator, graph: GraphEmulator) -> None:
    """stamina warns per retry; without any logging configured, Python's last-resort handler would print it."""
    _seed(defguard, graph, 5)
    script = f"""
import attrs
from defguard_entra import ProvisioningService, Settings
from defguard_entra.testing._server import Faults
settings = Settings.from_env({environment(defguard, graph)!r})
with ProvisioningService.from_settings(settings) as service:
    report = service.provision({GROUP!r})
print(sorted(report.summary.items()))
"""
    defguard.faults = Faults(rates={503: 0.5}, endpoints={"start_enrollment"}, seed=3)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[('provisioned', 5)]"
    assert defguard.request_counts["start_enrollment"] > 5  # there were retries
    assert proc.stderr == ""


def test_mixing_sync_and_async_forms_raises_the_projects_error(
    defguard: DefguardEmulator, graph: GraphEmulator
) -> None:
    import asyncio

    from defguard_entra import ProvisioningService, ServiceStateError, Settings

    _seed(defguard, graph, 1)
    settings = Settings.from_env(environment(defguard, graph))
    with ProvisioningService.from_settings(settings) as service:
        service.status(GROUP)
        with pytest.raises(ServiceStateError, match="one style per service"):
            asyncio.run(service.astatus(GROUP))
        service.status(GROUP)  # the sync forms still work
    with pytest.raises(ServiceStateError, match="closed"):
        service.status(GROUP)


def test_library_messages_name_parameters_and_the_cli_names_flags(
    defguard: DefguardEmulator, graph: GraphEmulator
) -> None:
    from defguard_entra import ConfigurationError, ProvisioningService, Settings

    _seed(defguard, graph, 1)
    with ProvisioningService.from_settings(Settings.from_env(environment(defguard, graph))) as service:
        with pytest.raises(ConfigurationError, match=r"^group_source must be"):
            service.status(GROUP, group_source="ldap")
        with pytest.raises(ConfigurationError, match=r"^group_name is empty"):
            service.provision("  ")
    from defguard_entra.cli import _as_flags

    assert _as_flags("group_name is empty: give the name") == "--group-name is empty: give the name"
    assert _as_flags("the group_name of x") == "the group_name of x"  # only a parameter being judged


# -- a dead server is declared dead in seconds (figures: benchmarks/dead_server.py) ----------------------------------


def test_a_refused_connection_is_one_line_naming_the_cause(graph: GraphEmulator) -> None:
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {"DEFGUARD_API_TOKEN": "dg-" + "b" * 32, "DEFGUARD_ENTRA_GRAPH_URL": graph.url}
    env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.admin_token
    result = run_cli(["--url", f"http://127.0.0.1:{port}", "--group-name", GROUP, "--no-progress"], env)
    assert result.code == 3
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach Defguard at http://127.0.0.1:{port}: connection refused (is Defguard running, and "
        "is the port in --url right?)"
    )
    assert "urllib3" not in result.stderr
    assert "HTTPConnectionPool" not in result.stderr


def test_a_silent_server_costs_two_timeouts_at_most(graph: GraphEmulator) -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        env = {"DEFGUARD_API_TOKEN": "dg-" + "b" * 32, "DEFGUARD_ENTRA_GRAPH_URL": graph.url}
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.admin_token
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        result = run_cli(["--url", url, "--group-name", GROUP, "--no-progress", "--timeout", "1"], env)
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert result.code == 3
    assert "no answer within 1 s" in result.stderr
    assert len(accepted) == 2  # two tries of the first request, then the run stops


def test_a_token_request_refused_with_4xx_leaves_nothing_stale(
    defguard: DefguardEmulator, graph: GraphEmulator, tmp_path: Path
) -> None:
    """A 404 (user deleted in Defguard since the list was read) changed nothing on the server: the member fails,
    but is not reported stale by the next run."""
    _seed(defguard, graph, 40)
    defguard.faults = Faults(rates={404: 0.3}, endpoints={"start_enrollment"}, seed=2)
    env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path)}
    result = run_cli(["--group-name", GROUP, "--no-progress", "--graph-write-rate", "0", "--retries", "0"], env)
    assert result.code == 1
    assert "404" in result.stdout
    assert Journal.peek(tmp_path, run_key(defguard.url, "defguard", GROUP)) == frozenset()
