"""EntraClient: the blocking face of :class:`~defguard_entra._entra.AsyncEntraClient`, for scripts and notebooks.

The Graph SDK is async. Hiding that with ``asyncio.run()`` per call breaks twice (``graph-api.md`` section 11): the
second call on one client fails with "Event loop is closed", because the SDK's HTTP client belongs to the first,
now closed, loop; and in a notebook cell, which already runs a loop, ``asyncio.run()`` refuses to start at all.

So an :class:`EntraClient` owns one private event loop in a daemon thread (:class:`~defguard_entra._sync.LoopThread`)
for its whole life. Its :class:`AsyncEntraClient` is *created on that loop*, so the SDK's HTTP client is born on the
loop that will drive it; every method hands its coroutine to that loop and waits. This works from scripts, from
several threads at once, and from inside a running event loop (a notebook cell, or code under ``asyncio.run``).
Async applications use :class:`AsyncEntraClient` directly, with ``async with``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

from ._entra import AsyncEntraClient, AttributeSetCheck, Match, WriteResult
from ._retry import RetryPolicy
from ._scopes import COMMAND_SCOPES
from ._sync import LoopThread
from .config import GraphSettings, Settings
from .models import EntraGroup, EntraUser

__all__ = ["DEFAULT_SCOPES", "EntraClient"]

#: Delegated permissions :meth:`EntraClient.from_settings` asks for in interactive or device-code sign-in: find
#: users, check the attribute set, write and read the attributes (the same as ``provision``; least privilege, see
#: ``docs/entra-setup.md``). Add ``"GroupMember.Read.All"`` to use :meth:`EntraClient.find_groups` and
#: :meth:`EntraClient.group_members`. App-only sign-in always asks for ``<Graph root>/.default``.
DEFAULT_SCOPES = COMMAND_SCOPES["provision"]


class EntraClient:
    """Microsoft Graph for this tool, with blocking methods: the same names and arguments as
    :class:`AsyncEntraClient`, without ``await``.

    ``credential`` is anything with a synchronous ``get_token(*scopes, **kwargs)`` (an ``azure.identity``
    credential such as ``ClientSecretCredential``, not one from ``azure.identity.aio``); it is borrowed, never
    closed. :meth:`from_settings` builds one from :class:`Settings` instead (and closes it). Use the client as a
    context manager, or call :meth:`close`: it closes the HTTP connections, then stops the private event loop.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        settings: GraphSettings,
        credential: Any,
        *,
        scopes: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        write_rate: float = 20.0,
        parallel_batches: int = 4,
        timeout: float = 60.0,
        owns_credential: bool = False,
    ) -> None:
        self._start(
            lambda: AsyncEntraClient(
                settings,
                credential,
                scopes=scopes,
                retry=retry,
                write_rate=write_rate,
                parallel_batches=parallel_batches,
                timeout=timeout,
                owns_credential=owns_credential,
            )
        )

    @classmethod
    def _wrapping(cls, factory: Callable[[], AsyncEntraClient]) -> Self:
        client = cls.__new__(cls)
        client._start(factory)  # noqa: SLF001 - the instance is ours
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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: Any = None,
        prompt: Callable[[str], None] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> Self:
        """A client for ``settings.graph``, signing in the way the settings say (``settings.graph.auth``).

        ``credential`` overrides that sign-in (it is then borrowed: not closed); ``prompt`` receives the
        device-code instructions (the library never prints); ``scopes`` are the delegated permissions to ask for
        in interactive or device-code sign-in (default :data:`DEFAULT_SCOPES`). The settings' retry policy,
        Graph write rate and timeout apply. Raises :class:`~defguard_entra.ConfigurationError` for invalid
        settings, before any request is sent.

        .. versionadded:: 0.1.0
        """
        settings.validate()
        return cls._wrapping(
            lambda: AsyncEntraClient.from_settings(settings, credential=credential, prompt=prompt, scopes=scopes)
        )

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

    # -- what the async client exposes -----------------------------------------------------------------------

    @property
    def settings(self) -> GraphSettings:
        return self._client.settings

    @property
    def base_url(self) -> str:
        """The Graph base URL, with the API version (``https://graph.microsoft.com/v1.0``)."""
        return self._client.base_url

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent, 429s received and retries made so far (a copy)."""
        return dict(self._client.stats)

    # -- the blocking methods: one per public coroutine of AsyncEntraClient, same name, same arguments ----------

    def sign_in(self) -> None:
        """Acquire the first access token now (prompts happen here, before any work fans out)."""
        self._loop.run(self._client.sign_in())

    def me(self) -> dict[str, Any]:
        """The signed-in user (delegated sign-in only)."""
        return self._loop.run(self._client.me())

    def batch(self, requests: Sequence[Mapping[str, Any]]) -> dict[str, tuple[dict[str, Any], int]]:
        """Send up to 20 requests as one ``$batch``: see :meth:`AsyncEntraClient.batch`."""
        return self._loop.run(self._client.batch(requests))

    def find_users(self, addresses: Iterable[str]) -> dict[str, Match]:
        """Resolve e-mail addresses (by mail, then userPrincipalName, then otherMails); keys are lower-cased."""
        return self._loop.run(self._client.find_users(addresses))

    def find_groups(self, display_name: str) -> list[EntraGroup]:
        """Groups whose displayName equals ``display_name`` (names are not unique in Entra)."""
        return self._loop.run(self._client.find_groups(display_name))

    def group_members(self, group_id: str, *, transitive: bool = True) -> list[EntraUser]:
        """The users in a group (nested groups flattened when ``transitive``), each once."""
        return self._loop.run(self._client.group_members(group_id, transitive=transitive))

    def check_attribute_set(self, set_name: str) -> AttributeSetCheck:
        """Whether the set and both String attributes are defined (``readable=False``: may not look)."""
        return self._loop.run(self._client.check_attribute_set(set_name))

    def write_attributes(
        self,
        set_name: str,
        values: Mapping[str, Mapping[str, str | None]],
    ) -> dict[str, WriteResult]:
        """Write attributes for many users (``{entra_id: {attribute: value-or-None}}``); ``None`` clears one."""
        return self._loop.run(self._client.write_attributes(set_name, values))

    def read_attributes(
        self, set_name: str, entra_ids: Sequence[str], *, errors: dict[str, str] | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """The attribute set's values per user (``None`` when nothing is stored *or* it may not be read); with
        ``errors``, a user whose read fails is recorded there instead of raising."""
        return self._loop.run(self._client.read_attributes(set_name, entra_ids, errors=errors))

    def read_my_attributes(self, set_name: str) -> dict[str, Any] | None:
        """The signed-in user's values in ``set_name`` (``None``: not assigned, or not permitted to read)."""
        return self._loop.run(self._client.read_my_attributes(set_name))

    def can_read_users(self) -> bool:
        """Whether the caller may list users (``User.Read.All``)."""
        return self._loop.run(self._client.can_read_users())

    def token_claims(self) -> dict[str, Any] | None:
        """The access token's claims when it is a JWT (a hint of what Graph allows, never a proof)."""
        return self._loop.run(self._client.token_claims())
