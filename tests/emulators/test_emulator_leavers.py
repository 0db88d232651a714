"""Conformance of the emulators' leaver and offboarding helpers, which ``sync``'s simulated days use."""

from __future__ import annotations

import pytest

from defguard_entra import DefguardClient, EntraClient, Settings
from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment


@pytest.mark.parametrize("version", ["1.6", "2.0"])
def test_a_member_who_leaves_a_group_keeps_its_tokens(version: str) -> None:
    """v1.6.6 and v2.0.1 ``crates/defguard_core/src/handlers/group.rs`` ``remove_group_member``: only the membership
    goes (``user.remove_from_group``); the user and its unused enrollment token stay."""
    with DefguardEmulator(version, enrollment_url="https://enroll.example.com") as emu:
        emu.add_user("ann", groups=["VPN"])
        emu.add_user("ben", groups=["VPN"])
        with DefguardClient(emu.url, emu.admin_token) as client:
            token = client.start_enrollment("ben").token.value
            emu.leave_group("ben", "VPN")
            group = client.find_group("VPN")
            assert group is not None
            assert group.members == ("ann",)
            assert client.user("ben") is not None
        assert emu.token_accepted(token)


def test_a_disabled_entra_account_reads_account_enabled_false() -> None:
    """https://learn.microsoft.com/graph/api/resources/user (``accountEnabled``: "true if the account is enabled;
    otherwise, false"), read through the real msgraph-sdk with the members of a group."""
    with DefguardEmulator("2.0") as defguard, GraphEmulator() as graph:
        ann = graph.add_user("ann@example.com", mail="ann@example.com")
        group = graph.add_group("VPN", [ann])
        settings = Settings.from_env(environment(defguard, graph))
        with EntraClient.from_settings(settings) as entra:
            assert [u.account_enabled for u in entra.group_members(group)] == [True]
            graph.set_user(ann, account_enabled=False)
            assert [u.account_enabled for u in entra.group_members(group)] == [False]
