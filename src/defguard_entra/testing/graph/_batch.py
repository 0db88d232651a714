"""JSON batching (``POST /$batch``): the validation of a batch, its items as requests and their answers as
responses, and the rejection of ``dependsOn`` cycles.

Source: https://learn.microsoft.com/graph/json-batching.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from defguard_entra.testing._server import Request, Response

from ._wire import MAX_BATCH, bad_request

__all__ = ["ItemRequest", "item_response", "parsed_body", "validate_batch"]


@dataclass(frozen=True)
class ItemRequest(Request):
    """A ``$batch`` item: its JSON body is already parsed (the bytes are kept for the request log)."""

    parsed: Any = None


def parsed_body(request: Request) -> Any:
    """The JSON body, or ``None`` when it does not parse."""
    if isinstance(request, ItemRequest):
        return request.parsed
    try:
        return request.json()
    except (ValueError, UnicodeDecodeError):
        return None


def item_response(item_id: str, response: Response) -> dict[str, Any]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in {"request-id", "client-request-id"}}
    if response.content_type is not None:
        headers["Content-Type"] = response.content_type
    out: dict[str, Any] = {"id": item_id, "status": response.status, "headers": headers}
    if response.body:
        try:
            out["body"] = json.loads(response.body)
        except ValueError:
            out["body"] = base64.b64encode(response.body).decode()
    return out


def validate_batch(payload: Any, *, strict: bool = False) -> list[dict[str, Any]]:
    """The batch items, normalised (``method`` upper-cased, ``depends`` a list); raises 400 for a malformed batch.

    ``strict``: an absolute item URL is a 400 (the batching page: "the url property … relative to the Graph
    version"), and only ``dependsOn`` counts (``depends_on`` is an unknown property, ignored)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
        raise bad_request('Invalid batch payload format: expected {"requests": [...]}.')
    raw_items: list[Any] = payload["requests"]
    if not raw_items:
        raise bad_request("Invalid batch payload format: the batch has no requests.")
    if len(raw_items) > MAX_BATCH:
        raise bad_request(f"Number of requests in the batch ({len(raw_items)}) exceeds the limit of {MAX_BATCH}.")
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in raw_items:
        if not isinstance(raw, dict):
            raise bad_request("Invalid batch payload format: every request must be an object.")
        item_id, method, url = raw.get("id"), raw.get("method"), raw.get("url")
        if not isinstance(item_id, str) or not item_id:
            raise bad_request("Invalid batch payload format: every request needs a string 'id'.")
        if item_id in seen:
            raise bad_request(f"Batch request id '{item_id}' is used more than once: ids must be unique.")
        seen.add(item_id)
        if not isinstance(method, str) or not method or not isinstance(url, str) or not url:
            raise bad_request(f"Invalid batch payload format: request '{item_id}' needs 'method' and 'url'.")
        if strict and url.lower().startswith(("http://", "https://")):
            raise bad_request(f"Invalid request URI '{url}': batch request URLs must be relative.")
        headers = raw.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise bad_request(f"Invalid batch payload format: 'headers' of request '{item_id}' must be an object.")
        depends: list[str] = []
        for key in ("dependsOn",) if strict else ("dependsOn", "depends_on"):
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise bad_request(f"Invalid batch payload format: '{key}' of request '{item_id}' must list ids.")
            depends.extend(value)
        items.append({**raw, "id": item_id, "method": method.upper(), "url": url, "depends": depends})
    graph = {item["id"]: item["depends"] for item in items}
    for item in items:
        for dep in item["depends"]:
            if dep not in graph:
                raise bad_request(f"Request '{item['id']}' depends on unknown request id '{dep}'.")
    _reject_cycles(graph)
    return items


def _reject_cycles(graph: Mapping[str, Sequence[str]]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str) -> None:
        stack: list[tuple[str, Iterator[str]]] = [(node, iter(graph[node]))]
        state[node] = 1
        while stack:
            current, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                state[current] = 2
                stack.pop()
                continue
            if state.get(dep) == 1:
                raise bad_request(f"The dependsOn chain of request '{current}' contains a cycle.")
            if dep not in state:
                state[dep] = 1
                stack.append((dep, iter(graph[dep])))

    for node in graph:
        if node not in state:
            visit(node)
