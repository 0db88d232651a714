from __future__ import annotations

from collections.abc import Iterator

import pytest

from defguard_entra.testing import DefguardEmulator, GraphEmulator, seed_sample_organisation
from helpers import Org


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's or CI's shell may steer a test (or reach a real tenant)."""
    import os

    for key in list(os.environ):
        if key.startswith(("DEFGUARD_", "AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(key)


@pytest.fixture(params=["1.6", "2.0"])
def defguard(request: pytest.FixtureRequest) -> Iterator[DefguardEmulator]:
    with DefguardEmulator(request.param, enrollment_url="https://enroll.example.com") as emulator:
        yield emulator


@pytest.fixture
def defguard2() -> Iterator[DefguardEmulator]:
    with DefguardEmulator("2.0", enrollment_url="https://enroll.example.com") as emulator:
        yield emulator


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        yield emulator


@pytest.fixture
def org(defguard: DefguardEmulator, graph: GraphEmulator) -> Org:
    return Org(defguard, graph, seed_sample_organisation(defguard, graph))
