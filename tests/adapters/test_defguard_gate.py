"""The adaptive limit of Defguard token requests in flight, over real HTTP: the real ``requests`` stack against
the Defguard emulator under load (:class:`defguard_entra.testing.Load`), 32 worker threads as ``provision`` has
by default. The rule itself is driven answer by answer in ``tests/unit/test_defguard_pace.py``."""

from __future__ import annotations

import re
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from defguard_entra import DefguardAPIError, DefguardNotSentError
from defguard_entra._defguard import DefguardClient
from defguard_entra._retry import RetryPolicy
from defguard_entra.testing import DefguardEmulator, Faults, Load

WORKERS = 32


def _mint_all(defguard: DefguardEmulator, n: int, *, retry: RetryPolicy | None = None) -> DefguardClient:
    """Mint a token for each of ``n`` users with ``WORKERS`` threads sharing one client (its gate)."""
    names = [f"user{i:04}" for i in range(n)]
    for name in names:
        defguard.add_user(name, email=f"{name}@example.com")
    client = DefguardClient(defguard.url, defguard.admin_token, pool_size=WORKERS, retry=retry)
    with ThreadPoolExecutor(WORKERS) as pool:
        tokens = list(pool.map(client.start_enrollment, names))
    assert len({t.token.value for t in tokens}) == n
    client.close()
    return client


def test_the_gate_grows_where_the_server_has_room() -> None:
    """A server 50 ms away that answers everything at once: more requests in flight only help, and the limit grows
    from 16 towards the ceiling (32). The emulator counts the requests it saw in flight at once."""
    load = Load()
    with DefguardEmulator("2.0", faults=Faults(latency=0.05), load=load) as defguard:
        client = _mint_all(defguard, 400)
    assert client.gate.peak > 16
    assert load.peak > 16


def test_the_gate_shrinks_where_the_server_queues() -> None:
    """Defguard 2.0.1's database pool of five connections (``Load(workers=5)``, 10 ms of work per request): 32
    requests in flight would wait ~50 ms each for a connection; the limit shrinks until the queue is short."""
    load = Load(workers=5, work=0.01)
    with DefguardEmulator("2.0", load=load) as defguard:
        client = _mint_all(defguard, 400)
    assert client.gate.low < 16
    later = load.waits[len(load.waits) // 2 :]
    assert statistics.median(later) < 0.03, f"median wait for a connection {statistics.median(later):.3f} s"


def test_the_gate_backs_off_a_proxy_that_answers_503() -> None:
    """nginx's ``limit_conn 8`` in front of Defguard refuses a ninth request in flight with 503: the limit halves
    on those answers instead of keeping 16 in flight, and grows back one place a round, so few are refused;
    every token is minted. Measured: 12-16 refused in three runs (31-33 when it grew back by a quarter a round; with
    no halving at all, members fail after their eight tries)."""
    load = Load(limit_conn=8)
    retry = RetryPolicy(wait_initial=0.01, wait_max=0.1, wait_jitter=0.01)
    with DefguardEmulator("2.0", faults=Faults(latency=0.01), load=load) as defguard:
        client = _mint_all(defguard, 400, retry=retry)
    assert client.gate.halvings >= 1
    assert load.refused <= 30, f"{load.refused} of 400 token requests refused with 503"


def test_a_token_request_that_waited_is_not_sent_once_the_run_stops() -> None:
    with DefguardEmulator("2.0") as defguard:
        defguard.add_user("alice", email="alice@example.com")
        client = DefguardClient(defguard.url, defguard.admin_token, pool_size=1)
        client.gate.enter()  # the one place is taken
        stop = threading.Event()
        errors: list[BaseException] = []

        def mint() -> None:
            try:
                client.start_enrollment("alice", proceed=lambda: not stop.is_set())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=mint)
        thread.start()
        thread.join(0.2)
        stop.set()
        client.gate.leave()
        thread.join(5)
        client.close()
        assert [type(e) for e in errors] == [DefguardNotSentError]
        assert defguard.requests_to("start_enrollment") == []


@pytest.mark.parametrize("status", [503, 504, 408])
def test_the_overload_statuses_halve_the_gate(status: int) -> None:
    """Conformance of the client's reading: these statuses (and a timeout) are overload, a 502 is not."""
    with DefguardEmulator("2.0", faults=Faults(rates={status: 1.0}, endpoints={"start_enrollment"})) as defguard:
        defguard.add_user("alice", email="alice@example.com")
        client = DefguardClient(defguard.url, defguard.admin_token, retry=RetryPolicy(attempts=2, wait_initial=0.01))
        with pytest.raises(DefguardAPIError, match=str(status)):
            client.start_enrollment("alice")
        client.close()
    assert client.gate.halvings == 1
    assert client.gate.limit == 8


def test_a_502_does_not_touch_the_gate() -> None:
    with DefguardEmulator("2.0", faults=Faults(rates={502: 1.0}, endpoints={"start_enrollment"})) as defguard:
        defguard.add_user("alice", email="alice@example.com")
        client = DefguardClient(defguard.url, defguard.admin_token, retry=RetryPolicy(attempts=2, wait_initial=0.01))
        with pytest.raises(DefguardAPIError, match="502"):
            client.start_enrollment("alice")
        client.close()
    assert client.gate.halvings == 0
    assert client.gate.limit == 16


def test_provision_behind_a_proxy_limit_provisions_everyone_and_says_so() -> None:
    """The whole run through the CLI behind nginx's ``limit_conn 4``: every member provisioned and consistent, and
    the log at ``-v`` says how far the limit went and how often it was halved."""
    from defguard_entra.testing import GraphEmulator, environment
    from helpers import run_cli

    load = Load(limit_conn=4)
    with DefguardEmulator("2.0", faults=Faults(latency=0.005), load=load) as defguard, GraphEmulator() as graph:
        graph.define_attribute_set("Defguard")
        ids = {}
        for i in range(120):
            name = f"m{i:03}"
            defguard.add_user(name, email=f"{name}@example.com")
            ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        defguard.add_group("G", list(ids))
        result = run_cli(["--group-name", "G", "--no-progress", "-v"], environment(defguard, graph))
        assert result.code == 0, result.stdout + result.stderr
        stale = [
            n for n, i in ids.items() if graph.attributes(i)["Defguard"]["EnrollmentToken"] != defguard.current_token(n)
        ]
        assert stale == []
    assert load.refused > 0
    match = re.search(
        r"Defguard token requests in flight: (\d+) to (\d+) so far \(at most 32\); halved (\d+) times", result.stderr
    )
    assert match is not None, result.stderr
    low, _, halvings = (int(g) for g in match.groups())
    assert low <= 4
    assert halvings >= 1
