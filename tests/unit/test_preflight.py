"""The preflight's reads go out together once Defguard answered its health check, and are judged in the order of
the checks (``provisioning._preflight``): the first failure in that order is the one reported, and a sign-in that
may prompt waits for Defguard's checks. Against the in-memory fakes of the ports."""

from __future__ import annotations

import threading

import attrs
import pytest
from test_service_fakes import GROUP, FakeDefguard, FakeGraph, _entra, _user

from defguard_entra import ProvisioningService
from defguard_entra.config import AuthMode
from defguard_entra.exceptions import DefguardAuthError, PreflightError
from defguard_entra.models import AttributeSetCheck, DefguardGroup, DefguardUser

#: How long a fake read waits for another read to start: far above the fakes' own time, so only a preflight
#: that sends its reads one after another makes it run out.
_TOGETHER = 5.0


class _SlowMe(FakeDefguard):
    """``me`` answers only once the user list was asked for (or after :data:`_TOGETHER`, then says so)."""

    def __init__(self) -> None:
        super().__init__([_user("alice")])
        self.users_asked = threading.Event()
        self.me_waited: bool | None = None

    def me(self) -> DefguardUser:
        self.me_waited = self.users_asked.wait(_TOGETHER)
        return super().me()

    def users(self) -> dict[str, DefguardUser]:
        self.users_asked.set()
        return super().users()


class _Failing(FakeDefguard):
    """Defguard with some of its checks failing: a refused API token, a non-admin's token, no such group."""

    def __init__(self, *, refused: bool = False, non_admin: bool = False, no_group: bool = False) -> None:
        super().__init__([_user("alice")])
        self.refused, self.non_admin, self.no_group = refused, non_admin, no_group

    def _refuse(self) -> None:
        if self.refused:
            raise DefguardAuthError("GET", f"{self.url}/api/v1/me", 401, "Invalid API token")

    def me(self) -> DefguardUser:
        self._refuse()
        return attrs.evolve(super().me(), username="bob" if self.non_admin else "admin", is_admin=not self.non_admin)

    def groups(self) -> list[DefguardGroup]:
        self._refuse()
        return [] if self.no_group else super().groups()

    def users(self) -> dict[str, DefguardUser]:
        self._refuse()
        return super().users()


class _NoSet(FakeGraph):
    """Graph whose sign-in is recorded and whose attribute set is missing (``missing``)."""

    def __init__(self, *, missing: bool = False, auth: AuthMode = AuthMode.ENVIRONMENT) -> None:
        super().__init__([_entra("alice")])
        self.settings = attrs.evolve(self.settings, auth=auth)
        self.missing = missing
        self.signed_in = 0

    async def sign_in(self) -> None:
        self.signed_in += 1

    async def check_attribute_set(self, set_name: str) -> AttributeSetCheck:
        if self.missing:
            return AttributeSetCheck(readable=True, set_exists=False)
        return await super().check_attribute_set(set_name)


def test_the_reads_go_out_together() -> None:
    """``me`` waits for the user list to be asked for: one after another, it would wait the whole bound."""
    defguard = _SlowMe()
    with ProvisioningService(defguard, FakeGraph([_entra("alice")])) as service:
        report = service.provision(GROUP, dry_run=True)
    assert defguard.me_waited is True
    assert [o.username for o in report.outcomes] == ["alice"]


@pytest.mark.parametrize(
    ("defguard", "missing_set", "expected"),
    [
        pytest.param(_Failing(refused=True, no_group=True), True, "Invalid API token", id="refused-token-first"),
        pytest.param(_Failing(non_admin=True, no_group=True), True, "who is not an admin", id="non-admin-next"),
        pytest.param(_Failing(no_group=True), True, "attribute set 'Defguard' does not exist", id="set-before-group"),
        pytest.param(_Failing(no_group=True), False, "no group named", id="group-last"),
    ],
)
def test_the_first_failure_in_the_order_of_the_checks_is_reported(
    defguard: _Failing, missing_set: bool, expected: str
) -> None:
    """Every later check fails too (the group, the attribute set, and with a refused token every Defguard read):
    the reads ran together, but the failure reported is the earliest check's."""
    service = ProvisioningService(defguard, _NoSet(missing=missing_set))
    with service, pytest.raises((PreflightError, DefguardAuthError)) as caught:
        service.provision(GROUP)
    assert expected in str(caught.value)
    assert defguard.minted == []


@pytest.mark.parametrize("auth", [AuthMode.INTERACTIVE, AuthMode.DEVICE_CODE])
def test_a_sign_in_that_may_prompt_waits_for_defguards_checks(auth: AuthMode) -> None:
    """A refused Defguard token never costs a browser window or a device code."""
    graph = _NoSet(auth=auth)
    with ProvisioningService(_Failing(refused=True), graph) as service, pytest.raises(DefguardAuthError):
        service.provision(GROUP)
    assert graph.signed_in == 0
    with ProvisioningService(_Failing(), graph) as service:  # and signs in once they passed
        service.provision(GROUP, dry_run=True)
    assert graph.signed_in == 1


def test_a_sign_in_that_cannot_prompt_goes_out_with_the_defguard_reads() -> None:
    """The other side of the rule above: without a prompt, Graph is signed in to alongside Defguard's reads."""
    graph = _NoSet(auth=AuthMode.ENVIRONMENT)
    with ProvisioningService(_Failing(refused=True), graph) as service, pytest.raises(DefguardAuthError):
        service.provision(GROUP)
    assert graph.signed_in == 1
