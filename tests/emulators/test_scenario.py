"""The sample organisation judges a run: ``Scenario.differences`` (what the demo's final check uses) is empty after
a real ``provision`` and names each member whose attributes differ from what Defguard considers valid."""

from __future__ import annotations

from defguard_entra import ProvisioningService, Settings
from defguard_entra.testing import environment, running_emulators


def test_differences_are_empty_after_provision_and_name_what_was_tampered() -> None:
    with running_emulators("2.0") as (defguard, graph, scenario):
        assert scenario is not None
        before = scenario.differences(defguard, graph)
        assert before == [
            f"{name}: Entra does not hold the token Defguard considers valid" for name in scenario.provisioned
        ]
        with ProvisioningService.from_settings(Settings.from_env(environment(defguard, graph))) as service:
            service.provision(scenario.group)
        assert scenario.differences(defguard, graph) == []

        alice, not_found = (
            scenario.entra_ids["alice"],
            next(
                name
                for name, status in scenario.expected.items()
                if status != "provisioned" and name in scenario.entra_ids
            ),
        )
        graph.set_attributes(alice, "Defguard", {"EnrollmentToken": "not-the-token"})
        graph.set_attributes(scenario.entra_ids[not_found], "Defguard", {"EnrollmentUrl": "https://x.example"})
        assert scenario.differences(defguard, graph) == [
            "alice: Entra does not hold the token Defguard considers valid",
            f"{not_found}: attributes written although {scenario.expected[not_found]}",
        ]
