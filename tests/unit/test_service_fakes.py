"""The service against in-memory fakes of its two ports (``provisioning._ports``): every command's decisions, in
milliseconds, without HTTP. The fakes are plain classes that satisfy the Protocols; the e2e tests judge the rest."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from defguard_entra import ProvisioningService
from defguard_entra._retry import Activity
from defguard_entra.config import GraphSettings
from defguard_entra.exceptions import ConfigurationError, EntraAPIError, PreflightError
from defguard_entra.models import (
    ATTRIBUTE_EXPIRES,
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    ActivityEvent,
    ActivityKind,
    ActivityLog,
    AttributeSetCheck,
    DefguardDeployment,
    DefguardGroup,
    DefguardServer,
    DefguardUser,
    EntraGroup,
    EntraUser,
    IssuedToken,
    Match,
    MatchedBy,
    Secret,
    Status,
    TokenKind,
    WriteResult,
)
from defguard_entra.provisioning._ports import DefguardPort, GraphPort
from defguard_entra.provisioning.plan import Member, Plan

GROUP = "Staff"
ENTRA_GROUP_ID = "00000000-0000-4000-8000-000000000001"
ENROLL = "https://enroll.example.com"


class FakeDefguard:
    """Defguard in memory: users, one group, every token minted (``minted``: username, kind) and the activity log
    rows each one leaves (``rows``: ``token_added`` under the admin for the member, at ``clock()``)."""

    def __init__(self, users: Sequence[DefguardUser], *, version: str = "2.0.1") -> None:
        self.users_by_name = {u.username: u for u in users}
        self.group = DefguardGroup(GROUP, tuple(self.users_by_name))
        self.version = version
        self.minted: list[tuple[str, TokenKind]] = []
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        self.rows: list[ActivityEvent] = []
        self.log_problem: str | None = None  # the log is not available, for this reason
        self.log_reads: list[dt.datetime] = []  # the ``since`` of each read
        self.on_mint: Any = None  # called with the username after each token
        self.activity = Activity()
        self.patience = 60.0

    @property
    def url(self) -> str:
        return "https://defguard.example.com"

    def close(self) -> None:
        pass

    def server(self) -> DefguardServer:
        return DefguardServer(self.version)

    def me(self) -> DefguardUser:
        return DefguardUser("admin", "admin@example.com", active=True, enrolled=True, is_admin=True)

    def groups(self) -> list[DefguardGroup]:
        return [self.group]

    def find_group(self, name: str) -> DefguardGroup | None:
        return self.group if name == self.group.name else None

    def users(self) -> dict[str, DefguardUser]:
        return dict(self.users_by_name)

    def user(self, username: str) -> DefguardUser | None:
        return self.users_by_name.get(username)

    def deployment(self) -> DefguardDeployment:
        return DefguardDeployment(enrollment_url=ENROLL, token_lifetime=dt.timedelta(hours=24))

    def add_row(
        self, kind: ActivityKind, actor: str | None, subject: str | None, at: dt.datetime | None = None
    ) -> None:
        when = at or self.clock()
        self.rows.append(ActivityEvent(when, kind, kind.value, actor, subject, id=len(self.rows) + 1))

    def activity_log(self, *, since: dt.datetime, kinds: Collection[ActivityKind] | None = None) -> ActivityLog:
        self.log_reads.append(since)
        if self.log_problem is not None:
            return ActivityLog(available=False, problem=self.log_problem)
        return ActivityLog(tuple(e for e in self.rows if e.at >= since and (kinds is None or e.kind in kinds)))

    def _issue(self, username: str, kind: TokenKind, lifetime: dt.timedelta | None = None) -> IssuedToken:
        self.minted.append((username, kind))
        now = self.clock()
        self.add_row(ActivityKind.TOKEN_ADDED, "admin", username, now)
        expires = now + (lifetime if lifetime is not None and kind is TokenKind.ENROLLMENT else dt.timedelta(hours=24))
        token = IssuedToken(Secret(f"{kind.value}-{username}-{len(self.minted)}"), ENROLL, kind, expires)
        if self.on_mint is not None:
            self.on_mint(username)
        return token

    def start_enrollment(
        self, username: str, lifetime: dt.timedelta | None = None, *, proceed: Any = None
    ) -> IssuedToken:
        return self._issue(username, TokenKind.ENROLLMENT, lifetime)

    def start_desktop(self, username: str, *, proceed: Any = None) -> IssuedToken:
        return self._issue(username, TokenKind.DESKTOP)


class FakeGraph:
    """Graph in memory: users found by mail, the attribute set's values per user, and every write (``writes``)."""

    def __init__(self, users: Sequence[EntraUser]) -> None:
        self.settings = GraphSettings()
        self.base_url = "https://graph.example.com/v1.0"
        self.activity = Activity()
        self.patience = 60.0
        self.users = list(users)
        self.aliases: dict[str, EntraUser] = {}  # extra addresses that resolve to a user
        self.values: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, Mapping[str, str | None]]] = []
        self.failing_writes: dict[str, int] = {}  # entra id → status answered to its writes
        self.failing_reads: set[str] = set()
        self.outside: list[EntraUser] = []  # users in the directory who are not in the group
        self.defines_expiry: bool | None = False  # whether the set defines EnrollmentTokenExpiresAt

    async def aclose(self) -> None:
        pass

    async def sign_in(self) -> None:
        pass

    async def me(self) -> dict[str, Any]:
        return {}

    async def token_claims(self) -> dict[str, Any] | None:
        return {"idtyp": "app", "roles": ["CustomSecAttributeAssignment.ReadWrite.All"]}

    async def can_read_users(self) -> bool:
        return True

    async def check_attribute_set(self, set_name: str) -> AttributeSetCheck:
        if self.defines_expiry is None:
            return AttributeSetCheck(readable=False)
        return AttributeSetCheck(readable=True, set_exists=True, defines_expiry=self.defines_expiry)

    async def find_groups(self, display_name: str) -> list[EntraGroup]:
        return [EntraGroup("g1", display_name)] if display_name == GROUP else []

    async def group(self, group_id: str) -> EntraGroup | None:
        return EntraGroup(group_id, GROUP) if group_id == ENTRA_GROUP_ID else None

    async def groups_starting_with(self, prefix: str) -> list[EntraGroup]:
        return [EntraGroup("g1", GROUP)] if GROUP.lower().startswith(prefix.lower()) else []

    async def group_members(self, group_id: str, *, transitive: bool = True) -> list[EntraUser]:
        return list(self.users)

    async def find_users(self, addresses: Sequence[str]) -> Mapping[str, Match]:
        found: dict[str, Match] = {}
        for address in addresses:
            key = address.strip().lower()
            user = self.aliases.get(key) or next((u for u in self.users if (u.mail or "").lower() == key), None)
            found[key] = Match(user, MatchedBy.MAIL) if user is not None else Match()
        return found

    async def read_attributes(
        self, set_name: str, entra_ids: Sequence[str], *, errors: dict[str, str] | None = None
    ) -> Mapping[str, Mapping[str, Any] | None]:
        out: dict[str, Mapping[str, Any] | None] = {}
        for entra_id in entra_ids:
            if entra_id in self.failing_reads and errors is not None:
                errors[entra_id] = "Graph 404 Request_ResourceNotFound"
                out[entra_id] = None
            else:
                out[entra_id] = dict(self.values[entra_id]) if self.values.get(entra_id) else None
        return out

    async def find_holders(self, set_name: str, attribute: str, value: str) -> list[EntraUser]:
        return [u for u in [*self.users, *self.outside] if self.values.get(u.id, {}).get(attribute) == value]

    async def write_attributes(
        self, set_name: str, values: Mapping[str, Mapping[str, str | None]], *, on_written: Any = None
    ) -> Mapping[str, WriteResult]:
        results = {}
        for entra_id, pair in values.items():
            status = self.failing_writes.get(entra_id)
            if status is not None:
                results[entra_id] = WriteResult(ok=False, status=status, error=f"Graph {status} boom")
                continue
            self.writes.append((entra_id, dict(pair)))
            stored = self.values.setdefault(entra_id, {})
            for name, value in pair.items():
                if value is None:
                    stored.pop(name, None)
                else:
                    stored[name] = value
            results[entra_id] = WriteResult(ok=True, status=204)
        return results


