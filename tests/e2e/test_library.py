"""The library surface: the sync facade and the service's sync and async forms, injection, and the result objects.

Everything runs against the emulators through the real requests and msgraph stacks. The regressions this guards
(``docs/reference/graph-api.md`` section 11): a second call on one client ("Event loop is closed"), a call from
inside a running loop (a notebook cell), and resources left open (the suite runs with warnings as errors).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import html
import inspect
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import pytest
import requests
from azure.core.credentials import AccessToken

from defguard_entra import (
    AsyncEntraClient,
    ConfigurationError,
    DefguardClient,
    EntraClient,
    GraphSettings,
    Outcome,
    ProvisioningService,
    Report,
    Secret,
    Settings,
    Status,
)
from defguard_entra.models import CheckState
from defguard_entra.testing import DefguardEmulator, GraphEmulator, Scenario, environment, running_emulators

GRAPH_THREAD = "defguard-entra-graph"


@attrs.define
class Sample:
    defguard: DefguardEmulator
    graph: GraphEmulator
    scenario: Scenario

    @property
    def settings(self) -> Settings:
        return Settings.from_env(environment(self.defguard, self.graph))

    @property
    def group(self) -> str:
        return self.scenario.group

    def stored(self) -> dict[str, dict[str, Any]]:
        """What Entra holds in the Defguard set, per username (members with an Entra user only)."""
        return {
            name: self.graph.attributes(entra_id).get("Defguard", {})
            for name, entra_id in self.scenario.entra_ids.items()
        }

    def provisioned(self) -> list[str]:
        return list(self.scenario.provisioned)


@pytest.fixture
def sample() -> Iterator[Sample]:
    with running_emulators() as (defguard, graph, scenario):
        assert scenario is not None
        yield Sample(defguard, graph, scenario)


class Credential:
    """The smallest credential: a fixed bearer token (what an ``azure.identity`` credential hands out)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0
        self.closed = False

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)

    def close(self) -> None:
        self.closed = True


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("defguard-entra")]


@pytest.fixture(autouse=True)
def _no_loop_thread_left() -> Iterator[None]:
    before = set(_loop_threads())
    yield
    gc.collect()  # an unclosed socket or transport now raises through warnings-as-errors
    assert set(_loop_threads()) - before == set(), "a client or service left its event-loop thread running"


# -- EntraClient: the blocking facade ----------------------------------------------------------------------------


def test_entra_client_two_calls_in_a_row(sample: Sample) -> None:
    with EntraClient.from_settings(sample.settings) as entra:
        first = entra.find_users(["alice@example.com", "Grace@Example.com"])
        second = entra.find_users(["alice@example.com"])
        assert entra.check_attribute_set("Defguard").ok
    assert first["alice@example.com"].user == second["alice@example.com"].user
    assert first["grace@example.com"].matched_by == "userPrincipalName"
    assert entra.closed


def test_entra_client_inside_a_running_event_loop(sample: Sample) -> None:
    """What a notebook cell does: the caller's thread already runs a loop, so asyncio.run() would refuse."""
    alice = sample.scenario.entra_ids["alice"]

    async def cell(entra: EntraClient) -> dict[str, Any] | None:
        asyncio.get_running_loop()  # really inside a loop
        entra.write_attributes("Defguard", {alice: {"EnrollmentToken": "t0ken", "EnrollmentUrl": "https://e.example"}})
        return entra.read_attributes("Defguard", [alice])[alice]

    with EntraClient.from_settings(sample.settings) as entra:
        values = asyncio.run(cell(entra))
        assert values == {"EnrollmentToken": Secret("t0ken"), "EnrollmentUrl": "https://e.example"}
        assert "t0ken" not in repr(values) + str(values)  # print() in a notebook shows no stored token
        assert asyncio.run(cell(entra)) is not None  # a second loop, the same client
        assert entra.read_attributes("Defguard", [alice])[alice] is not None  # and outside any loop again


def test_entra_client_created_inside_a_loop_outlives_it(sample: Sample) -> None:
    """Built in one ``asyncio.run``, used in the next and after: the SDK's HTTP client lives on the private loop."""

    async def build() -> EntraClient:
        return EntraClient.from_settings(sample.settings)

    entra = asyncio.run(build())
    try:

        async def use() -> bool:
            return entra.can_read_users()

        assert asyncio.run(use())
        assert entra.group_members(sample.graph.add_group("G", ["alice@example.com"])) != []
    finally:
        entra.close()


def test_entra_client_from_several_threads(sample: Sample) -> None:
    addresses = [f"{n}@example.com" for n in ("alice", "bob", "carol", "grace", "erin")]
    with EntraClient.from_settings(sample.settings) as entra, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda a: entra.find_users([a])[a], addresses * 4))
    assert [r.unique for r in results] == [True, True, True, True, False] * 4


