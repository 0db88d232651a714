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


class _LoopbackGuard:
    """An audit hook on ``socket.connect`` that refuses anything but loopback while ``on``."""

    def __init__(self) -> None:
        self.installed = False
        self.on = False
        self.refused: list[str] = []

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if event != "socket.connect" or not self.on:
            return
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(host, str) and host not in {"127.0.0.1", "::1", "localhost"}:
            self.refused.append(host)
            raise ConnectionRefusedError(f"the test tried to reach {host}: only loopback is allowed")


_GUARD = _LoopbackGuard()


@pytest.fixture
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and list) every connection the test makes to anything but loopback (audit hooks cannot be
    removed, so the hook is installed once and switched on per test)."""
    import sys

    if not _GUARD.installed:
        sys.addaudithook(_GUARD)
        _GUARD.installed = True
    _GUARD.on, _GUARD.refused = True, []
    try:
        yield _GUARD.refused
    finally:
        _GUARD.on = False
