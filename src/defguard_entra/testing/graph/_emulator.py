"""The Graph emulator's HTTP side: construction and options, routing, the response envelope, faults, ``$batch``.

Sources: https://learn.microsoft.com/graph/errors (the envelope), https://learn.microsoft.com/graph/throttling (the
429s and their headers) and https://learn.microsoft.com/graph/json-batching.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from defguard_entra.testing._server import DROP, Faults, Handler, Request, Response

from ._batch import ItemRequest, item_response, parsed_body, validate_batch
from ._filter import FilterSyntaxError, parse_literal
from ._reads import ReadHandlers
from ._wire import (
    ERROR_JSON,
    FAULTS,
    MAX_TOP,
    RETRY_AFTER_MODES,
    GraphError,
    RetryAfter,
    bad_request,
    is_json_content_type,
    json_bytes,
    new_request_id,
    ok,
)
from ._writes import PatchHandler, WriteQuota

__all__ = ["GraphEmulator"]

#: ``/directory/<segment>`` (lower-cased) → the entity set, the endpoint of its list, the endpoint of one item
_DIRECTORY: Final = {
    "customsecurityattributedefinitions": (
        "directory/customSecurityAttributeDefinitions",
        "attribute-definitions",
        "attribute-definition",
    ),
    "attributesets": ("directory/attributeSets", "attribute-sets", "attribute-sets"),
}


class GraphEmulator(PatchHandler, ReadHandlers):
    """Microsoft Graph v1.0 on ``http://127.0.0.1:<port>/v1.0``: users, groups, custom security attributes."""

    server_header = "defguard-entra-graph-emulator"

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        item_faults: Faults | None = None,
        retry_after: RetryAfter = "decimal",
        write_quota: WriteQuota | None = None,
        page_size: int = 100,
        empty_pages: bool = False,
        shuffle_batch: bool = True,
        throttled_batch_status: int | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        identity: Any = None,
        strict: bool = True,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults, seed=seed)
        if identity is not None:
            self.trust(identity)
        #: Graph's batching page: item URLs are relative (``/users/…``), dependencies are ``dependsOn``. ``True``
        #: (the default) answers an absolute URL with 400 and ignores ``depends_on`` as Graph does (the exact error
        #: for an absolute URL is not verified); ``False`` accepts both, for a client that cannot help it.
        self.strict = strict
        #: Graph's throttling page says a batch whose items were throttled may answer as a whole with 424 (its
        #: batching page says 200 with per-item 429s, the default here): set 424 to get that answer. Modelled as:
        #: when the write quota cannot take all of a batch's writes, no item runs (not verified against Graph).
        self.throttled_batch_status = throttled_batch_status
        #: ``x-ms-throttle-limit-percentage`` from 80 % of the write quota (Graph's throttling page: "returned only
        #: when the application consumed more than 0.8 of its limit"); reported missing in practice: ``False``.
        self.throttle_header = True
        if not 1 <= page_size <= MAX_TOP:
            raise ValueError("page_size must be within 1..999")
        self.item_faults = item_faults or Faults()
        self.retry_after = retry_after
        self.write_quota = write_quota
        self.page_size = page_size
        self.empty_pages = empty_pages
        self.shuffle_batch = shuffle_batch
        self._shuffle_rng = random.Random(f"batch-{seed}")
        self._write_count = 0
        self._throttled_count = 0

    # -- configuration -----------------------------------------------------------------------------------------

    @property
    def retry_after(self) -> RetryAfter:
        return self._retry_after

    @retry_after.setter
    def retry_after(self, value: RetryAfter) -> None:
        if isinstance(value, bool) or (isinstance(value, str) and value not in RETRY_AFTER_MODES):
            raise ValueError(f"retry_after must be one of {sorted(RETRY_AFTER_MODES)}, a number or None")
        self._retry_after = value

    @property
    def url(self) -> str:
        """The Graph base URL clients use: ``http://127.0.0.1:<port>/v1.0`` (no trailing slash)."""
        return f"{self.base_url}/v1.0"

    @property
    def host(self) -> str:
        return self._host

    @property
    def write_count(self) -> int:
        """PATCHes applied (answered 204)."""
        with self.lock:
            return self._write_count

    @property
    def throttled_count(self) -> int:
        """429 answers sent, request-level and item-level, injected or from the write quota."""
        with self.lock:
            return self._throttled_count

    # -- routing -----------------------------------------------------------------------------------------------

    def resolve(self, request: Request) -> tuple[str, Handler]:
        endpoint, handler = self._route(request)

        def guarded(req: Request) -> Response:
            return self._guard(handler, req)

        return endpoint, guarded

    def _route(self, request: Request) -> tuple[str, Handler]:
        segments = [unquote(s) for s in request.raw_path.split("/") if s]
        method = request.method.upper()

        def missing(_req: Request) -> Response:
            if not segments:
                shown = "/"
            elif segments[0] != "v1.0":
                shown = segments[0]  # another version, or no version at all
            else:
                shown = segments[-1]
            raise GraphError(404, "NotFound", f"Resource not found for the segment '{shown}'.")

        def not_allowed(_req: Request) -> Response:
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.")

        if len(segments) < 2 or segments[0] != "v1.0":
            return "not-found", missing
        rest = segments[1:]
        head = rest[0]
        sets = self._entity_sets
        endpoint: str | None = None
        handler: Handler | None = None
        allowed = "GET"
        if head.lower() == "users" and len(rest) == 1:
            endpoint, handler = "users-list", lambda req: self._list(req, sets["users"])
        elif head.lower().startswith("users(") and head.endswith(")") and len(rest) == 1:
            key = self._key_literal(head[len("users(") : -1])
            endpoint, handler, allowed = self._user_route(method, key)
        elif head.lower() == "users" and len(rest) == 2:
            endpoint, handler, allowed = self._user_route(method, rest[1])
        elif head.lower() == "me" and len(rest) == 1:
            endpoint, handler = "me", self._get_me
        elif head.lower() == "groups" and len(rest) == 1:
            endpoint, handler = "groups-list", lambda req: self._list(req, sets["groups"])
        elif head.lower() == "groups" and len(rest) == 2:
            group_id = rest[1]
            endpoint, handler = "group-get", lambda req: self._get(req, sets["groups"], group_id)
        elif head.lower() == "groups" and len(rest) in {3, 4} and rest[2].lower() in {"members", "transitivemembers"}:
            group_id, transitive = rest[1], rest[2].lower() == "transitivemembers"
            cast = rest[3].lower() if len(rest) == 4 else None
            if cast not in {None, "microsoft.graph.user", "graph.user", "microsoft.graph.group", "graph.group"}:
                return "not-found", missing
            kind = None if cast is None else cast.rpartition(".")[2]
            endpoint = "group-transitive-members" if transitive else "group-members"

            def members(req: Request) -> Response:
                return self._list_members(req, group_id, transitive=transitive, cast=kind)

            handler = members
        elif head.lower() == "directory" and len(rest) in {2, 3} and rest[1].lower() in _DIRECTORY:
            path, list_endpoint, item_endpoint = _DIRECTORY[rest[1].lower()]
            entity_set = sets[path]
            if len(rest) == 2:
                endpoint, handler = list_endpoint, lambda req: self._list(req, entity_set)
            else:
                item = rest[2]
                endpoint, handler = item_endpoint, lambda req: self._get(req, entity_set, item)
        elif head == "$batch" and len(rest) == 1:
            endpoint, handler, allowed = "batch", self._batch, "POST"
        if endpoint is None or handler is None:
            return "not-found", missing
        if method not in allowed.split(","):
            return "not-found", not_allowed
        return endpoint, handler

    def _user_route(self, method: str, key: str) -> tuple[str, Handler, str]:
        if method == "PATCH":
            return "user-patch", lambda req: self._patch_user(req, key), "GET,PATCH"
        return "user-get", lambda req: self._get(req, self._entity_sets["users"], key), "GET,PATCH"

    @staticmethod
    def _key_literal(text: str) -> str:
        try:
            return parse_literal(text)
        except FilterSyntaxError:
            return text

    # -- the envelope --------------------------------------------------------------------------------------------

    @staticmethod
    def _ids(request: Request) -> tuple[str, str]:
        request_id = new_request_id()
        return request_id, request.header("client-request-id") or request_id

    def _error(self, request: Request, error: GraphError) -> Response:
        request_id, client_id = self._ids(request)
        body = {
            "error": {
                "code": error.code,
                "message": error.message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_id,
                },
            }
        }
        headers = {**error.headers, "request-id": request_id, "client-request-id": client_id}
        return Response(error.status, json_bytes(body), ERROR_JSON, headers)

    def _guard(self, handler: Handler, request: Request) -> Response:
        try:
            response = handler(request)
        except GraphError as error:
            return self._error(request, error)
        request_id, client_id = self._ids(request)
        headers = {**response.headers, "request-id": request_id, "client-request-id": client_id}
        return Response(response.status, response.body, response.content_type, headers)

    def _retry_after_value(self, faults: Faults) -> str | None:
        mode = self._retry_after
        if mode is None or mode == "absent":
            return None
        if isinstance(mode, int | float):
            return str(mode)
        return {"integer": "1", "zero": "0", "large": "200"}.get(mode) or f"{faults.uniform(0.05, 0.3):.3f}"

    def fault_response(self, status: int, request: Request, endpoint: str) -> Response:
        return self._fault(status, request, self.faults, endpoint)

    def _fault(self, status: int, request: Request, faults: Faults, endpoint: str) -> Response:
        code, message = FAULTS.get(status, ("UnknownError", "An injected failure."))
        headers: dict[str, str] = {}
        if status in {429, 503, 504}:
            value = self._retry_after_value(faults)
            if value is not None:
                headers["Retry-After"] = value
        if status == 429:
            headers["x-ms-throttle-scope"] = f"Tenant_Application/ReadWrite/{self.tenant_id}/emulator"
            headers["x-ms-throttle-information"] = (
                "WriteLimitExceeded" if endpoint.endswith("user-patch") else "ResourceUnitLimitExceeded"
            )
            with self.lock:
                self._throttled_count += 1
        return self._error(request, GraphError(status, code, message, headers))

    # -- JSON batching -----------------------------------------------------------------------------------------------

    def _batch(self, request: Request) -> Response:
        self._principal(request)
        if not is_json_content_type(request.header("content-type")):
            raise bad_request("Write requests must carry Content-Type: application/json.")
        items = validate_batch(parsed_body(request), strict=self.strict)
        quota = self.write_quota
        writes = sum(1 for item in items if item["method"] == "PATCH")
        if self.throttled_batch_status is not None and quota is not None and writes > quota.available:
            # The 424 form: a batch whose writes would be throttled answers as a whole, none of its items run.
            wait = (writes - quota.available) / quota.rate
            with self.lock:
                self._throttled_count += writes
            retry = str(math.ceil(wait)) if self.retry_after == "integer" else f"{wait:.3f}"
            raise GraphError(
                self.throttled_batch_status,
                "FailedDependency",
                "Requests in the batch were throttled.",
                {"Retry-After": retry},
            )
        outcomes: dict[str, dict[str, Any]] = {}
        pending = list(items)
        while pending:  # items in order, each once all of its dependencies have answered
            progressed = False
            for item in list(pending):
                deps = item["depends"]
                if any(d not in outcomes for d in deps):
                    continue
                failed = next((d for d in deps if outcomes[d]["status"] >= 400), None)
                if failed is not None:
                    outcomes[item["id"]] = self._failed_dependency(request, item["id"], failed)
                else:
                    outcomes[item["id"]] = self._run_item(request, item)
                pending.remove(item)
                progressed = True
            if not progressed:  # pragma: no cover - validate_batch rejects cycles
                break
        responses = [outcomes[item["id"]] for item in items]
        if self.shuffle_batch:
            with self.lock:
                self._shuffle_rng.shuffle(responses)
        return ok({"responses": responses})

    def _failed_dependency(self, request: Request, item_id: str, failed: str) -> dict[str, Any]:
        response = self._error(
            request,
            GraphError(424, "FailedDependency", f"Request {item_id} depends on request {failed}, which failed."),
        )
        return item_response(item_id, response)

    def _run_item(self, outer: Request, item: Mapping[str, Any]) -> dict[str, Any]:
        url: str = item["url"]
        if url.lower().startswith(("http://", "https://")):
            parts = urlsplit(url)
            path, query = parts.path, parts.query
        else:
            raw_path, _, query = url.partition("?")
            path = "/v1.0/" + raw_path.lstrip("/")
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        headers.pop("authorization", None)
        outer_auth = outer.header("authorization")
        if outer_auth is not None:
            headers["authorization"] = outer_auth
        if "body" in item:
            inner: Request = ItemRequest(item["method"], path, query, headers, json_bytes(item["body"]), item["body"])
        else:
            inner = Request(item["method"], path, query, headers, b"")
        endpoint, handler = self.resolve(inner)
        if "body" in item and "content-type" not in headers:
            message = f"Write request id : {item['id']} does not contain Content-Type header or body."
            response = self._error(inner, bad_request(message))
            self.record(inner, f"batch-item:{endpoint}", response.status)
            return item_response(item["id"], response)
        if endpoint == "batch":
            response = self._error(inner, bad_request("Nested $batch requests are not supported."))
        else:
            outcome = self.item_faults.draw(endpoint)
            if outcome is None:
                try:
                    response = handler(inner)
                except Exception:  # an emulator bug still answers, and loudly
                    import traceback  # noqa: PLC0415

                    traceback.print_exc()
                    response = self._error(inner, GraphError(500, "InternalServerError", "emulator error"))
            else:
                status = 504 if outcome is DROP else int(outcome)
                response = self._fault(status, inner, self.item_faults, endpoint)
        self.record(inner, f"batch-item:{endpoint}", response.status)
        return item_response(item["id"], response)
