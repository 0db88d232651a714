"""What the orchestrator needs of its two clients, as :class:`typing.Protocol`\\ s, and the :class:`Clients` pair
the phases share.

:class:`~defguard_entra.DefguardClient` and :class:`~defguard_entra.AsyncEntraClient` satisfy them; so can plain
in-memory fakes (``tests/unit/test_service_fakes.py``), which lets the service be tested in milliseconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

import attrs

from .._retry import Activity
from ..config import GraphSettings
from ..models import (
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
    WriteResult,
)

__all__ = ["Clients", "DefguardPort", "GraphPort"]

T = TypeVar("T")


class DefguardPort(Protocol):
    """The Defguard core API, blocking (the service runs each call on its worker threads)."""

    activity: Activity  # when it last answered (the run's watchdog reads it)

    @property
    def url(self) -> str: ...
    @property
    def patience(self) -> float: ...  # the longest one try may go unanswered (connect and read timeouts)
    def close(self) -> None: ...
    def server(self) -> DefguardServer: ...
    def me(self) -> DefguardUser: ...
    def groups(self) -> list[DefguardGroup]: ...
    def find_group(self, name: str) -> DefguardGroup | None: ...
    def users(self) -> dict[str, DefguardUser]: ...
    def user(self, username: str) -> DefguardUser | None: ...
    def deployment(self) -> DefguardDeployment: ...
    def start_enrollment(
        self, username: str, lifetime: dt.timedelta | None = None, *, proceed: Callable[[], bool] | None = None
    ) -> IssuedToken: ...
    def start_desktop(self, username: str, *, proceed: Callable[[], bool] | None = None) -> IssuedToken: ...
    def activity_log(
        self, *, since: dt.datetime, kinds: Collection[ActivityKind] | None = None
    ) -> ActivityLog: ...  # all pages; not readable: ActivityLog(available=False, ...), never an exception


class GraphPort(Protocol):
    """Microsoft Graph, async."""

    settings: GraphSettings
    base_url: str
    activity: Activity

    @property
    def patience(self) -> float: ...

    async def aclose(self) -> None: ...
    async def sign_in(self) -> None: ...
    async def me(self) -> dict[str, Any]: ...
    async def token_claims(self) -> dict[str, Any] | None: ...
    async def can_read_users(self) -> bool: ...
    async def check_attribute_set(self, set_name: str) -> AttributeSetCheck: ...
    async def find_groups(self, display_name: str) -> list[EntraGroup]: ...
    async def group(self, group_id: str) -> EntraGroup | None: ...
    async def groups_starting_with(self, prefix: str) -> list[EntraGroup]: ...
    async def group_members(self, group_id: str, *, transitive: bool = True) -> list[EntraUser]: ...
    async def find_users(self, addresses: Sequence[str]) -> Mapping[str, Match]: ...
    async def read_attributes(
        self, set_name: str, entra_ids: Sequence[str], *, errors: dict[str, str] | None = None
    ) -> Mapping[str, Mapping[str, Any] | None]: ...
    async def write_attributes(
        self,
        set_name: str,
        values: Mapping[str, Mapping[str, str | None]],
        *,
        on_written: Callable[[str, bool], None] | None = None,
    ) -> Mapping[str, WriteResult]: ...
    async def find_holders(self, set_name: str, attribute: str, value: str) -> list[EntraUser]: ...


@attrs.frozen
class Clients:
    """The two clients, the attribute set and the Defguard worker pool: what every phase of a command uses."""

    defguard: DefguardPort
    entra: GraphPort
    attribute_set: str
    executor: Executor

    async def dg(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking Defguard call on the pooled worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
