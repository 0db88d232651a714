"""AsyncEntraClient: Microsoft Graph through msgraph-sdk (the one module that imports msgraph, msgraph_core, kiota).

The SDK provides the HTTP pipeline (its middleware, the kiota auth provider restricted to the Graph host, the
``/me`` rewrite); we send raw :class:`RequestInformation` and read raw JSON, because typed models cost ~10 ms per
object (``graph-api.md`` section 11). ``$batch`` bodies are built here: msgraph-core's batch helpers are broken.
Retries (request-level and per batch item) use stamina and honour ``Retry-After`` in all its forms; SDK-level
retries are off so that there is one retry mechanism, not two.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self, TypeVar
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

from . import _odata
from ._batches import chunked
from ._credentials import close_quietly
from ._retry import Retryable, RetryPolicy, parse_retry_after
from ._scopes import COMMAND_SCOPES
from .config import BATCH_LIMIT, GraphSettings, Settings
from .exceptions import EntraAPIError, EntraAuthError, EntraError
from .models import (
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    AttributeSetCheck,
    EntraGroup,
    EntraUser,
    Match,
    MatchedBy,
    Secret,
    WriteResult,
)

__all__ = ["AsyncEntraClient", "AttributeSetCheck", "Match", "WriteResult"]

log = logging.getLogger(__name__)

WRITE_TYPE = "#Microsoft.DirectoryServices.CustomSecurityAttributeValue"
USER_SELECT = "id,userPrincipalName,mail,otherMails,displayName,accountEnabled"
_RETRYABLE = frozenset({429, 503, 504})
#: Graph calls get at least this long (seconds): a ``$batch`` of 20 writes under throttling takes a while.
GRAPH_MIN_TIMEOUT = 30.0
T = TypeVar("T")


class _RateLimiter:
    """Paces Graph writes only when Graph says so: burst first, then the sustainable pace.

    Graph's write budget (3,000 writes per 150 s per app and tenant) is a bucket that a fresh run finds full, so a
    run starts at full speed, capped only by ``ceiling`` (``--graph-write-rate``; 0: none). It slows down when Graph
    signals: ``x-ms-throttle-limit-percentage`` of 0.8 or more (documented as sent above 80 % of a limit, and
    reported missing in practice) sets the documented sustainable pace; a 429 that refuses most of a batch sets it
    too or, when already paced, halves the pace (at most once a second, never below one write a second), besides
    the pause for the server's ``Retry-After``. Writes that succeed with no warning raise the pace again, one write
    a second per batch, back to full speed once well above the sustainable pace.
    """

    SUSTAINED = 3000 / 150  # Graph's documented identity write limit per app and tenant
    FLOOR = 1.0

    def __init__(self, ceiling: float) -> None:
        self.ceiling = ceiling
        self.rate: float | None = ceiling if ceiling > 0 else None  # None: not paced
        self._allowance = 0.0
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._last_cut = 0.0
        self._lock = asyncio.Lock()

    @property
    def target(self) -> float:
        """The pace now, in writes per second; 0 while not paced."""
        return self.rate or 0.0

    async def acquire(self, n: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                rate = self.rate
                if rate is None:
                    self._last = now
                    return
                capacity = max(float(n), min(rate, float(BATCH_LIMIT)))
                self._allowance = min(capacity, self._allowance + (now - self._last) * rate)
                self._last = now
                if self._allowance >= n:
                    self._allowance -= n
                    return
                await asyncio.sleep((n - self._allowance) / rate)

    def _pace(self, rate: float, why: str) -> None:
        if self.ceiling > 0:
            rate = min(rate, self.ceiling)
        rate = max(self.FLOOR, rate)
        if self.rate != rate:
            log.info("Graph %s: pacing writes at %.1f/s", why, rate)
        if self.rate is None:
            self._allowance = 0.0
            self._last = time.monotonic()
        self.rate = rate

    def warned(self, percentage: float) -> None:
        """Graph said the budget is ``percentage`` (0..1) used: from 80 %, no faster than the sustainable pace."""
        if percentage >= 0.8 and (self.rate is None or self.rate > self.SUSTAINED):
            self._pace(self.SUSTAINED, f"reports {percentage:.0%} of the write budget used")

    def throttled(self, wait: float | None, *, cut: bool = True) -> None:
        """Writes were refused with 429: pause for what the server asked and, with ``cut``, slow down."""
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + (wait if wait is not None else 1.0))
        self._allowance = 0.0
        if cut and now - self._last_cut >= 1.0:
            self._last_cut = now
            if self.rate is None or self.rate > self.SUSTAINED:
                self._pace(self.SUSTAINED, "throttled writes")
            else:
                self._pace(self.rate * 0.5, "throttled writes again")

    def succeeded(self, n: int) -> None:
        """``n`` writes went through with no warning: speed up again (additively), up to full speed."""
        if self.rate is None or (self.ceiling > 0 and self.rate >= self.ceiling):
            return
        self.rate += n / BATCH_LIMIT
        if self.ceiling <= 0 and self.rate >= 4 * self.SUSTAINED:
            self.rate = None
        elif self.ceiling > 0:
            self.rate = min(self.rate, self.ceiling)


def _throttle_percentage(answer: Mapping[str, Any]) -> float:
    """``x-ms-throttle-limit-percentage`` of a batch item's answer (0.0 when absent or unreadable)."""
    headers = answer.get("headers") or {}
    for key, value in headers.items() if isinstance(headers, Mapping) else ():
        if str(key).lower() == "x-ms-throttle-limit-percentage":
            try:
                return float(value)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