def _user(name: str, *, devices: int = 0, enrolled: bool = False, active: bool = True) -> DefguardUser:
    return DefguardUser(name, f"{name}@example.com", active=active, enrolled=enrolled, devices=devices)


def _entra(name: str) -> EntraUser:
    return EntraUser(f"id-{name}", f"{name}@example.com", mail=f"{name}@example.com", account_enabled=True)


def _stored(graph: FakeGraph, name: str, *, token: str | None = "old", url: str | None = ENROLL) -> None:
    graph.values[f"id-{name}"] = {k: v for k, v in ((ATTRIBUTE_TOKEN, token), (ATTRIBUTE_URL, url)) if v}


@pytest.fixture
def fakes() -> tuple[FakeDefguard, FakeGraph]:
    names = ["alice", "bob", "carol"]
    defguard = FakeDefguard(
        [_user("alice"), _user("bob", enrolled=True), _user("carol", devices=1, enrolled=True), _user("dave")]
    )
    graph = FakeGraph([_entra(n) for n in names])  # dave has no Entra user
    return defguard, graph


@pytest.fixture
def service(fakes: tuple[FakeDefguard, FakeGraph]) -> Iterator[ProvisioningService]:
    with ProvisioningService(*fakes) as svc:
        yield svc


def _statuses(report: Any) -> dict[str, Status]:
    return {o.username: o.status for o in report.outcomes}


