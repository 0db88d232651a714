"""``sync`` over simulated days: one clock shared by the emulators and the tool (issue 15, "Done when").

Between runs, what happens to a real roll-out happens here: tokens age and expire, a member enrolls, one leaves the
group, one is disabled in Defguard, one's Entra account is disabled, another admin re-mints a token in the UI, a
member signs in by SSO on the enrollment page (a token minted with no log row) and opens it in the client, and new
members join. After every ``sync`` each member's Entra attributes hold exactly a token Defguard accepts, or nothing
when there is nothing to hold; a second ``sync`` right after changes nothing; a plan over the threshold changes
nothing; ``status`` names every token state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, Self

import pytest

from defguard_entra import ProvisioningService, Settings, Status
from defguard_entra.models import TokenState
from defguard_entra.testing import Clock, DefguardEmulator, GraphEmulator, environment
from helpers import run_cli

GROUP = "VPN"
SET = "Defguard"
START = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


class World:
    """Both emulators and the tool on one clock."""

    def __init__(self, version: str, start: dt.datetime | None = START) -> None:
        self.clock = Clock(start)
        self.defguard = DefguardEmulator(version, enrollment_url="https://enroll.example.com", clock=self.clock)
        self.graph = GraphEmulator()
        self.entra_ids: dict[str, str] = {}

    def __enter__(self) -> Self:
        self.defguard.__enter__()
        self.graph.__enter__()
        self.defguard.add_user("helpdesk", is_admin=True)
        self.graph.define_attribute_set(SET, ("EnrollmentToken", "EnrollmentUrl", "EnrollmentTokenExpiresAt"))
        for name in ("ann", "ben", "cat", "dan", "eve", "fay", "gus"):
            self.join(name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.graph.__exit__(*exc)
        self.defguard.__exit__(*exc)

    def join(self, name: str) -> None:
        """A new member: created by directory sync (OpenID subject, no device), in the group, with an Entra user."""
        entra_id = self.graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        self.defguard.prefetch_user(entra_id, f"{name}@example.com", groups=[GROUP])
        self.entra_ids[name] = entra_id

    def service(self) -> ProvisioningService:
        settings = Settings.from_env(environment(self.defguard, self.graph))
        return ProvisioningService.from_settings(settings, clock=self.clock)

    def stored(self, name: str) -> dict[str, Any]:
        return self.graph.attributes(self.entra_ids[name]).get(SET, {})

    def sync(self, **kwargs: Any) -> Any:
        with self.service() as service:
            return service.sync(GROUP, **kwargs)

    def status(self) -> Any:
        with self.service() as service:
            return service.status(GROUP)

    def differences(self, holding: set[str], empty: set[str]) -> list[str]:
        """Members of ``holding`` must hold a token Defguard accepts now (and its expiry); ``empty`` nothing."""
        problems = []
        for name in sorted(holding):
            values = self.stored(name)
            token = values.get("EnrollmentToken")
            if not token or not self.defguard.token_accepted(token):
                problems.append(f"{name}: Entra does not hold a token Defguard accepts")
            elif values.get("EnrollmentUrl") != "https://enroll.example.com/":
                problems.append(f"{name}: wrong EnrollmentUrl {values.get('EnrollmentUrl')!r}")
            else:
                expiry = self.defguard.token_expiry(token)
                assert expiry is not None
                written = dt.datetime.fromisoformat(values["EnrollmentTokenExpiresAt"])
                if abs((written - expiry).total_seconds()) > 5:
                    problems.append(f"{name}: stored expiry {written} is not the token's {expiry}")
        problems.extend(
            f"{name}: still holds {sorted(self.stored(name))}" for name in sorted(empty) if self.stored(name)
        )
        return problems

    def quiet_second_sync(self) -> None:
        """A second ``sync`` right after: nothing minted, nothing written, everyone kept."""
        minted, writes = self.defguard.issued_count, self.graph.write_count
        report = self.sync()
        assert self.defguard.issued_count == minted
        assert self.graph.write_count == writes
        assert {o.action for o in report.outcomes} <= {"keep", "none"}, report.summary
        assert report.ok


@pytest.fixture(params=["2.0", "1.6"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    with World(request.param) as w:
        yield w


def test_sync_keeps_every_member_true_over_days(world: World) -> None:
    everyone = {"ann", "ben", "cat", "dan", "eve", "fay", "gus"}
    # Day 0, 08:00: the first sync gives everyone a token.
    report = world.sync()
    assert report.summary.get("provisioned") == 7, report.summary
    assert world.differences(everyone, set()) == []
    world.quiet_second_sync()

    # Day 0, 10:00: life happens.
    world.clock.advance(dt.timedelta(hours=2))
    world.defguard.redeem(world.stored("ann")["EnrollmentToken"])  # ann enrolls: a device, enrollment_completed
    world.defguard.leave_group("ben", GROUP)  # ben leaves the group (directory sync takes him out)
    world.defguard.disable_user("cat")
    world.graph.set_user(world.entra_ids["dan"], account_enabled=False)
    world.defguard.mint_as("helpdesk", "eve", desktop=True)  # another admin re-mints in the UI: superseded
    sso = world.defguard.sso_activate("fay")  # fay signs in by SSO on the enrollment page: no log row...
    world.defguard.open_enrollment(sso)  # ...and opens the new token in the client: enrollment_started
    world.join("hal")
    world.join("ivy")

    states = {o.username: o.token_state for o in world.status().outcomes}
    assert states["ann"] is TokenState.USED  # enrolled with it: a device now
    assert states["eve"] is TokenState.SUPERSEDED
    assert states["fay"] is TokenState.USED
    assert states["gus"] is TokenState.USABLE
    assert states["hal"] is None  # nothing stored yet
    assert states["ivy"] is None

    report = world.sync()
    by_name = {o.username or o.user_principal_name: o for o in report.outcomes}
    assert by_name["ann"].status is Status.CLEARED
    assert by_name["ben@example.com"].status is Status.CLEARED  # an outsider now: found by its attribute value
    assert by_name["cat"].status is Status.CLEARED
    assert by_name["dan"].status is Status.CLEARED
    assert by_name["eve"].status is Status.REFRESHED
    assert by_name["fay"].status is Status.REFRESHED
    assert by_name["gus"].status is Status.EXISTING
    assert by_name["hal"].status is Status.PROVISIONED
    assert by_name["ivy"].status is Status.PROVISIONED
    holding = {"eve", "fay", "gus", "hal", "ivy"}
    assert world.differences(holding, {"ann", "ben", "cat", "dan"}) == []
    world.quiet_second_sync()

    # Day 1, 03:00: gus's token (minted 08:00, 24 h) has 5 h left, within the default quarter of its lifetime: it
    # is refreshed; the tokens minted at 10:00 have 7 h left and are kept.
    world.clock.advance(dt.timedelta(hours=17))
    states = {o.username: o.token_state for o in world.status().outcomes}
    assert states["gus"] is TokenState.EXPIRING
    assert {states[name] for name in holding - {"gus"}} == {TokenState.USABLE}
    report = world.sync()
    statuses = {o.username: o.status for o in report.outcomes}
    assert statuses["gus"] is Status.REFRESHED
    assert {statuses[name] for name in holding - {"gus"}} == {Status.EXISTING}
    assert world.differences(holding, {"ann", "ben", "cat", "dan"}) == []

    # Day 2: every token has expired; all are renewed, and still nothing to do right after.
    world.clock.advance(dt.timedelta(days=2))
    assert {o.token_state for o in world.status().outcomes if o.username in holding} == {TokenState.EXPIRED}
    report = world.sync()
    assert {o.status for o in report.outcomes if o.username in holding} == {Status.REFRESHED}
    assert world.differences(holding, {"ann", "ben", "cat", "dan"}) == []
    world.quiet_second_sync()


def test_a_plan_over_the_threshold_changes_nothing(world: World) -> None:
    world.sync()
    world.clock.advance(dt.timedelta(days=2))  # all 7 expired: 7 refreshes would each replace a stored token
    minted, writes = world.defguard.issued_count, world.graph.write_count
    before = {name: world.stored(name) for name in world.entra_ids}
    report = world.sync(max_changes=3)
    assert report.held
    assert "3" in report.held
    assert world.defguard.issued_count == minted
    assert world.graph.write_count == writes
    assert {name: world.stored(name) for name in world.entra_ids} == before
    assert {o.status for o in report.outcomes} == {Status.PLANNED}
    assert report.plan.get("refresh") == 7
    report = world.sync(max_changes="100%")  # the admin looked and agrees
    assert report.summary.get("refreshed") == 7


def test_the_cli_exits_4_when_the_plan_is_held_and_changes_nothing(tmp_path: Any) -> None:
    """Through the CLI (which keeps the wall clock, so the emulators' clock starts now): four tokens superseded by
    another admin are four destructive changes; ``--max-changes 3`` holds the plan, exit 4, nothing minted or
    written; the report says why; ``--dry-run`` shows the plan and exits 0 with a note that a real run would be held."""
    with World("2.0", start=None) as world:
        env = environment(world.defguard, world.graph)
        assert run_cli(["sync", "--group-name", GROUP, "--no-progress"], env).code == 0
        for name in ("ann", "ben", "cat", "dan"):
            world.defguard.mint_as("helpdesk", name, desktop=True)
        minted, writes = world.defguard.issued_count, world.graph.write_count
        report_path = tmp_path / "held.json"
        result = run_cli(
            ["sync", "--group-name", GROUP, "--max-changes", "3", "--no-progress", "--report", str(report_path)], env
        )
        assert result.code == 4, result.stdout + result.stderr
        assert "held" in result.stdout + result.stderr
        assert world.defguard.issued_count == minted
        assert world.graph.write_count == writes
        report = result.report(report_path)
        assert report["held"]
        assert report["plan"]["refresh"] == 4
        dry = run_cli(["sync", "--group-name", GROUP, "--dry-run", "--max-changes", "3", "--no-progress"], env)
        assert dry.code == 0, dry.stdout + dry.stderr
        assert "would be held" in dry.stdout + dry.stderr
        assert world.defguard.issued_count == minted
        result = run_cli(["sync", "--group-name", GROUP, "--max-changes", "4", "--no-progress"], env)
        assert result.code == 0, result.stdout + result.stderr
        assert world.differences({"ann", "ben", "cat", "dan", "eve", "fay", "gus"}, set()) == []
