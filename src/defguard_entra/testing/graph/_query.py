"""The query options of a request (``$filter``, ``$select``, ``$top``, ``$count``, ``$skiptoken``, ``$orderby``,
``$search``): parsing, the checks that need advanced query parameters, ordering, and the cost of a page.

Sources: https://learn.microsoft.com/graph/query-parameters, https://learn.microsoft.com/graph/paging and
https://learn.microsoft.com/graph/aad-advanced-queries.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from defguard_entra.testing._server import Request

from ._directory import Prop
from ._filter import FilterEngine, FilterSyntaxError, parse_filter
from ._wire import ADVANCED_HINT, MAX_ADVANCED_URL, MAX_EQUALITY_CLAUSES, MAX_TOP, bad_request, unsupported

__all__ = [
    "KNOWN_OPTIONS",
    "Options",
    "check_advanced",
    "decode_skiptoken",
    "encode_skiptoken",
    "filter_engine",
    "ordered",
    "parse_options",
    "resolve_select",
    "resource_units",
    "select_fields",
]


# -- options ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    filter: str | None = None
    select: tuple[str, ...] | None = None
    top: int | None = None
    count: bool = False
    skiptoken: str | None = None
    orderby: str | None = None
    search: str | None = None
    advanced: bool = False


KNOWN_OPTIONS: Final = frozenset({"$filter", "$select", "$top", "$count", "$skiptoken", "$orderby", "$search"})


def _query_params(query: str) -> dict[str, str]:
    """Like :attr:`Request.params` (``parse_qsl``, last value wins), with a fast path for pieces without escapes."""
    params: dict[str, str] = {}
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        if "+" in key:
            key = key.replace("+", " ")
        if "%" in key:
            key = unquote(key)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value)
        params[key] = value
    return params


def parse_options(request: Request, allowed: Collection[str]) -> Options:
    params = _query_params(request.query)
    for key in params:
        if key.startswith("$") and (key not in KNOWN_OPTIONS or key not in allowed):
            raise bad_request(f"Query option '{key}' is not supported here by the emulator.", "Request_BadRequest")
    top: int | None = None
    if "$top" in params:
        raw = params["$top"].strip()
        try:
            top = int(raw)
        except ValueError:
            top = -1
        if not 1 <= top <= MAX_TOP:
            raise bad_request(
                f"Invalid page size specified: '{raw}'. Must be between 1 and 999 inclusive.", "Request_BadRequest"
            )
    count = False
    if "$count" in params:
        raw = params["$count"].strip().lower()
        if raw not in {"true", "false"}:
            raise bad_request(f"Invalid value '{params['$count']}' for $count: use true or false.")
        count = raw == "true"
    select = None
    if "$select" in params:
        names = tuple(s.strip() for s in params["$select"].split(",") if s.strip())
        select = names or None
    consistency = (request.header("consistencylevel") or "").strip().lower()
    return Options(
        filter=params.get("$filter"),
        select=select,
        top=top,
        count=count,
        skiptoken=params.get("$skiptoken"),
        orderby=params.get("$orderby"),
        search=params.get("$search"),
        advanced=consistency == "eventual" and count,
    )


def resolve_select(select: tuple[str, ...] | None, props: Mapping[str, Prop], resource: str) -> tuple[str, ...] | None:
    if select is None:
        return None
    names: list[str] = []
    for name in select:
        prop = props.get(name.lower())
        if prop is None:
            raise bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.{resource}'.")
        if prop.name not in names:
            names.append(prop.name)
    return tuple(names)


def encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"EMU1:{offset}".encode()).decode().rstrip("=")


def decode_skiptoken(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    prefix, _, offset = raw.partition(":")
    if prefix != "EMU1" or not offset.isdigit():
        raise bad_request("Invalid $skiptoken.", "Request_BadRequest")
    return int(offset)


def select_fields(payload: dict[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
    if select is None:
        return payload
    return {name: payload.get(name) for name in select}


# -- what a request may do, and what it costs ------------------------------------------------------------------


def resource_units(base: int, options: Options) -> int:
    units = base - (options.select is not None) - (options.top is not None and options.top < 20)
    return max(units, 1)


def check_advanced(request: Request, options: Options, engine: FilterEngine | None) -> None:
    if engine is not None:
        if engine.analysis.advanced and not options.advanced:
            raise unsupported(
                f"Unsupported or invalid query filter clause: {engine.analysis.advanced[0]}{ADVANCED_HINT}."
            )
        if engine.analysis.equalities > MAX_EQUALITY_CLAUSES and not options.advanced:
            raise unsupported(
                f"Too many child clauses specified in search filter expression containing 'OR' operators: "
                f"{engine.analysis.equalities}. Max allowed: {MAX_EQUALITY_CLAUSES}."
            )
        if options.advanced and len(request.raw_path) + len(request.query) + 1 > MAX_ADVANCED_URL:
            raise unsupported(f"The request URL exceeds {MAX_ADVANCED_URL} characters.")
    if options.search is not None:
        if not options.advanced:
            raise unsupported(f"Request with $search query parameter only works{ADVANCED_HINT}.")
        raise unsupported("$search is not implemented by the emulator.")
    if options.orderby is not None and options.filter is not None and not options.advanced:
        raise unsupported(f"Sorting with $orderby together with $filter is not supported{ADVANCED_HINT}.")


def filter_engine(options: Options, props: Mapping[str, Prop], resource: str) -> FilterEngine | None:
    if options.filter is None:
        return None
    try:
        node = parse_filter(options.filter)
    except FilterSyntaxError as exc:
        raise bad_request(f"Invalid filter clause: {exc}") from None
    return FilterEngine(node, props, resource)


def ordered(items: list[Any], orderby: str | None, props: Mapping[str, Prop], resource: str) -> list[Any]:
    if orderby is None:
        return items
    name, _, direction = orderby.strip().partition(" ")
    prop = props.get(name.lower())
    if prop is None or prop.kind != "str" or direction.strip().lower() not in {"", "asc", "desc"}:
        raise bad_request(f"Invalid $orderby '{orderby}' on type 'microsoft.graph.{resource}'.")
    key = prop.get
    present = sorted(
        (o for o in items if key(o) is not None),
        key=lambda o: str(key(o)).lower(),
        reverse=direction.strip().lower() == "desc",
    )
    return present + [o for o in items if key(o) is None]  # nulls last either way
