"""AsyncEntraClient: Microsoft Graph through msgraph-sdk (the one module that imports msgraph, msgraph_core, kiota).

The SDK provides the HTTP pipeline (its middleware, the kiota auth provider restricted to the Graph host, the
``/me`` rewrite); we send raw :class:`RequestInformation` and read raw JSON, because typed models cost ~10 ms per
object. ``$batch`` bodies are built here and sent by :class:`~defguard_entra._batch.BatchEngine` (msgraph-core's
batch helpers are broken); finding users by address is :mod:`defguard_entra._lookup`'s. Request-level retries use
stamina and honour ``Retry-After`` in all its forms; SDK-level retries are off so that there is one retry
mechanism, not two.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote, urlencode

import httpx
import stamina
from kiota_abstractions.method import Method
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_abstractions.request_information import RequestInformation
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_request_adapter import options as graph_default_options
from msgraph_core import GraphClientFactory

from . import _attributes, _lookup, _odata
from ._batch import FAILED_DEPENDENCY, RETRYABLE, BatchAnswer, BatchEngine, ItemAnswers, RateLimiter
from ._credentials import AsyncCredential, close_quietly, jwt_claims
from ._groups import GroupQueries
from ._retry import Activity, Retryable, RetryPolicy, parse_retry_after
from ._scopes import COMMAND_SCOPES
from .config import DEFAULT_GRAPH_WRITE_RATE, GraphSettings, Settings
from .exceptions import EntraAPIError, EntraAuthError, EntraError
from .models import AttributeSetCheck, EntraUser, Match, WriteResult

__all__ = ["AsyncEntraClient", "AttributeSetCheck"]

log = logging.getLogger(__name__)

#: Graph calls get at least this long (seconds): a ``$batch`` of 20 writes under throttling takes a while.
GRAPH_MIN_TIMEOUT = 30.0


def _response_error(response: httpx.Response) -> tuple[str, str]:
    """The OData ``(code, message)`` of an HTTP answer (see :func:`defguard_entra._odata.error_of`)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return _odata.error_of(body, response.status_code)


def _transport_error(base_url: str, exc: httpx.TransportError) -> EntraError:
    """No HTTP answer from Graph, with its cause: the proxy refused, TLS failed, or the host is unreachable."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ProxyError):
        return EntraError(f"the proxy refused the connection to Microsoft Graph at {base_url}: {text}", cause="proxy")
    if "SSL" in text or "CERTIFICATE" in text.upper():
        return EntraError(f"TLS verification of Microsoft Graph at {base_url} failed: {text}", cause="tls")
    return EntraError(f"cannot reach Microsoft Graph at {base_url}: {text}", cause="unreachable")


def _http_client(settings: GraphSettings, transport: httpx.AsyncHTTPTransport, timeout: float) -> httpx.AsyncClient:
    """Our own HTTP client for Graph: no proxy from the environment, only the one the settings give."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        transport=transport,
        trust_env=False,
        mounts={"all://": httpx.AsyncHTTPTransport(proxy=settings.proxy)} if settings.proxy else None,
    )


def _request_adapter(
    settings: GraphSettings, credential: Any, scopes: list[str], http_client: httpx.AsyncClient
) -> GraphRequestAdapter:
    """The SDK's pipeline around ``http_client``: its default middleware with retries off, tokens from
    ``credential`` sent to the Graph host only."""
    options = {
        **graph_default_options,
        RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, delay=0, should_retry=False),
    }
    wrapped = GraphClientFactory.create_with_default_middleware(client=http_client, options=options)
    auth = AzureIdentityAuthenticationProvider(credential, scopes=scopes, allowed_hosts=[settings.host])
    adapter = GraphRequestAdapter(auth, client=wrapped)
    adapter.base_url = settings.base_url
    return adapter


