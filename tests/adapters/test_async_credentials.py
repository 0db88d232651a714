"""Credentials and the event loop: a token refresh never stalls the requests in flight, and an
``AsyncTokenCredential`` of the caller's works wherever a credential is accepted (and stays the caller's).

kiota_authentication_azure 1.16.0 (azure_identity_access_token_provider.py) calls ``credential.get_token(...)`` on
the event loop for every request and awaits the result when it is awaitable: a sync credential's refresh (an MSAL
call, a managed-identity request) would run on the loop itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import attrs
import pytest
from azure.core.credentials import AccessToken

from defguard_entra import AsyncEntraClient, EntraClient, GraphSettings, ProvisioningService, Settings
from defguard_entra.models import CheckState
from defguard_entra.testing import Faults, GraphEmulator, environment, running_emulators

REFRESH = 0.5  # seconds a refresh takes
#: Tokens live just past the 5-minute renewal margin: every ~0.3 s the next request needs a refresh.
LIFETIME = 300.3


class SlowRefreshingCredential:
    """A sync credential whose every token call takes 0.5 s (an MSAL refresh, a managed-identity request)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.refreshes: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        started = time.monotonic()
        time.sleep(REFRESH)
        with self._lock:
            self.refreshes.append((started, time.monotonic()))
        return AccessToken(self.token, int(time.time() + LIFETIME))


class EmulatorAsyncCredential:
    """An ``AsyncTokenCredential`` of the test's own, handing out tokens the Graph emulator accepts."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(0)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@pytest.fixture
def slow_graph() -> Iterator[GraphEmulator]:
    with GraphEmulator(faults=Faults(latency=0.1)) as graph:
        yield graph


def test_a_slow_token_refresh_does_not_stall_the_requests_in_flight(slow_graph: GraphEmulator) -> None:
    credential = SlowRefreshingCredential(slow_graph.admin_token)
    finished: list[float] = []
    gaps: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def reader(entra: AsyncEntraClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert await entra.can_read_users()
            finished.append(time.monotonic())

    async def main() -> None:
        async with AsyncEntraClient(GraphSettings(graph_url=slow_graph.url), credential) as entra:
            await entra.sign_in()
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(stop))
            deadline = time.monotonic() + 2.5
            await asyncio.gather(*(reader(entra, deadline) for _ in range(6)))
            stop.set()
            await beat

    asyncio.run(main())
    later = credential.refreshes[1:]  # the first is the sign-in, before the readers start
    assert len(later) >= 2, credential.refreshes
    # the loop was never held for a refresh (it would be >= 0.5 s with the refresh on the loop)
    assert max(gaps) < 0.2, max(gaps)
    # requests kept completing while a refresh was running
    during = [t for t in finished if any(start < t < end for start, end in later)]
    assert len(during) >= 3, (len(during), later)


@pytest.fixture
def sample() -> Iterator[tuple[Settings, Any, Any, str]]:
    with running_emulators() as (defguard, graph, scenario):
        assert scenario is not None
        settings = Settings.from_env(environment(defguard, graph))
        no_token = attrs.evolve(settings, graph=GraphSettings(graph_url=graph.url))  # sign-in only via the credential
        yield no_token, defguard, graph, scenario.group


def test_an_async_token_credential_works_for_check_and_provision(sample: tuple[Settings, Any, Any, str]) -> None:
    settings, _, graph, group = sample
    credential = EmulatorAsyncCredential(graph.admin_token)
    with ProvisioningService.from_settings(settings, credential=credential) as service:
        checklist = service.check(group)
        report = service.provision(group)
    sign_in = next(item for item in checklist.items if item.key == "graph_sign_in")
    assert sign_in.state is CheckState.OK
    assert report.summary["provisioned"] >= 1
    assert not report.fatal_error
    assert credential.calls >= 1
    assert not credential.closed  # borrowed: the caller closes it


def test_an_async_token_credential_in_the_async_service(sample: tuple[Settings, Any, Any, str]) -> None:
    settings, _, graph, group = sample

    async def main() -> None:
        async with EmulatorAsyncCredential(graph.admin_token) as credential:
            async with ProvisioningService.from_settings(settings, credential=credential) as service:
                await service.asign_in()
                report = await service.astatus(group)
            assert report.summary.get("failed", 0) == 0
            assert not credential.closed
        assert credential.closed

    asyncio.run(main())


def test_the_sync_facade_accepts_an_async_token_credential(sample: tuple[Settings, Any, Any, str]) -> None:
    settings, _, graph, _ = sample
    credential = EmulatorAsyncCredential(graph.admin_token)
    with EntraClient(settings.graph, credential) as entra:
        entra.sign_in()
        assert entra.can_read_users()
    assert not credential.closed