def _odata_error(response: httpx.Response | Mapping[str, Any], status: int) -> tuple[str, str]:
    if isinstance(response, httpx.Response):
        try:
            body: Any = response.json()
        except ValueError:
            body = None
    else:
        body = response.get("body")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or status), str(error.get("message") or "")
    return str(status), ""


class AsyncEntraClient:
    """Microsoft Graph for this tool: find users and groups, check, write and read the two attributes.

    Give it a credential (anything with ``get_token``; see :func:`defguard_entra._credentials.build_credential`)
    and the :class:`GraphSettings`; ``http_client`` may be injected (we then do not close it). Use ``async with``.
    """

    def __init__(
        self,
        settings: GraphSettings,
        credential: Any,
        *,
        scopes: Sequence[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        write_rate: float = 20.0,
        parallel_batches: int = 4,
        timeout: float = 60.0,
        owns_credential: bool = False,
    ) -> None:
        self.settings = settings
        self.base_url = settings.base_url
        self._credential = credential
        self._owns_credential = owns_credential
        self._owns_http = http_client is None
        # msgraph-core's AsyncGraphTransport wraps the client's transport but has no aclose(), so closing the
        # client leaks its connections: keep our own transport and close it ourselves.
        self._transport: httpx.AsyncHTTPTransport | None = None
        if http_client is None:
            self._transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max(8, parallel_batches)))
            http_client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=10.0),
                transport=self._transport,
                trust_env=False,
                mounts={"all://": httpx.AsyncHTTPTransport(proxy=settings.proxy)} if settings.proxy else None,
            )
        self._http = http_client
        options = {
            **graph_default_options,
            RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, delay=0, should_retry=False),
        }
        wrapped = GraphClientFactory.create_with_default_middleware(client=self._http, options=options)
        scope_list = list(scopes) if scopes else [f"{settings.resource}/.default"]
        auth = AzureIdentityAuthenticationProvider(credential, scopes=scope_list, allowed_hosts=[settings.host])
        self._scopes = scope_list
        self._adapter = GraphRequestAdapter(auth, client=wrapped)
        self._adapter.base_url = self.base_url
        self.retry = retry if retry is not None else RetryPolicy()
        self.limiter = _RateLimiter(write_rate)
        self._batches = asyncio.Semaphore(max(1, parallel_batches))
        self.stats: dict[str, int] = {"requests": 0, "throttled": 0, "retries": 0}

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
        if self._owns_credential:
            self._owns_credential = False
            close_quietly(self._credential)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sign-in ---------------------------------------------------------------------------------------------

    async def sign_in(self) -> None:
        """Acquire the first access token now (prompts happen here, before any work fans out)."""
        await asyncio.to_thread(self._credential.get_token, *self._scopes, enable_cae=True)

    async def me(self) -> dict[str, Any]:
        """The signed-in user (delegated sign-in only)."""
        return await self._get_json(f"{self.base_url}/me?$select={USER_SELECT}")

    # -- transport -------------------------------------------------------------------------------------------

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urlencode(params, quote_via=quote, safe="$,")
        return url

    async def _send_once(
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        info = RequestInformation()
        info.http_method = Method(method)
        info.url = url
        for name, value in (headers or {}).items():
            info.headers.try_add(name, value)
        if body is not None:
            info.headers.try_add("Content-Type", "application/json")
            info.content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        info.add_request_options([ResponseHandlerOption(NativeResponseHandler())])
        self.stats["requests"] += 1
        try:
            response = await self._adapter.send_primitive_async(info, "bytes", {})
        except httpx.TransportError as exc:
            raise Retryable(EntraError(f"cannot reach Microsoft Graph at {self.base_url}: {exc!s}"), None) from None
        except EntraError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "HTTPError" and "https" in str(exc):
                raise EntraError(f"Graph refused the URL {url.split('?', maxsplit=1)[0]}: {exc}") from None
            raise
        if not isinstance(response, httpx.Response):  # pragma: no cover - NativeResponseHandler guarantees it
            raise EntraError("the Graph SDK returned no HTTP response")
        if response.status_code in _RETRYABLE:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            code, message = _odata_error(response, response.status_code)
            self.stats["throttled"] += response.status_code == 429
            if response.status_code == 429 and method == "PATCH":
                self.limiter.throttled(wait)
            raise Retryable(
                EntraAPIError(response.status_code, code, message, method=method, url=url.split("?", maxsplit=1)[0]),
                wait,
            )
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
        status = response.status_code
        if status >= 400:
            code, message = _odata_error(response, status)
            error_type = EntraAuthError if status == 401 else EntraAPIError
            if error_type is EntraAuthError:
                raise EntraAuthError(f"Graph refused the access token (401 {code}): {message or 'sign in again'}")
            raise EntraAPIError(status, code, message, method=method, url=url.split("?", maxsplit=1)[0])
        try:
            payload = response.json()
        except ValueError:
            raise EntraAPIError(
                status, "InvalidResponse", "the answer is not JSON", method=method, url=url.split("?", maxsplit=1)[0]
            ) from None
        if not isinstance(payload, dict):
            raise EntraAPIError(
                status,
                "InvalidResponse",
                "the answer is not a JSON object",
                method=method,
                url=url.split("?", maxsplit=1)[0],
            )
        return payload

    async def _get_all(self, url: str) -> list[dict[str, Any]]:
        """Follow ``@odata.nextLink`` until it is absent (empty pages with a nextLink included)."""
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        pages = 0
        while next_url:
            page = await self._get_json(next_url)
            items.extend(page.get("value") or [])
            next_url = page.get("@odata.nextLink")
            pages += 1
            if pages > 100_000:  # pragma: no cover - a server bug, not a directory
                raise EntraError("Graph paging did not end")
        return items

    # -- $batch ----------------------------------------------------------------------------------------------

    async def batch(self, requests: Sequence[Mapping[str, Any]]) -> dict[str, tuple[dict[str, Any], int]]:
        """Send up to 20 items as one ``$batch``; items answered 429/503/504 are retried on their own.

        Returns ``{id: (item_response, retries)}`` for every item; correlate by id (Graph may reorder them).
        """
        if not 0 < len(requests) <= BATCH_LIMIT:
            msg = f"a batch holds 1 to {BATCH_LIMIT} requests, not {len(requests)}"
            raise ValueError(msg)
        pending = {str(item["id"]): dict(item) for item in requests}
        done: dict[str, tuple[dict[str, Any], int]] = {}
        attempts: dict[str, int] = dict.fromkeys(pending, 0)  # every retry, for the report
        failures: dict[str, int] = dict.fromkeys(pending, 0)  # 503/504/no answer: capped by --retries
        policy = self.retry
        deadline = time.monotonic() + policy.timeout
        delay = policy.wait_initial
        url = f"{self.base_url}/$batch"
        while pending:
            writes = sum(1 for item in pending.values() if item["method"] == "PATCH")
            if writes:
                await self.limiter.acquire(writes)
            async with self._batches:
                response, _ = await self._send("POST", url, {"requests": list(pending.values())})
            answered: dict[str, dict[str, Any]]
            if response.status_code == 424:  # Graph's throttling page: a batch whose items were throttled may
                # answer 424 as a whole; every item is then retried as throttled
                retry_after = {"Retry-After": response.headers.get("Retry-After", "")}
                answered = {i: {"id": i, "status": 429, "headers": retry_after} for i in pending}
            else:
                payload = self._json_or_raise("POST", url, response)
                answered = {str(r.get("id")): r for r in payload.get("responses") or []}
            waits: list[float] = []
            retry_ids = []
            throttled_writes = 0
            for item_id, item in list(pending.items()):
                answer = answered.get(item_id)
                status = int(answer.get("status", 0)) if answer else 0
                if answer is not None and status not in _RETRYABLE:
                    done[item_id] = (answer, attempts[item_id])
                    del pending[item_id]
                    continue
                attempts[item_id] += 1
                headers = {str(k).lower(): str(v) for k, v in ((answer or {}).get("headers") or {}).items()}
                wait = parse_retry_after(headers.get("retry-after"))
                if wait is not None:
                    waits.append(wait)
                if status == 429:
                    self.stats["throttled"] += 1
                    throttled_writes += item["method"] == "PATCH"
                else:
                    failures[item_id] += 1
                retry_ids.append(item_id)
                # Throttling is waited out until the time budget (--max-retry-time) is spent; failures also end
                # after --retries. A 429 says "not now", not "broken".
                if failures[item_id] >= policy.attempts or time.monotonic() >= deadline:
                    code, message = _odata_error(answer or {}, status)
                    done[item_id] = (
                        {
                            "id": item_id,
                            "status": status or 599,
                            "body": {"error": {"code": code, "message": message or "no answer"}},
                        },
                        attempts[item_id],
                    )
                    del pending[item_id]
            warning = max((_throttle_percentage(a) for a in answered.values()), default=0.0)
            if warning >= 0.8:
                self.limiter.warned(warning)
            elif writes and len(retry_ids) < writes:
                self.limiter.succeeded(writes - len(retry_ids))
            if not pending:
                break
            wait = max(waits) if waits else delay
            left = deadline - time.monotonic()
            if wait > left:  # a wait past the retry budget is not waited out: those members fail now, saying why
                why = (
                    f"Graph asked to wait {wait:g} s, more than the {max(0.0, left):.0f} s left of the retry time "
                    "(--max-retry-time)"
                )
                for item_id in list(pending):
                    error = {"error": {"code": "TooManyRequests", "message": why}}
                    done[item_id] = ({"id": item_id, "status": 429, "body": error}, attempts[item_id])
                    del pending[item_id]
                break
            if throttled_writes:
                # An exhausted budget refuses most of a batch; a few refusals among many successes are noise
                # that a pause (Retry-After) handles without slowing the whole run.
                # (Retries of a few leftover items say little either way: they need at least 3 refusals.)
                enough = min(3, max(1, int(self.limiter.target)))
                self.limiter.throttled(wait, cut=throttled_writes >= enough and 2 * throttled_writes >= writes)
            self.stats["retries"] += len(pending)
            log.info("Graph $batch: %d item(s) throttled or unavailable; retrying in %.2fs", len(pending), wait)
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            delay = min(policy.wait_max, delay * 2)
        return done

    async def _batched(
        self, requests: Sequence[Mapping[str, Any]], size: int = BATCH_LIMIT
    ) -> dict[str, tuple[dict[str, Any], int]]:
        """Any number of items, in batches of ``size`` (≤ 20) sent in parallel (bounded by ``parallel_batches``)."""
        results = await asyncio.gather(*(self.batch(chunk) for chunk in chunked(requests, size)))
        merged: dict[str, tuple[dict[str, Any], int]] = {}
        for result in results:
            merged.update(result)
        return merged

    # -- users -----------------------------------------------------------------------------------------------

    async def find_users(self, addresses: Iterable[str]) -> dict[str, Match]:
        """Resolve e-mail addresses: by ``mail``, then ``userPrincipalName``, then ``otherMails``.

        Keys of the result are the addresses lower-cased. Lookups are grouped (``in (…)`` filters of 15 inside
        ``$batch`` requests of 20, so 300 addresses per HTTP request); a stage that matches more than one user
        makes the address ambiguous, and an address settled at one stage is not looked up at the next.
        """
        wanted = sorted({a.strip().lower() for a in addresses if a and a.strip()})
        result: dict[str, Match] = {}
        refused: dict[str, str] = {}  # address -> why Graph would not look it up; the others go on
        for address in wanted:
            if len(address) > _odata.VALUE_LIMIT:
                refused[address] = (
                    f"the address has {len(address)} characters; Graph filters on at most {_odata.VALUE_LIMIT}, so "
                    "this user cannot be looked up: shorten the e-mail address in Defguard"
                )
        remaining = [a for a in wanted if a not in refused]
        for prop, matched_by in (("mail", MatchedBy.MAIL), ("userPrincipalName", MatchedBy.USER_PRINCIPAL_NAME)):
            if not remaining:
                break
            found = await self._lookup_in(prop, remaining, refused)
            remaining = self._settle(found, matched_by, result, [a for a in remaining if a not in refused])
        if remaining:
            found = await self._lookup_each([a for a in remaining if a not in refused], refused)
            remaining = self._settle(found, MatchedBy.OTHER_MAILS, result, [a for a in remaining if a not in refused])
        for address in remaining:
            result[address] = Match()
        for address, why in refused.items():
            result[address] = Match(error=why)
        return result

    @staticmethod
    def _settle(
        found: Mapping[str, list[EntraUser]], matched_by: MatchedBy, result: dict[str, Match], remaining: Sequence[str]
    ) -> list[str]:
        left = []
        for address in remaining:
            users = {u.id: u for u in found.get(address, [])}
            if len(users) == 1:
                result[address] = Match(next(iter(users.values())), matched_by)
            elif len(users) > 1:
                names = tuple(sorted(u.user_principal_name or u.id for u in users.values()))
                result[address] = Match(
                    None, matched_by, names, f"{len(users)} Entra users match by {matched_by.value}: {', '.join(names)}"
                )
            else:
                left.append(address)
        return left

    def _query_item(self, item_id: str, filter_: str) -> dict[str, Any]:
        query = urlencode({"$filter": filter_, "$select": USER_SELECT, "$top": "999"}, quote_via=quote, safe="$,")
        return {"id": item_id, "method": "GET", "url": f"/users?{query}"}

    async def _collect(self, items: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]] | None]:
        """Run GET items; follow nextLinks; ``None`` for an item Graph refused with 400 (unsupported filter)."""
        answers = await self._batched(items)
        out: dict[str, list[dict[str, Any]] | None] = {}
        for item in items:
            answer, _ = answers[item["id"]]
            status = int(answer.get("status", 0))
            body = answer.get("body")
            if status == 400:
                out[item["id"]] = None
                continue
            if status >= 400 or not isinstance(body, dict):
                code, message = _odata_error(answer, status)
                if status == 401:
                    raise EntraAuthError(f"Graph refused the access token (401 {code}): {message}")
                raise EntraAPIError(status, code, message, method="GET", url="/users")
            rows = list(body.get("value") or [])
            if body.get("@odata.nextLink"):
                rows.extend(await self._get_all(str(body["@odata.nextLink"])))
            out[item["id"]] = rows
        return out

    async def _lookup_in(
        self, prop: str, addresses: Sequence[str], refused: dict[str, str]
    ) -> dict[str, list[EntraUser]]:
        chunks = chunked(addresses, _odata.IN_LIMIT)
        items = [self._query_item(str(n), _odata.in_(prop, chunk)) for n, chunk in enumerate(chunks)]
        answers = await self._collect(items)
        found: dict[str, list[EntraUser]] = {}
        unsupported: list[str] = []
        for n, chunk in enumerate(chunks):
            rows = answers[str(n)]
            if rows is None:  # this tenant refuses `in`: fall back to one `eq` per address
                unsupported.extend(chunk)
                continue
            wanted = set(chunk)
            for row in rows:
                key = str(row.get(prop) or "").lower()
                if key in wanted:
                    found.setdefault(key, []).append(EntraUser.from_api(row))
        if unsupported:
            log.info("Graph refused %s in (…): looking up %d address(es) one by one", prop, len(unsupported))
            items = [self._query_item(str(n), _odata.eq(prop, a)) for n, a in enumerate(unsupported)]
            single = await self._collect(items)
            for n, address in enumerate(unsupported):
                rows = single[str(n)]
                if rows is None:  # Graph refused this one address: only this member is affected
                    refused[address] = f"Graph refused to look this address up by {prop} (400)"
                    continue
                found[address] = [EntraUser.from_api(r) for r in rows]
        return found

    async def _lookup_each(self, addresses: Sequence[str], refused: dict[str, str]) -> dict[str, list[EntraUser]]:
        items = [self._query_item(str(n), _odata.any_eq("otherMails", a)) for n, a in enumerate(addresses)]
        answers = await self._collect(items) if items else {}
        found: dict[str, list[EntraUser]] = {}
        for n, address in enumerate(addresses):
            rows = answers[str(n)]
            if rows is None:  # a 400 for one address affects only that address
                refused[address] = "Graph refused to look this address up in otherMails (400)"
                continue
            found[address] = [EntraUser.from_api(r) for r in rows]
        return found

    # -- groups ----------------------------------------------------------------------------------------------

    async def find_groups(self, display_name: str) -> list[EntraGroup]:
        """Groups whose displayName equals ``display_name`` (names are not unique in Entra)."""
        url = self._url("/groups", {"$filter": _odata.eq("displayName", display_name), "$select": "id,displayName"})
        return [EntraGroup.from_api(row) for row in await self._get_all(url) if "id" in row]

    async def group_members(self, group_id: str, *, transitive: bool = True) -> list[EntraUser]:
        """The users in a group (nested groups flattened when ``transitive``), each once."""
        relation = "transitiveMembers" if transitive else "members"
        url = self._url(f"/groups/{quote(group_id, safe='')}/{relation}", {"$select": USER_SELECT, "$top": "999"})
        seen: dict[str, EntraUser] = {}
        for row in await self._get_all(url):
            if row.get("@odata.type", "#microsoft.graph.user") != "#microsoft.graph.user" or "id" not in row:
                continue
            seen.setdefault(str(row["id"]), EntraUser.from_api(row))
        return list(seen.values())

    # -- custom security attributes --------------------------------------------------------------------------

    async def check_attribute_set(self, set_name: str) -> AttributeSetCheck:
        """Check the set and both String attributes are defined; ``readable=False`` if we may not look."""
        url = self._url(
            "/directory/customSecurityAttributeDefinitions", {"$filter": _odata.eq("attributeSet", set_name)}
        )
        response, _ = await self._send("GET", url)
        if response.status_code == 403:
            return AttributeSetCheck(readable=False)
        payload = self._json_or_raise("GET", url, response)
        definitions = {str(d.get("name")): d for d in payload.get("value") or [] if d.get("attributeSet") == set_name}
        problems = []
        for name in (ATTRIBUTE_TOKEN, ATTRIBUTE_URL):
            definition = definitions.get(name)
            if definition is None:
                problems.append(f"attribute {set_name}.{name} is not defined")
                continue
            if definition.get("type") != "String":
                problems.append(f"{set_name}.{name} has type {definition.get('type')}, it must be String")
            if definition.get("isCollection"):
                problems.append(f"{set_name}.{name} allows multiple values: it must be single-valued")
            if definition.get("usePreDefinedValuesOnly"):
                problems.append(f"{set_name}.{name} only allows predefined values: turn that off")
            if definition.get("status", "Available") != "Available":
                problems.append(f"{set_name}.{name} is {definition.get('status')}: it must be Available")
        exists = bool(definitions) or await self._attribute_set_exists(set_name)
        return AttributeSetCheck(readable=True, set_exists=exists, problems=tuple(problems))

    async def _attribute_set_exists(self, set_name: str) -> bool:
        url = f"{self.base_url}/directory/attributeSets/{quote(set_name, safe='')}"
        response, _ = await self._send("GET", url)
        return response.status_code == 200

    def _patch_item(
        self, item_id: str, entra_id: str, set_name: str, values: Mapping[str, str | None]
    ) -> dict[str, Any]:
        return {
            "id": item_id,
            "method": "PATCH",
            "url": f"/users/{quote(entra_id, safe='')}",
            "headers": {"Content-Type": "application/json"},
            "body": {"customSecurityAttributes": {set_name: {"@odata.type": WRITE_TYPE, **values}}},
        }

    async def write_attributes(
        self,
        set_name: str,
        values: Mapping[str, Mapping[str, str | None]],
    ) -> dict[str, WriteResult]:
        """Write attributes for many users (``{entra_id: {attribute: value-or-None}}``) in paced ``$batch``es."""
        ids = list(values)
        items = [self._patch_item(str(n), entra_id, set_name, values[entra_id]) for n, entra_id in enumerate(ids)]
        # Below 20 writes/s, smaller batches keep the pace smooth instead of one burst of 20 per second or more.
        rate = self.limiter.target
        answers = await self._batched(items, BATCH_LIMIT if rate <= 0 else max(1, min(BATCH_LIMIT, int(rate))))
        results = {}
        for n, entra_id in enumerate(ids):
            answer, retries = answers[str(n)]
            status = int(answer.get("status", 0))
            if 200 <= status < 300:
                results[entra_id] = WriteResult(ok=True, status=status, retries=retries)
            else:
                code, message = _odata_error(answer, status)
                error = f"Graph {status} {code}: {message}".rstrip(": ")
                results[entra_id] = WriteResult(ok=False, status=status, error=error, retries=retries)
        return results

    async def read_attributes(
        self, set_name: str, entra_ids: Sequence[str], *, errors: dict[str, str] | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """The attribute set's values per user (``None`` when nothing is stored *or* we may not read it).

        A user whose read fails (deleted since it was looked up: 404) raises :class:`EntraAPIError`, unless
        ``errors`` is given: the failure is then recorded there (``entra_id`` → message) and the others go on."""
        items = [
            {"id": str(n), "method": "GET", "url": f"/users/{quote(i, safe='')}?$select=id,customSecurityAttributes"}
            for n, i in enumerate(entra_ids)
        ]
        answers = await self._batched(items)
        out: dict[str, dict[str, Any] | None] = {}
        for n, entra_id in enumerate(entra_ids):
            answer, _ = answers[str(n)]
            status = int(answer.get("status", 0))
            if status >= 400:
                code, message = _odata_error(answer, status)
                if errors is None or status == 401:
                    raise EntraAPIError(status, code, message, method="GET", url=f"/users/{entra_id}")
                errors[entra_id] = f"Graph {status} {code}: {message}".rstrip(": ")
                out[entra_id] = None
                continue
            body = answer.get("body") or {}
            out[entra_id] = _attribute_values(body, set_name)
        return out

    async def read_my_attributes(self, set_name: str) -> dict[str, Any] | None:
        """The signed-in user's values in ``set_name`` (``None``: not assigned, or not permitted to read)."""
        payload = await self._get_json(f"{self.base_url}/me?$select=id,userPrincipalName,customSecurityAttributes")
        return _attribute_values(payload, set_name)

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
        token = await asyncio.to_thread(self._credential.get_token, *self._scopes, enable_cae=True)
        return _jwt_claims(str(token.token))


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        return None
    return claims if isinstance(claims, dict) else None


def _attribute_values(body: Mapping[str, Any], set_name: str) -> dict[str, Any] | None:
    """The set's values, the stored enrollment token as a :class:`Secret` (so that ``print()`` in a notebook, a
    ``repr`` or a log line never shows it)."""
    attributes = body.get("customSecurityAttributes")
    if not isinstance(attributes, dict):
        return None
    values = attributes.get(set_name)
    if not isinstance(values, dict):
        return None
    out = {k: v for k, v in values.items() if not k.startswith("@") and v is not None}
    if isinstance(out.get(ATTRIBUTE_TOKEN), str):
        out[ATTRIBUTE_TOKEN] = Secret(out[ATTRIBUTE_TOKEN])
    return out or None