def _request_info(method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> RequestInformation:
    """A raw request (JSON ``body`` when given) whose answer is the plain HTTP response."""
    info = RequestInformation()
    info.http_method = Method(method)
    info.url = url
    for name, value in (headers or {}).items():
        info.headers.try_add(name, value)
    if body is not None:
        info.headers.try_add("Content-Type", "application/json")
        info.content = json.dumps(body, separators=(",", ":")).encode("utf-8")
    info.add_request_options([ResponseHandlerOption(NativeResponseHandler())])
    return info


class AsyncEntraClient(GroupQueries):
    """Microsoft Graph for this tool: find users and groups, check, write and read the two attributes.

    Give it a credential and the :class:`GraphSettings`: an ``azure.identity`` credential (sync, or async from
    ``azure.identity.aio``), any ``TokenCredential`` or ``AsyncTokenCredential`` (see
    :func:`defguard_entra._credentials.build_credential`). A sync credential's token refreshes run in a worker
    thread, never on the event loop. The credential is borrowed unless ``owns_credential``; ``http_client`` may be
    injected (we then do not close it). Use ``async with``.
    """

    def __init__(
        self,
        settings: GraphSettings,
        credential: Any,
        *,
        scopes: Sequence[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        write_rate: float = DEFAULT_GRAPH_WRITE_RATE,
        parallel_batches: int = 4,
        timeout: float = 60.0,
        owns_credential: bool = False,
    ) -> None:
        self.settings = settings
        self.base_url = settings.base_url
        #: What kiota and :meth:`sign_in` await: cached tokens at once, refreshes off the loop.
        self._credential = AsyncCredential(credential, owns=owns_credential)
        self._owns_http = http_client is None
        # msgraph-core's AsyncGraphTransport wraps the client's transport but has no aclose(), so closing the
        # client leaks its connections: keep our own transport and close it ourselves.
        self._transport: httpx.AsyncHTTPTransport | None = None
        if http_client is None:
            self._transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max(8, parallel_batches)))
            http_client = _http_client(settings, self._transport, timeout)
        self._http = http_client
        self._scopes = list(scopes) if scopes else [f"{settings.resource}/.default"]
        self._adapter = _request_adapter(settings, self._credential, self._scopes, http_client)
        self.retry = retry if retry is not None else RetryPolicy()
        self.limiter = RateLimiter(write_rate)
        self.activity = Activity()
        """When Graph last answered (for the run's watchdog)."""
        self._patience = min(10.0, timeout) + timeout if self._owns_http else 2 * GRAPH_MIN_TIMEOUT
        self.stats: dict[str, int] = {"requests": 0, "throttled": 0, "retries": 0}
        self._engine = BatchEngine(
            self._post_batch,
            limiter=self.limiter,
            retry=self.retry,
            stats=self.stats,
            parallel=parallel_batches,
            activity=self.activity,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: Any = None,
        prompt: Callable[[str], None] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> Self:
        """A client for ``settings.graph`` with the settings' retry policy, write rate and timeout: the one place
        :class:`Settings` become a Graph client.

        ``credential`` overrides the sign-in the settings say (it is then borrowed, not closed); otherwise one is
        built and owned. ``scopes`` are the delegated permissions to ask for in interactive or device-code sign-in
        (default: what ``provision`` needs); ``prompt`` receives device-code instructions. Call it on the event
        loop that will drive the client. Raises :class:`~defguard_entra.ConfigurationError` before any request.
        """
        from ._credentials import build_credential, graph_scopes  # noqa: PLC0415 - azure.identity: only when used

        settings.validate()
        graph = settings.graph
        owned = build_credential(graph, prompt=prompt) if credential is None else None
        try:
            return cls(
                graph,
                owned if owned is not None else credential,
                scopes=graph_scopes(graph, COMMAND_SCOPES["provision"] if scopes is None else scopes),
                retry=settings.retry,
                write_rate=settings.graph_write_rate,
                timeout=max(settings.timeout, GRAPH_MIN_TIMEOUT),
                owns_credential=owned is not None,
            )
        except BaseException:
            if owned is not None:
                close_quietly(owned)
            raise

    async def aclose(self) -> None:
        """Close the HTTP connections we opened, and the credential when it is ours (``owns_credential``)."""
        if self._owns_http:
            await self._http.aclose()
            if self._transport is not None:
                await self._transport.aclose()
        await self._credential.close()  # only when it is ours

    @property
    def patience(self) -> float:
        """The longest one try of a request may legitimately go without an answer: connect and read timeouts
        (an injected HTTP client's own are not read: twice the minimum Graph timeout is assumed)."""
        return self._patience

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sign-in ---------------------------------------------------------------------------------------------

    async def sign_in(self) -> None:
        """Acquire the first access token now (prompts happen here, before any work fans out).

        A sync credential signs in in a worker thread of its own, so the event loop goes on and a cancelled call
        (Ctrl-C) returns at once; an async one is awaited."""
        await self._credential.get_token(*self._scopes, enable_cae=True)

    async def me(self) -> dict[str, Any]:
        """The signed-in user (delegated sign-in only)."""
        return await self._get_json(f"{self.base_url}/me?$select={_lookup.USER_SELECT}")

    # -- transport -------------------------------------------------------------------------------------------

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urlencode(params, quote_via=quote, safe="$,")
        return url

    async def _send_once(
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        info = _request_info(method, url, body, headers)
        self.stats["requests"] += 1
        try:
            response = await self._adapter.send_primitive_async(info, "bytes", {})
        except httpx.TransportError as exc:
            raise Retryable(_transport_error(self.base_url, exc), None) from None
        except EntraError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "HTTPError" and "https" in str(exc):
                raise EntraError(f"Graph refused the URL {url.split('?', maxsplit=1)[0]}: {exc}") from None
            raise
        if not isinstance(response, httpx.Response):  # pragma: no cover - NativeResponseHandler guarantees it
            raise EntraError("the Graph SDK returned no HTTP response")
        if response.status_code in RETRYABLE:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            self.activity.beat(wait)
            code, message = _response_error(response)
            self.stats["throttled"] += response.status_code == 429
            if response.status_code == 429 and method == "PATCH":
                self.limiter.throttled(wait)
            raise Retryable(
                EntraAPIError(response.status_code, code, message, method=method, url=url.split("?", maxsplit=1)[0]),
                wait,
            )
        self.activity.beat()
        return response

    async def _send(
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[httpx.Response, int]:
        try:
            async for attempt in stamina.retry_context(**self.retry.stamina_options()):
                with attempt:
                    if attempt.num > 1:
                        self.stats["retries"] += 1
                    return await self._send_once(method, url, body, headers), attempt.num - 1
        except Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_json(self, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        response, _ = await self._send("GET", url, headers=headers)
        return self._json_or_raise("GET", url, response)

    def _json_or_raise(self, method: str, url: str, response: httpx.Response) -> dict[str, Any]:
        status, path = response.status_code, url.split("?", maxsplit=1)[0]
        if status == 401:
            code, message = _response_error(response)
            raise EntraAuthError(
                f"Graph refused the access token (401 {code}): {message or 'sign in again'}", cause="token"
            )
        if status >= 400:
            raise EntraAPIError(status, *_response_error(response), method=method, url=path)
        try:
            payload = response.json()
        except ValueError:
            raise EntraAPIError(status, "InvalidResponse", "the answer is not JSON", method=method, url=path) from None
        if not isinstance(payload, dict):
            raise EntraAPIError(status, "InvalidResponse", "the answer is not a JSON object", method=method, url=path)
        return payload

    async def _get_all(self, url: str, headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Follow ``@odata.nextLink`` until it is absent (empty pages with a nextLink included); ``headers`` go
        with every page."""
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        pages = 0
        while next_url:
            page = await self._get_json(next_url, headers)
            items.extend(page.get("value") or [])
            next_url = page.get("@odata.nextLink")
            pages += 1
            if pages > 100_000:  # pragma: no cover - a server bug, not a directory
                raise EntraError("Graph paging did not end")
        return items

    # -- $batch ----------------------------------------------------------------------------------------------

    async def batch(self, requests: Sequence[Mapping[str, Any]]) -> ItemAnswers:
        """Send up to 20 items as one ``$batch``; items answered 429/503/504 are retried on their own.

        Returns ``{id: (item_response, retries)}`` for every item; correlate by id (Graph may reorder them).
        """
        return await self._engine.batch(requests)

    async def _post_batch(self, items: list[dict[str, Any]]) -> BatchAnswer:
        """One ``$batch`` POST, for the engine: a 424 is its to retry; any other failure raises."""
        url = f"{self.base_url}/$batch"
        response, _ = await self._send("POST", url, {"requests": items})
        if response.status_code == FAILED_DEPENDENCY:
            return BatchAnswer(FAILED_DEPENDENCY, retry_after=response.headers.get("Retry-After", ""))
        payload = self._json_or_raise("POST", url, response)
        return BatchAnswer(response.status_code, list(payload.get("responses") or []))

    # -- users -----------------------------------------------------------------------------------------------

    async def find_users(self, addresses: Iterable[str]) -> dict[str, Match]:
        """Resolve e-mail addresses: by ``mail``, then ``userPrincipalName``, then ``otherMails``.

        Keys of the result are the addresses lower-cased. Lookups are grouped (``in (…)`` filters of 15 inside
        ``$batch`` requests of 20, so 300 addresses per HTTP request); a stage that matches more than one user
        makes the address ambiguous, and an address settled at one stage is not looked up at the next.
        """
        return await _lookup.find_users(addresses, self._engine.batched, self._get_all)

    async def find_holders(self, set_name: str, attribute: str, value: str) -> list[EntraUser]:
        """Every user whose custom security attribute ``set_name/attribute`` holds exactly ``value``, all pages.

        One ``GET /users?$filter=customSecurityAttributes/{set}/{attribute} eq '…'&$count=true`` with
        ``ConsistencyLevel: eventual`` (Graph refuses the filter without them), following ``@odata.nextLink``;
        a value over Graph's 120-character ``eq`` limit is looked up by its prefix and matched exactly here (see
        :func:`defguard_entra._lookup.holders_query`). Needs ``User.Read.All`` and
        ``CustomSecAttributeAssignment.Read.All`` (with the Attribute Assignment Reader role when delegated).
        Raises :class:`EntraAPIError` when Graph refuses (a 403: the read permission is missing)."""
        url = self._url("/users", _lookup.holders_query(set_name, attribute, value))
        rows = await self._get_all(url, _lookup.ADVANCED_HEADERS)
        return _lookup.holders_of(rows, set_name, attribute, value)

    # -- custom security attributes --------------------------------------------------------------------------

    async def check_attribute_set(self, set_name: str) -> AttributeSetCheck:
        """Check the set and both String attributes are defined, and whether it defines the optional
        ``EnrollmentTokenExpiresAt``; ``readable=False`` (and ``defines_expiry=None``) if we may not look."""
        url = self._url(
            "/directory/customSecurityAttributeDefinitions", {"$filter": _odata.eq("attributeSet", set_name)}
        )
        response, _ = await self._send("GET", url)
        if response.status_code == 403:
            return AttributeSetCheck(readable=False)
        payload = self._json_or_raise("GET", url, response)
        definitions = list(payload.get("value") or [])
        if payload.get("@odata.nextLink"):  # a set may have more definitions than one page
            definitions.extend(await self._get_all(str(payload["@odata.nextLink"])))
        defined, problems = _attributes.definition_problems(set_name, definitions)
        expiry, expiry_problems = _attributes.expiry_definition(set_name, definitions)
        exists = defined or await self._attribute_set_exists(set_name)
        return AttributeSetCheck(
            readable=True,
            set_exists=exists,
            problems=problems,
            defines_expiry=expiry,
            expiry_problems=expiry_problems,
        )

    async def _attribute_set_exists(self, set_name: str) -> bool:
        url = f"{self.base_url}/directory/attributeSets/{quote(set_name, safe='')}"
        response, _ = await self._send("GET", url)
        return response.status_code == 200

    async def write_attributes(
        self,
        set_name: str,
        values: Mapping[str, Mapping[str, str | None]],
        *,
        on_written: Callable[[str, bool], None] | None = None,
    ) -> dict[str, WriteResult]:
        """Write attributes for many users (``{entra_id: {attribute: value-or-None}}``) in paced ``$batch``es;
        ``on_written(entra_id, ok)`` hears of each write as soon as it is final (others may still be retried)."""
        entra_ids = list(values)

        def on_item(item_id: str, answer: Mapping[str, Any]) -> None:
            if on_written is not None:
                on_written(entra_ids[int(item_id)], 200 <= int(answer.get("status", 0)) < 300)

        answers = await self._engine.write(_attributes.patch_items(set_name, values), on_item)
        return _attributes.write_results(entra_ids, answers)

    async def read_attributes(
        self, set_name: str, entra_ids: Sequence[str], *, errors: dict[str, str] | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """The attribute set's values per user (``None`` when nothing is stored *or* we may not read it).

        A user whose read fails (deleted since it was looked up: 404) raises :class:`EntraAPIError`, unless
        ``errors`` is given: the failure is then recorded there (``entra_id`` → message) and the others go on."""
        answers = await self._engine.batched(_attributes.read_items(entra_ids))
        out: dict[str, dict[str, Any] | None] = {}
        for n, entra_id in enumerate(entra_ids):
            answer, _ = answers[str(n)]
            status = int(answer.get("status", 0))
            if status >= 400:
                if errors is None or status == 401:
                    code, message = _odata.error_of(answer.get("body"), status)
                    raise EntraAPIError(status, code, message, method="GET", url=f"/users/{entra_id}")
                errors[entra_id] = _attributes.item_failure(answer, status)
                out[entra_id] = None
                continue
            out[entra_id] = _attributes.values_of(answer.get("body") or {}, set_name)
        return out

    async def read_my_attributes(self, set_name: str) -> dict[str, Any] | None:
        """The signed-in user's values in ``set_name`` (``None``: not assigned, or not permitted to read)."""
        payload = await self._get_json(f"{self.base_url}/me?$select=id,userPrincipalName,customSecurityAttributes")
        return _attributes.values_of(payload, set_name)

    # -- readiness probes (``check``): reads only ---------------------------------------------------------------

    async def can_read_users(self) -> bool:
        """Whether the caller may list users (``User.Read.All``): one ``GET /users?$top=1``; ``False`` on 403."""
        url = self._url("/users", {"$top": "1", "$select": "id"})
        response, _ = await self._send("GET", url)
        if response.status_code == 403:
            return False
        self._json_or_raise("GET", url, response)
        return True

    async def token_claims(self) -> dict[str, Any] | None:
        """The access token's claims (``scp``, ``roles``, ``wids``, ``appid``, ``upn`` …) when it is a JWT, else
        ``None``. Graph tokens are opaque to clients by contract, so the claims are a hint of what Graph will
        allow, never a proof; nothing is verified and the token itself never leaves this method."""
        token = await self._credential.get_token(*self._scopes, enable_cae=True)
        return jwt_claims(str(token.token))