def test_entra_client_close(sample: Sample) -> None:
    entra = EntraClient.from_settings(sample.settings)
    assert len(_loop_threads()) == 1
    entra.close()
    entra.close()  # idempotent
    assert _loop_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        entra.me()
    assert "closed" in repr(entra)


def test_entra_client_mirrors_every_async_method() -> None:
    """Same names, same parameters, same (awaited) return types: the docs of one are the docs of the other."""
    coroutines = {
        name
        for name, member in inspect.getmembers(AsyncEntraClient, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert "find_users" in coroutines
    for name in sorted(coroutines - {"aclose"}):
        blocking = getattr(EntraClient, name, None)
        assert blocking is not None, f"EntraClient has no {name}()"
        assert not inspect.iscoroutinefunction(blocking), name
        assert inspect.signature(blocking) == inspect.signature(getattr(AsyncEntraClient, name)), name
    assert callable(EntraClient.close)


def test_entra_client_methods_carry_the_async_names_and_docstrings() -> None:
    """Made by one helper (``_sync.delegated``): ``help(EntraClient)`` reads like ``help(AsyncEntraClient)``."""
    for name, member in inspect.getmembers(AsyncEntraClient, inspect.iscoroutinefunction):
        if name.startswith("_") or name == "aclose":
            continue
        blocking = getattr(EntraClient, name)
        assert blocking.__name__ == name
        assert blocking.__qualname__ == f"EntraClient.{name}"
        assert blocking.__doc__ == member.__doc__, name


def test_entra_client_is_built_on_its_private_loop(sample: Sample) -> None:
    """The async client (and so the SDK's HTTP client) is created on the loop thread that drives it."""
    built_on: list[str] = []
    real = AsyncEntraClient.from_settings

    def spy(*args: Any, **kwargs: Any) -> AsyncEntraClient:
        built_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AsyncEntraClient, "from_settings", spy)
        with EntraClient.from_settings(sample.settings) as entra:
            assert entra.can_read_users()
    assert built_on == [GRAPH_THREAD]


def test_entra_client_with_your_own_credential(sample: Sample) -> None:
    """An injected credential is used for every request and is borrowed: the client does not close it."""
    reader = Credential(sample.graph.add_principal("reader", write_attributes=False))
    alice = sample.scenario.entra_ids["alice"]
    with EntraClient(GraphSettings(graph_url=sample.graph.url), reader) as entra:
        written = entra.write_attributes("Defguard", {alice: {"EnrollmentToken": "x", "EnrollmentUrl": "y"}})
    assert not written[alice].ok
    assert written[alice].status == 403
    assert reader.calls >= 1
    assert not reader.closed
    with EntraClient.from_settings(sample.settings, credential=reader) as entra:
        assert entra.find_users(["bob@example.com"])["bob@example.com"].unique
    assert not reader.closed
    assert sample.graph.attributes(alice) == {}


def test_entra_client_from_settings_applies_the_settings(sample: Sample) -> None:
    settings = attrs.evolve(sample.settings, graph_write_rate=0, timeout=45.0)
    with EntraClient.from_settings(settings) as entra:
        assert entra.base_url == sample.graph.url
        assert entra.settings == settings.graph
        entra.sign_in()
        assert entra.stats["requests"] == 0  # a static token: signing in sends nothing


def test_entra_client_rejects_bad_settings_before_starting_anything() -> None:
    with pytest.raises(ConfigurationError, match="--graph-url"):
        EntraClient.from_settings(Settings(graph=GraphSettings(graph_url="ftp://graph.example.com/v1.0")))
    assert _loop_threads() == []


# -- ProvisioningService: sync forms, async forms ----------------------------------------------------------------


def _all_sync_forms(service: ProvisioningService, group: str) -> list[Any]:
    results: list[Any] = []
    for _ in range(2):  # every form twice in a row on one service
        results.append(service.provision(group))
        results.append(service.status(group))
        results.append(service.export(group))
        results.append(service.check(group))
    results.append(service.clear(group, all_members=True))
    results.append(service.clear(group, all_members=True))
    return results


def _check_sync_results(sample: Sample, results: list[Any]) -> None:
    provision, status, export, check = results[:4]
    assert {o.username: o.status.value for o in provision.outcomes} == dict(sample.scenario.expected)
    assert status.summary["set"] == len(sample.provisioned())
    assert export.summary["set"] == len(sample.provisioned())
    assert check.ready
    assert results[4].summary == provision.summary  # the second provision: the same outcome, new tokens
    cleared, again = results[-2:]
    assert cleared.summary["cleared"] == len(sample.provisioned())
    assert "cleared" not in again.summary
    assert all(values == {} for values in sample.stored().values())


def test_service_sync_forms_twice_in_a_row(sample: Sample) -> None:
    with ProvisioningService.from_settings(sample.settings) as service:
        results = _all_sync_forms(service, sample.group)
    _check_sync_results(sample, results)


def test_service_sync_forms_inside_a_running_event_loop(sample: Sample) -> None:
    async def cell() -> list[Any]:
        with ProvisioningService.from_settings(sample.settings) as service:
            return _all_sync_forms(service, sample.group)

    _check_sync_results(sample, asyncio.run(cell()))


def test_service_async_forms(sample: Sample) -> None:
    async def main() -> list[Any]:
        async with ProvisioningService.from_settings(sample.settings) as service:
            provisioned = await service.aprovision(sample.group)
            again = await service.aprovision(sample.group)
            status = await service.astatus(sample.group)
            exported = await service.aexport(sample.group)
            checklist = await service.acheck(sample.group)
            cleared = await service.aclear(sample.group, all_members=True)
        return [provisioned, again, status, exported, checklist, cleared]

    for _ in range(2):  # two event loops one after the other, a service each
        provisioned, again, status, exported, checklist, cleared = asyncio.run(main())
        assert provisioned.summary == again.summary
        assert provisioned.outcome("alice").status is Status.PROVISIONED
        assert status.summary["set"] == exported.summary["set"] == len(sample.provisioned())
        assert checklist.ready
        assert cleared.summary["cleared"] == len(sample.provisioned())
    assert _loop_threads() == []  # the async forms run on the caller's loop


def test_service_refuses_sync_calls_once_closed(sample: Sample) -> None:
    async def main() -> ProvisioningService:
        async with ProvisioningService.from_settings(sample.settings) as service:
            await service.astatus(sample.group)
        return service

    closed = asyncio.run(main())
    with pytest.raises(RuntimeError, match="closed"):
        closed.status(sample.group)
    service = ProvisioningService.from_settings(sample.settings)
    service.close()
    service.close()
    with pytest.raises(RuntimeError, match="closed"):
        service.provision(sample.group)


def test_service_with_your_own_session_and_credential(sample: Sample) -> None:
    """The documented injection: the service owns (and closes) the clients; they borrow your session and
    credential, which stay yours and stay usable."""
    session = requests.Session()
    session.headers["X-Trace"] = "library-test"
    credential = Credential(sample.graph.admin_token)
    try:
        defguard = DefguardClient(sample.defguard.url, sample.defguard.admin_token, session=session)
        entra = AsyncEntraClient(GraphSettings(graph_url=sample.graph.url), credential)
        with ProvisioningService(defguard, entra, owns_clients=True) as service:
            report = service.provision(sample.group)
        assert report.summary["provisioned"] == len(sample.provisioned())
        assert credential.calls >= 1
        assert not credential.closed
        assert "Authorization" not in session.headers  # auth is sent per request, never stored in your session
        assert all(r.headers.get("x-trace") == "library-test" for r in sample.defguard.requests)
        assert session.get(f"{sample.defguard.url}/api/v1/health", timeout=5).status_code == 200  # still open
    finally:
        session.close()


def test_service_with_your_own_credential_from_settings(sample: Sample) -> None:
    credential = Credential(sample.graph.admin_token)
    settings = attrs.evolve(sample.settings, graph=GraphSettings(graph_url=sample.graph.url))  # no token in it
    with ProvisioningService.from_settings(settings, credential=credential) as service:
        assert service.status(sample.group).summary["not_set"] == 7
    assert credential.calls >= 1


# -- results: attrs value objects, masked tokens, Jupyter rendering ----------------------------------------------


@pytest.fixture
def provisioned(sample: Sample) -> tuple[Sample, Report, list[str]]:
    with ProvisioningService.from_settings(sample.settings) as service:
        report = service.provision(sample.group)
    tokens = [t for n in sample.provisioned() if (t := sample.defguard.current_token(n))]
    assert len(tokens) == len(sample.provisioned())
    return sample, report, tokens


def test_no_token_in_repr_str_html_or_dict(provisioned: tuple[Sample, Report, list[str]]) -> None:
    sample, report, tokens = provisioned
    alice = report.outcome("alice")
    shown = [
        repr(report),
        str(report),
        report._repr_html_(),
        json.dumps(report.to_dict()),
        repr(alice),
        str(alice),
        alice._repr_html_(),
        repr(alice.to_dict()),
        repr(report.outcomes),
        f"{report!r} {alice}",
    ]
    secrets = [*tokens, sample.defguard.admin_token, sample.graph.admin_token]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert "Secret(***)" in repr(alice)
    assert alice.to_dict()["enrollment_token"] == sample.defguard.current_token("alice")[:4] + "…"


def test_tokens_only_when_asked(provisioned: tuple[Sample, Report, list[str]]) -> None:
    sample, report, _ = provisioned
    revealed = {u["username"]: u["enrollment_token"] for u in report.to_dict(reveal_tokens=True)["users"]}
    assert revealed["alice"] == sample.defguard.current_token("alice")
    assert report.outcome("alice").to_dict(reveal_tokens=True)["enrollment_token"] == revealed["alice"]
    assert revealed["bob"] is None


def test_status_report_masks_stored_tokens(provisioned: tuple[Sample, Report, list[str]]) -> None:
    sample, _, tokens = provisioned
    with ProvisioningService.from_settings(sample.settings) as service:
        status = service.status(sample.group)
    assert status.outcome("alice").enrollment_token is not None
    for text in (repr(status), status._repr_html_(), json.dumps(status.to_dict())):
        for token in tokens:
            assert token not in text


def test_report_repr_says_what_matters(provisioned: tuple[Sample, Report, list[str]]) -> None:
    sample, report, _ = provisioned
    text = repr(report)
    counts = ", ".join(f"{status} {n}" for status, n in report.summary.items())
    assert text == (
        f"<Report provision of group {sample.group!r} (defguard): {len(report.outcomes)} members: {counts}; not ok>"
    )
    assert str(report) == text
    assert "Outcome(" not in text  # not the attrs dump of every member
    with ProvisioningService.from_settings(sample.settings) as service:
        dry = service.provision(sample.group, dry_run=True)
    assert repr(dry).startswith(f"<Report provision of group {sample.group!r} (defguard): ")
    assert "; dry run, not ok>" in repr(dry)


def test_report_repr_shortens_a_long_group_name_and_names_a_fatal_error() -> None:
    now = dt.datetime.now(dt.UTC)
    long_name = "G" * 1000
    report = Report("status", now, now, long_name, "entra", "Defguard", (), fatal_error="Defguard is unreachable")
    text = repr(report)
    assert len(text) < 200
    assert f"group '{'G' * 59}…' (entra): 0 members; fatal: Defguard is unreachable>" in text


def test_checklist_repr_and_html(sample: Sample) -> None:
    with ProvisioningService.from_settings(sample.settings) as service:
        ready = service.check(sample.group)
    states = Counter(item.state.value for item in ready.items)
    assert ready.ready
    assert repr(ready) == (
        f"<Checklist of group {sample.group!r} (defguard): ready; "
        + ", ".join(f"{states[s.value]} {s.value}" for s in CheckState if states[s.value])
        + ">"
    )
    broken = attrs.evolve(sample.settings, attribute_set="NoSuchSet")
    with ProvisioningService.from_settings(broken) as service:
        failing = service.check(sample.group)
    assert failing.failures
    failed = ", ".join(item.key for item in failing.failures)
    assert f": not ready, failed: {failed}; " in repr(failing)
    assert "CheckItem(" not in repr(failing)
    page = failing._repr_html_()
    assert page.startswith(f"<p><b>check</b> of group <code>{html.escape(sample.group)}</code> (defguard): ")
    assert f"not ready: {len(failing.failures)} failed</p>" in page
    assert page.count("<tr>") == len(failing.items) + 1  # the head and one row per item
    for item in failing.failures:
        assert f"<td>fail</td><td>{html.escape(item.title)}</td>" in page
        assert item.hint is not None
        assert html.escape(item.hint) in page


def test_results_are_frozen_attrs_values(provisioned: tuple[Sample, Report, list[str]]) -> None:
    _, report, _ = provisioned
    assert attrs.has(Report)
    assert attrs.has(Outcome)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        report.group_name = "other"  # type: ignore[misc]
    alice = report.outcome("alice")
    assert attrs.evolve(alice, error="x") != alice
    assert attrs.evolve(alice) == alice
    assert report.ok is False  # not_found, ambiguous and no_email need attention
    assert {o.username for o in report.by_status(Status.PROVISIONED)} == {"alice", "grace", "heidi", "oneil", "peggy"}
    data = report.to_dict()
    assert data["summary"] == report.summary
    assert data["group"] == {"name": "VPN Users", "source": "defguard"}
    assert [u["username"] for u in data["users"]] == [o.username for o in report.outcomes]
    json.dumps(data)  # plain JSON types only


def test_html_is_escaped() -> None:
    now = dt.datetime.now(dt.UTC)
    outcome = Outcome("<b>x</b>", "x@example.com", Status.FAILED, error="<script>alert(1)</script>")
    report = Report("provision", now, now, "<i>G</i>", "defguard", "Defguard", (outcome,))
    for text in (report._repr_html_(), outcome._repr_html_()):
        assert "<script>" not in text
        assert "<b>x</b>" not in text
        assert html.escape("<script>alert(1)</script>") in text
    assert "<i>G</i>" not in report._repr_html_()
    assert "<table>" in report._repr_html_()
