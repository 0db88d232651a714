"""EntraClient: the blocking face of :class:`~defguard_entra._entra.AsyncEntraClient`, for scripts and notebooks.

The Graph SDK is async. Hiding that with ``asyncio.run()`` per call breaks twice: the second call on one client
fails with "Event loop is closed", because the SDK's HTTP client belongs to the first, now closed, loop; and in a
notebook cell, which already runs a loop, ``asyncio.run()`` refuses to start at all.

So an :class:`EntraClient` owns one private event loop in a daemon thread (:class:`~defguard_entra._sync.LoopThread`)
for its whole life. Its :class:`AsyncEntraClient` is *created on that loop*, so the SDK's HTTP client is born on the
loop that will drive it; every method (made by :class:`~defguard_entra._sync.delegated`) hands its coroutine to that
loop and waits. This works from scripts, from several threads at once, and from inside a running event loop (a
notebook cell, or code under ``asyncio.run``). Async applications use :class:`AsyncEntraClient` directly, with
``async with``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Self, TypedDict, TypeVar, Unpack

from ._entra import AsyncEntraClient
from ._retry import RetryPolicy
from ._scopes import COMMAND_SCOPES
from ._sync import LoopThread, delegated
from .config import GraphSettings, Settings

__all__ = ["DEFAULT_SCOPES", "EntraClient"]

#: Delegated permissions :meth:`EntraClient.from_settings` asks for in interactive or device-code sign-in: find
#: users, check the attribute set, write and read the attributes (the same as ``provision``; least privilege, see
#: ``docs/entra-setup.md``). Add ``"GroupMember.Read.All"`` to use :meth:`EntraClient.find_groups` and
#: :meth:`EntraClient.group_members`. App-only sign-in always asks for ``<Graph root>/.default``.
DEFAULT_SCOPES = COMMAND_SCOPES["provision"]
T = TypeVar("T")


class ClientOptions(TypedDict, total=False):
    """:class:`AsyncEntraClient`'s keyword arguments but ``http_client``, as :class:`EntraClient` passes them on
    (mypy checks them against the async constructor's signature there)."""

    scopes: Sequence[str] | None
    retry: RetryPolicy | None
    write_rate: float
    parallel_batches: int
    timeout: float
    owns_credential: bool


class SignInOptions(TypedDict, total=False):
    """:meth:`AsyncEntraClient.from_settings`'s keyword arguments, as :meth:`EntraClient.from_settings` passes
    them on."""

    credential: Any
    prompt: Callable[[str], None] | None
    scopes: Sequence[str] | None


class EntraClient:
    """Microsoft Graph for this tool, with blocking methods: the same names and arguments as
    :class:`AsyncEntraClient`, without ``await``.

    ``credential`` is anything with a synchronous ``get_token(*scopes, **kwargs)`` (an ``azure.identity``
    credential such as ``ClientSecretCredential``, not one from ``azure.identity.aio``); it is borrowed, never
    closed. :meth:`from_settings` builds one from :class:`Settings` instead (and closes it). Use the client as a
    context manager, or call :meth:`close`: it closes the HTTP connections, then stops the private event loop.

    .. versionadded:: 0.1.0
    """

    def __init__(self, settings: GraphSettings, credential: Any, **options: Unpack[ClientOptions]) -> None:
        """``options`` are :class:`AsyncEntraClient`'s (but ``http_client``: the HTTP client is born on the
        private loop): ``scopes``, ``retry``, ``write_rate``, ``parallel_batches``, ``timeout``, ``owns_credential``."""
        self._start(lambda: AsyncEntraClient(settings, credential, **options))

    @classmethod
    def from_settings(cls, settings: Settings, **options: Unpack[SignInOptions]) -> Self:
        """A client for ``settings.graph``, signing in the way the settings say (``settings.graph.auth``).

        ``options`` are those of :meth:`AsyncEntraClient.from_settings`, which builds the client on the private
        loop: ``credential`` overrides that sign-in (it is then borrowed: not closed); ``prompt`` receives the
        device-code instructions (the library never prints); ``scopes`` are the delegated permissions to ask for
        in interactive or device-code sign-in (default :data:`DEFAULT_SCOPES`). The settings' retry policy,
        Graph write rate and timeout apply. Raises :class:`~defguard_entra.ConfigurationError` for invalid
        settings, before any request is sent.

        .. versionadded:: 0.1.0
        """
        settings.validate()
        client = cls.__new__(cls)
        client._start(lambda: AsyncEntraClient.from_settings(settings, **options))  # noqa: SLF001 - ours
        return client

    def _start(self, factory: Callable[[], AsyncEntraClient]) -> None:
        self._closed = False
        self._loop = LoopThread(name="defguard-entra-graph")

        async def build() -> AsyncEntraClient:  # runs on the private loop: the SDK's HTTP client is born there
            return factory()

        try:
            self._client = self._loop.run(build())
        except BaseException:
            self._loop.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections on the private loop, then stop the loop (and close a credential that
        :meth:`from_settings` built). Calling it again does nothing; any other method raises ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._client.aclose())
        finally:
            self._loop.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<EntraClient {self.base_url}{state}>"

    # -- the blocking methods, one per public coroutine of AsyncEntraClient (same name, arguments and docs), and
    # -- what the async client exposes

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    sign_in = delegated(AsyncEntraClient.sign_in)
    me = delegated(AsyncEntraClient.me)
    token_claims = delegated(AsyncEntraClient.token_claims)
    can_read_users = delegated(AsyncEntraClient.can_read_users)
    find_users = delegated(AsyncEntraClient.find_users)
    find_groups = delegated(AsyncEntraClient.find_groups)
    group = delegated(AsyncEntraClient.group)
    groups_starting_with = delegated(AsyncEntraClient.groups_starting_with)

    @property
    def settings(self) -> GraphSettings:
        return self._client.settings

    group_members = delegated(AsyncEntraClient.group_members)
    check_attribute_set = delegated(AsyncEntraClient.check_attribute_set)
    write_attributes = delegated(AsyncEntraClient.write_attributes)
    read_attributes = delegated(AsyncEntraClient.read_attributes)
    find_holders = delegated(AsyncEntraClient.find_holders)

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent, 429s received and retries made so far (a copy)."""
        return dict(self._client.stats)

    read_my_attributes = delegated(AsyncEntraClient.read_my_attributes)
    batch = delegated(AsyncEntraClient.batch)

    @property
    def base_url(self) -> str:
        """The Graph base URL, with the API version (``https://graph.microsoft.com/v1.0``)."""
        return self._client.base_url