def test_the_fakes_satisfy_the_ports(fakes: tuple[FakeDefguard, FakeGraph]) -> None:
    defguard: DefguardPort = fakes[0]
    graph: GraphPort = fakes[1]
    assert defguard.url
    assert graph.base_url


def test_provision_mints_the_right_kind_and_stores_it_per_member(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    report = service.provision(GROUP)
    assert _statuses(report) == {
        "alice": Status.PROVISIONED,
        "bob": Status.PROVISIONED,  # enrolled without a device: a desktop-activation token on 2.x
        "carol": Status.ALREADY_ENROLLED,
        "dave": Status.NOT_FOUND,
    }
    assert defguard.minted == [("alice", TokenKind.ENROLLMENT), ("bob", TokenKind.DESKTOP)]
    for name, kind in defguard.minted:
        outcome = report.outcome(name)
        assert outcome.token_kind is kind
        token = outcome.enrollment_token
        assert token is not None
        assert graph.values[f"id-{name}"] == {ATTRIBUTE_TOKEN: token.value, ATTRIBUTE_URL: ENROLL}
    assert report.outcome("carol").enrollment_token is None
    assert any("desktop-activation token" in n and "24 h" in n for n in report.notes)
    assert set(report.audit["timings"]) == {"preflight_seconds", "resolve_seconds", "write_seconds"}


def test_the_report_audits_what_the_service_knows(service: ProvisioningService) -> None:
    options = service.provision(GROUP, dry_run=True).audit["options"]
    assert options == {
        "defguard_url": "https://defguard.example.com",
        "graph_url": "https://graph.example.com/v1.0",
        "graph_auth": GraphSettings().resolved_auth().value,
        "attribute_set": "Defguard",
    }


def test_a_dry_run_mints_nothing_and_writes_nothing(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    report = service.provision(GROUP, dry_run=True)
    assert report.dry_run
    assert _statuses(report)["alice"] is Status.PLANNED
    assert report.outcome("alice").token_kind is TokenKind.ENROLLMENT
    assert report.outcome("bob").token_kind is TokenKind.DESKTOP
    assert defguard.minted == []
    assert graph.writes == []


def test_only_missing_skips_members_with_a_stored_pair(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    _stored(graph, "alice")
    _stored(graph, "bob", url=None)  # only half a pair: minted again
    report = service.provision(GROUP, only_missing=True)
    assert _statuses(report)["alice"] is Status.EXISTING
    assert _statuses(report)["bob"] is Status.PROVISIONED
    assert [name for name, _ in defguard.minted] == ["bob"]


def test_a_graph_write_failure_leaves_the_member_failed_and_reported(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    graph.failing_writes["id-bob"] = 500
    report = service.provision(GROUP)
    bob = report.outcome("bob")
    assert bob.status is Status.FAILED
    assert bob.error is not None
    assert bob.error.startswith("Graph write failed: Graph 500 boom; the token minted for this member is unusable")
    assert bob.enrollment_token is None  # a token that is not stored is not handed out
    assert report.outcome("alice").status is Status.PROVISIONED
    assert not report.ok
    assert ("bob", TokenKind.DESKTOP) in defguard.minted


def test_a_refused_probe_stops_the_run_before_any_token(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    from defguard_entra.exceptions import PreflightError

    defguard, graph = fakes
    graph.failing_writes["id-alice"] = 403
    with pytest.raises(PreflightError, match="Graph refused to write attribute set 'Defguard'"):
        service.provision(GROUP)
    assert defguard.minted == []


def test_shared_entra_users_are_ambiguous_and_get_no_token(fakes: tuple[FakeDefguard, FakeGraph]) -> None:
    defguard, graph = fakes
    defguard.users_by_name["alice2"] = DefguardUser("alice2", "alias@example.com", active=True, enrolled=False)
    defguard.group = DefguardGroup(GROUP, tuple(defguard.users_by_name))
    graph.aliases["alias@example.com"] = graph.users[0]
    with ProvisioningService(defguard, graph) as service:
        report = service.provision(GROUP)
    for name in ("alice", "alice2"):
        outcome = report.outcome(name)
        assert outcome.status is Status.AMBIGUOUS
        assert outcome.error == "Entra user alice@example.com matches several Defguard users: alice, alice2"
    assert [name for name, _ in defguard.minted] == ["bob"]


def test_a_stop_before_the_run_interrupts_every_member_to_mint(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, _ = fakes
    stop = threading.Event()
    stop.set()
    report = service.provision(GROUP, stop=stop)
    assert report.interrupted
    assert _statuses(report)["alice"] is Status.INTERRUPTED
    assert report.outcome("alice").error == "the run was interrupted before this member"
    assert defguard.minted == []


def test_a_stop_mid_run_finishes_the_member_in_flight_and_interrupts_the_rest(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    stop = threading.Event()
    defguard.on_mint = lambda _name: stop.set()
    report = service.provision(GROUP, stop=stop)
    assert report.interrupted
    assert _statuses(report)["alice"] is Status.PROVISIONED
    assert _statuses(report)["bob"] is Status.INTERRUPTED
    assert [entra_id for entra_id, pair in graph.writes if pair] == ["id-alice"]  # the probe wrote nothing


def test_progress_that_raises_cannot_end_the_run(service: ProvisioningService) -> None:
    def progress(done: int, total: int) -> None:
        raise BrokenPipeError

    report = service.provision(GROUP, progress=progress)
    assert report.outcome("alice").status is Status.PROVISIONED


def test_status_reports_what_is_stored_and_what_provision_would_mint(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    _stored(graph, "alice")
    _stored(graph, "bob", token=None)
    report = service.status(GROUP)
    assert _statuses(report) == {
        "alice": Status.SET,
        "bob": Status.PARTIAL,
        "carol": Status.NOT_SET,
        "dave": Status.NOT_FOUND,
    }
    alice = report.outcome("alice")
    assert alice.enrollment_token == Secret("old")
    assert alice.enrollment_url == ENROLL
    assert alice.would_mint is TokenKind.ENROLLMENT
    assert report.outcome("carol").would_mint is None
    assert report.outcome("carol").error is not None
    assert set(report.audit["timings"]) == {"preflight_seconds", "resolve_seconds", "read_seconds", "log_seconds"}
    assert defguard.minted == []
    assert graph.writes == []


def test_status_notes_when_graph_returns_nothing_for_anyone(service: ProvisioningService) -> None:
    report = service.status(GROUP)
    assert any("Graph returned no attribute values for any of the 3 members" in n for n in report.notes)


def test_clear_nulls_only_what_did_its_job(fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService) -> None:
    _, graph = fakes
    _stored(graph, "alice")  # no device: kept
    _stored(graph, "carol")  # a device: cleared
    report = service.clear(GROUP)
    assert _statuses(report) == {
        "alice": Status.KEPT,
        "bob": Status.NOT_SET,
        "carol": Status.CLEARED,
        "dave": Status.NOT_FOUND,
    }
    assert graph.writes == [("id-carol", {ATTRIBUTE_TOKEN: None, ATTRIBUTE_URL: None})]
    assert report.audit["options"]["all"] is False


def test_clear_all_in_a_dry_run_plans_and_writes_nothing(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    _stored(graph, "alice")
    report = service.clear(GROUP, all_members=True, dry_run=True)
    assert _statuses(report)["alice"] is Status.PLANNED
    assert graph.writes == []


def test_export_reads_back_complete_pairs_only(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    _stored(graph, "alice", token="t-alice")
    _stored(graph, "bob", url=None)
    report = service.export(GROUP)
    alice = report.outcome("alice")
    assert alice.status is Status.SET
    assert alice.enrollment_token == Secret("t-alice")
    assert alice.enrollment_url == ENROLL
    assert report.outcome("bob").status is Status.FAILED
    assert "timings" not in report.audit
    # carol is enrolled (skipped before Entra is asked), dave is not found
    assert _statuses(report)["carol"] is Status.ALREADY_ENROLLED


def test_export_after_a_failed_provision_reads_nothing_back_for_that_member(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    graph.failing_writes["id-bob"] = 500
    provisioned = service.provision(GROUP)
    graph.failing_writes.clear()
    report = service.export(GROUP, after=provisioned)
    assert report.outcome("alice").status is Status.SET
    bob = report.outcome("bob")
    assert bob.status is Status.FAILED
    assert (bob.error or "").startswith("provision failed for this member in this run")


def test_a_plan_puts_stale_members_first() -> None:
    members = [Member("a"), Member("b"), Member("c")]
    members[0].settle(Status.DISABLED)
    plan = Plan.of(members, frozenset({"c"}))
    assert [m.username for m in plan.mint] == ["c", "b"]
    assert plan.note() is not None
    assert "1 member had a token minted by an earlier run" in (plan.note() or "")
    assert Plan.of(members, frozenset()).note() is None


def test_members_an_unfinished_run_left_stale_are_minted_first(
    fakes: tuple[FakeDefguard, FakeGraph], tmp_path: Path
) -> None:
    from defguard_entra.provisioning.journal import Journal, run_key

    defguard, graph = fakes
    key = run_key(defguard.url, "defguard", GROUP)
    with Journal(tmp_path, key, group_name=GROUP, defguard_url=defguard.url) as journal:
        journal.minting(["bob"])
    with ProvisioningService(defguard, graph, state_dir=tmp_path) as service:
        assert _statuses(service.status(GROUP))["bob"] is Status.STALE
        report = service.provision(GROUP)
    assert [name for name, _ in defguard.minted] == ["bob", "alice"]
    assert any(n.startswith("1 member had a token minted by an earlier run") for n in report.notes)
    assert Journal.peek(tmp_path, key) == frozenset()


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [
        ("provision", {"group_name": " "}, "group_name is empty"),
        ("status", {"group_source": "ldap"}, "group_source must be 'defguard' or 'entra'"),
        ("clear", {"group_source": "ldap"}, "group_source must be 'defguard' or 'entra'"),
        ("check", {"group_name": ""}, "group_name is empty"),
        ("export", {"enrolled": "never"}, "enrolled must be one of"),
        ("provision", {"lifetime": dt.timedelta(0)}, "must be positive"),
    ],
)
def test_every_command_checks_its_arguments_before_asking_a_server(
    fakes: tuple[FakeDefguard, FakeGraph],
    service: ProvisioningService,
    command: str,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    from defguard_entra.exceptions import ConfigurationError

    arguments = {"group_name": GROUP, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        getattr(service, command)(arguments.pop("group_name"), **arguments)
    assert fakes[0].minted == []


def test_a_name_not_found_suggests_through_the_ports(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    with pytest.raises(PreflightError, match=r"did you mean 'Staff' \(differs only in case\)\? Pass that name"):
        service.provision("STAFF")
    with pytest.raises(PreflightError, match=r"did you mean 'Staff' \(id g1: yours has a trailing space\)\?"):
        service.status("Staff ", group_source="entra")
    assert fakes[0].minted == []


def test_a_refused_candidate_search_still_says_not_found(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(prefix: str) -> list[EntraGroup]:
        raise EntraAPIError(403, "Authorization_RequestDenied", "Insufficient privileges", method="GET", url="/groups")

    monkeypatch.setattr(fakes[1], "groups_starting_with", refused)
    with pytest.raises(PreflightError, match=r"Entra has no group with displayName 'Staff ': check --group-name$"):
        service.status("Staff ", group_source="entra")


def test_group_id_through_the_ports(service: ProvisioningService) -> None:
    report = service.status(group_id=ENTRA_GROUP_ID.upper(), group_source="entra")
    assert report.group_name == GROUP
    assert report.audit["group_id"] == ENTRA_GROUP_ID
    with pytest.raises(PreflightError, match="Entra has no group with object id"):
        service.status(group_id=ENTRA_GROUP_ID.replace("1", "2"), group_source="entra")
    with pytest.raises(ConfigurationError, match="group_id must be the Defguard group's id"):
        service.status(group_id=True)


# -- the optional third attribute, EnrollmentTokenExpiresAt ------------------------------------------------------


def test_provision_stores_the_expiry_in_the_same_write_when_the_set_defines_it(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    defguard, graph = fakes
    graph.defines_expiry = True
    expiry = dt.datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    issue = defguard._issue

    def with_expiry(username: str, kind: TokenKind, lifetime: dt.timedelta | None = None) -> IssuedToken:
        token = issue(username, kind, lifetime)  # bob's desktop token: no expiry known (1.6), so null is written
        return attrs.evolve(token, expires_at=expiry if kind is TokenKind.ENROLLMENT else None)

    defguard._issue = with_expiry  # type: ignore[method-assign]
    report = service.provision(GROUP)
    assert report.outcome("alice").status is Status.PROVISIONED
    token_writes = {i: w for i, w in graph.writes if w.get(ATTRIBUTE_TOKEN)}
    assert token_writes["id-alice"][ATTRIBUTE_EXPIRES] == "2030-01-02T03:04:05Z"
    assert ATTRIBUTE_EXPIRES in token_writes["id-bob"]
    assert token_writes["id-bob"][ATTRIBUTE_EXPIRES] is None
    assert graph.values["id-alice"][ATTRIBUTE_EXPIRES] == "2030-01-02T03:04:05Z"


@pytest.mark.parametrize("defines", [False, None], ids=["not-defined", "definitions-unreadable"])
def test_provision_never_writes_the_expiry_to_a_set_that_may_not_define_it(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService, defines: bool | None
) -> None:
    _, graph = fakes
    graph.defines_expiry = defines
    report = service.provision(GROUP)
    assert report.outcome("alice").status is Status.PROVISIONED
    assert graph.writes
    assert not any(ATTRIBUTE_EXPIRES in values for _, values in graph.writes)


def test_the_write_probe_stays_a_write_that_changes_nothing_with_the_expiry_defined(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    graph.defines_expiry = True
    _stored(graph, "alice")
    graph.values["id-alice"][ATTRIBUTE_EXPIRES] = "not a date"  # edited by hand: the probe must not touch it
    service.provision(GROUP)
    probe, first_token = graph.writes[0], graph.writes[1]
    assert probe == ("id-alice", {ATTRIBUTE_TOKEN: "old", ATTRIBUTE_URL: ENROLL})  # what is stored, written back
    assert first_token[0] == "id-alice"
    assert first_token[1][ATTRIBUTE_TOKEN] != "old"
    written = first_token[1][ATTRIBUTE_EXPIRES]  # the new token's expiry replaces the hand-edited value
    assert written is not None
    assert dt.datetime.fromisoformat(written) > dt.datetime.now(dt.UTC)


def test_clear_nulls_the_expiry_too_when_the_set_defines_it(
    fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService
) -> None:
    _, graph = fakes
    graph.defines_expiry = True
    _stored(graph, "carol")
    graph.values["id-carol"][ATTRIBUTE_EXPIRES] = "2030-01-02T03:04:05Z"
    service.clear(GROUP)
    assert graph.writes == [("id-carol", {ATTRIBUTE_TOKEN: None, ATTRIBUTE_URL: None, ATTRIBUTE_EXPIRES: None})]
    assert not graph.values["id-carol"]


def test_status_shows_the_stored_expiry(fakes: tuple[FakeDefguard, FakeGraph], service: ProvisioningService) -> None:
    _, graph = fakes
    _stored(graph, "alice")
    _stored(graph, "bob")
    graph.values["id-alice"][ATTRIBUTE_EXPIRES] = "2030-01-02T03:04:05Z"
    graph.values["id-bob"][ATTRIBUTE_EXPIRES] = "next tuesday"
    report = service.status(GROUP)
    assert report.outcome("alice").token_expires_at == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert report.outcome("bob").token_expires_at is None  # not a date: unknown, not a crash
