"""The public API as users write it, type-checked by mypy --strict and never executed.

mypy checks this file through ``[tool.mypy] files`` in pyproject.toml, so the plain ``mypy`` run in CI covers it.
Its name does not match pytest's ``test_*.py``, so pytest never collects it. Lines that must *not* type-check carry
``# type: ignore[code]``: strict mode warns about unused ignores, so such a line that starts passing fails the check.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, assert_type

import attrs
import requests

import defguard_entra
from defguard_entra import (
    ActivityEvent,
    ActivityKind,
    ActivityLog,
    AsyncEntraClient,
    AttributeSetCheck,
    AuthMode,
    Checklist,
    CheckState,
    Cloud,
    DefguardAPIError,
    DefguardClient,
    DefguardEntraError,
    DefguardGroup,
    DefguardUser,
    EntraAPIError,
    EntraClient,
    EntraGroup,
    EntraUser,
    ExportEntry,
    ExportManifest,
    GraphSettings,
    IssuedToken,
    Match,
    Outcome,
    PreflightError,
    ProvisioningService,
    RedactingFilter,
    Report,
    RetryPolicy,
    Secret,
    Settings,
    Status,
    TokenState,
    WriteResult,
    fetch_provisioning_config,
    write_export,
)
from defguard_entra.testing import (
    DROP,
    Clock,
    DefguardEmulator,
    Faults,
    GraphEmulator,
    WriteQuota,
    environment,
    running_emulators,
)


def settings() -> Settings:
    from_env = Settings.from_env({"DEFGUARD_URL": "https://defguard.example.com"})
    graph = GraphSettings(auth=AuthMode.DEVICE_CODE, cloud=Cloud.USGOV, tenant_id="t")
    Settings(defguard_token="dg-plain-text")  # type: ignore[arg-type]
    from_env.concurrency = 4  # type: ignore[misc]
    return attrs.evolve(from_env, graph=graph, retry=RetryPolicy(attempts=3), timeout=10.0)


def sync_service(settings: Settings) -> Report:
    with ProvisioningService.from_settings(settings, prompt=print) as service:
        assert_type(service.sign_in(), None)
        report = service.provision(
            "VPN Users",
            lifetime=dt.timedelta(days=2),
            enrolled="desktop",
            dry_run=True,
            progress=lambda done, total: None,
            stop=threading.Event(),
        )
        assert_type(report, Report)
        assert_type(service.status("VPN Users"), Report)
        assert_type(service.clear("VPN Users", all_members=True), Report)
        assert_type(service.check("VPN Users"), Checklist)
        assert_type(service.status(group_id=3), Report)
        assert_type(service.clear("VPN Users", users=["alice", "bob@example.com"]), Report)
        assert_type(service.export("VPN Users", users=("alice",)), Report)
        assert_type(service.check(group_id="5f1c0000-0000-4000-8000-000000000000", group_source="entra"), Checklist)
        service.status(group_id=3.0)  # type: ignore[arg-type]
        assert_type(service.export("VPN Users", after=report), Report)
        service.provision(group_name=42)  # type: ignore[arg-type]
        service.provision("VPN Users", "entra")  # type: ignore[call-arg]
        synced = service.sync("VPN Users", refresh_before=dt.timedelta(hours=6), max_changes="20%", dry_run=True)
        assert_type(synced, Report)
        assert_type(synced.held, str | None)
        assert_type(synced.outcome("alice").token_state, TokenState | None)
        service.sync("VPN Users", max_changes=2.5)  # type: ignore[arg-type]
    return report


async def async_service(settings: Settings) -> None:
    async with ProvisioningService.from_settings(settings, credential=object()) as service:
        assert_type(await service.aprovision("VPN Users"), Report)
        assert_type(await service.astatus("VPN Users"), Report)
        assert_type(await service.aclear("VPN Users"), Report)
        assert_type(await service.acheck("VPN Users"), Checklist)
        assert_type(await service.aexport("VPN Users"), Report)
        assert_type(await service.async_("VPN Users", max_changes=50), Report)


def results(report: Report, checklist: Checklist) -> None:
    outcome = report.outcome("alice")
    assert_type(outcome, Outcome)
    assert_type(outcome.status, Status)
    assert_type(outcome.enrollment_token, Secret | None)
    assert_type(outcome.to_dict(reveal_tokens=True), dict[str, Any])
    assert_type(report.summary, dict[str, int])
    assert_type(report.ok, bool)
    assert_type(report.by_status(Status.NOT_FOUND), list[Outcome])
    assert_type(report.to_dict(), dict[str, Any])
    assert_type(report._repr_html_(), str)
    assert_type(outcome._repr_html_(), str)
    assert_type(attrs.evolve(outcome, error="x"), Outcome)
    report.outcomes = ()  # type: ignore[misc]
    assert_type(checklist.ready, bool)
    assert_type(checklist.item("group").state, CheckState)
    if outcome.enrollment_token is not None:
        assert_type(outcome.enrollment_token.masked(), str)


def entra_client(settings: Settings, credential: Any) -> None:
    with EntraClient.from_settings(settings, credential=credential, scopes=["User.Read.All"]) as entra:
        match = entra.find_users(["alice@example.com"])["alice@example.com"]
        assert_type(match.unique, bool)
        assert_type(match.user, EntraUser | None)
        written = entra.write_attributes("Defguard", {"id": {"EnrollmentToken": None, "EnrollmentUrl": "u"}})
        assert_type(written["id"].ok, bool)
        assert_type(entra.read_attributes("Defguard", ["id"]), dict[str, dict[str, Any] | None])
        assert_type(entra.group_members("group-id", transitive=False), list[EntraUser])
        assert_type(entra.check_attribute_set("Defguard").ok, bool)
        assert_type(entra.base_url, str)
        entra.group_members("group-id", False)  # type: ignore[call-arg]
        entra.write_attributes("Defguard", {"id": {"EnrollmentToken": 1}})  # type: ignore[dict-item]
        # every blocking method has its async original's parameters and awaited return type
        assert_type(entra.sign_in(), None)
        assert_type(entra.me(), dict[str, Any])
        assert_type(entra.batch([{"id": "1", "method": "GET", "url": "/me"}]), dict[str, tuple[dict[str, Any], int]])
        assert_type(entra.find_users(["alice@example.com"]), dict[str, Match])
        assert_type(entra.find_groups("VPN Users"), list[EntraGroup])
        assert_type(entra.group("5f1c0000-0000-4000-8000-000000000000"), EntraGroup | None)
        assert_type(entra.groups_starting_with("VPN"), list[EntraGroup])
        assert_type(entra.check_attribute_set("Defguard"), AttributeSetCheck)
        assert_type(entra.write_attributes("Defguard", {}), dict[str, WriteResult])
        assert_type(entra.read_attributes("Defguard", ["id"], errors={}), dict[str, dict[str, Any] | None])
        assert_type(entra.read_my_attributes("Defguard"), dict[str, Any] | None)
        assert_type(entra.can_read_users(), bool)
        assert_type(entra.token_claims(), dict[str, Any] | None)
        assert_type(entra.stats, dict[str, int])
        assert_type(entra.settings, GraphSettings)
        entra.find_groups()  # type: ignore[call-arg]
        entra.read_attributes("Defguard", ["id"], {})  # type: ignore[call-arg]
        entra.can_read_users(1)  # type: ignore[call-arg]
    direct = EntraClient(settings.graph, credential, retry=RetryPolicy.none(), write_rate=5.0)
    direct.close()
    EntraClient(settings.graph, credential, write_rate="fast")  # type: ignore[arg-type]
    EntraClient(settings.graph, credential, http_client=None)  # type: ignore[call-arg]
    EntraClient.from_settings(settings, prompt=print, scopes=("User.Read.All",)).close()
    EntraClient.from_settings(settings, scope=["User.Read.All"])  # type: ignore[call-arg]


async def async_entra_client(settings: Settings, credential: Any) -> None:
    async with AsyncEntraClient(settings.graph, credential, scopes=["https://graph.microsoft.com/.default"]) as entra:
        found = await entra.find_users(["alice@example.com"])
        assert_type(found["alice@example.com"].user, EntraUser | None)
        assert_type(await entra.read_my_attributes("Defguard"), dict[str, Any] | None)


def user_machine(settings: Settings, report: Report) -> None:
    assert_type(fetch_provisioning_config(settings, prompt=print).enrollment_token, Secret)
    fetch_provisioning_config(settings, object())  # type: ignore[call-arg]
    manifest = write_export(report, "out", deep_links=True)
    assert_type(manifest, ExportManifest)
    assert_type(manifest.entries, tuple[ExportEntry, ...])
    assert_type(manifest.entries[0].ok, bool)


def graph_settings() -> None:
    assert_type(GraphSettings(client_secret="plain").client_secret, Secret | None)
    GraphSettings(client_secret=42)  # type: ignore[arg-type]


def defguard_client() -> None:
    session = requests.Session()
    with DefguardClient("https://defguard.example.com", Secret("dg-token"), session=session, timeout=5.0) as client:
        assert_type(client.users(), dict[str, DefguardUser])
        assert_type(client.groups(), list[DefguardGroup])
        assert_type(client.find_group("VPN Users"), DefguardGroup | None)
        assert_type(client.start_enrollment("alice", dt.timedelta(hours=8)), IssuedToken)
        assert_type(client.start_desktop("bob").token, Secret)
        log = client.activity_log(since=dt.datetime.now(dt.UTC), kinds={ActivityKind.TOKEN_ADDED})
        assert_type(log, ActivityLog)
        assert_type(log.events[0], ActivityEvent)
        assert_type(log.events[0].subject, str | None)
        client.activity_log(since="yesterday")  # type: ignore[arg-type]
    DefguardClient("https://defguard.example.com", 42)  # type: ignore[arg-type]
    clock = Clock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert_type(clock.advance(days=1), dt.datetime)
    DefguardClient("https://defguard.example.com", "dg-token", clock=clock)
    DefguardEmulator("2.0", clock=clock)


def errors(settings: Settings) -> None:
    try:
        sync_service(settings)
    except PreflightError as exc:
        assert_type(str(exc), str)
    except DefguardAPIError as exc:
        assert_type(exc.status, int)
        assert_type(exc.hint, str | None)
    except EntraAPIError as exc:
        assert_type(exc.code, str)
    except DefguardEntraError:
        pass


def package() -> None:
    names: list[str] = defguard_entra.__all__
    filters = RedactingFilter(["a-secret-value"])
    assert_type(filters.redact("text"), str)
    assert_type(names, list[str])


def emulators() -> None:
    with running_emulators("1.6", write_quota=WriteQuota(writes=10, per_seconds=1.0)) as (defguard, graph, scenario):
        assert_type(environment(defguard, graph), dict[str, str])
        assert_type(defguard.current_token("alice"), str | None)
        assert_type(graph.attributes("alice@example.com"), dict[str, dict[str, Any]])
        if scenario is not None:
            assert_type(scenario.group, str)
    Faults(rates={503: 0.1, DROP: 0.05}, endpoints={"start_enrollment"}, seed=1)


def identity_emulator() -> None:
    from defguard_entra.testing import IdentityEmulator, make_certificate

    with IdentityEmulator(auto_approve="admin@contoso.com") as idp, GraphEmulator(identity=idp, strict=True):
        app = idp.add_app(delegated=("User.Read",))
        assert_type(app.client_id, str)
        assert_type(idp.environment(), dict[str, str])
        assert_type(idp.browser_command("decline"), str)
        assert_type(idp.issued, list[dict[str, Any]])
        idp.refuse(65001)
        make_certificate()
