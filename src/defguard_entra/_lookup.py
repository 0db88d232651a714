"""Finding Entra users: by e-mail address (``mail``, then ``userPrincipalName``, then ``otherMails``), and by the
value one of their custom security attributes holds (:func:`holders_query`, :func:`holders_of`).

The queries are built and the answers settled here; sending them is the Graph adapter's business, handed in as
two functions: one that runs ``$batch`` items (``BatchEngine.batched``), one that follows ``@odata.nextLink``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from . import _odata
from ._batch import ItemAnswers
from ._chunks import chunked
from .exceptions import EntraAPIError, EntraAuthError
from .models import EntraUser, Match, MatchedBy

__all__ = [
    "ADVANCED_HEADERS",
    "USER_SELECT",
    "FollowPages",
    "RunBatch",
    "find_users",
    "holders_of",
    "holders_query",
    "query_item",
    "settle",
]

log = logging.getLogger(__name__)

#: The user properties every look-up reads.
USER_SELECT = "id,userPrincipalName,mail,otherMails,displayName,accountEnabled"

#: What Graph requires of a filter on a custom security attribute (with ``$count=true`` in the query): "You must
#: add ConsistencyLevel=eventual in the request or the header. You must also include $count=true to ensure the
#: request is routed correctly" (List users, Microsoft Learn, https://learn.microsoft.com/graph/api/user-list).
ADVANCED_HEADERS = {"ConsistencyLevel": "eventual"}

#: Runs ``$batch`` items, any number: ``{item id: (answer, retries)}``.
RunBatch = Callable[[Sequence[Mapping[str, Any]]], Awaitable[ItemAnswers]]
#: Every row of a list from its URL on, following ``@odata.nextLink``.
FollowPages = Callable[[str], Awaitable[list[dict[str, Any]]]]
#: Runs ``GET /users`` items: per item id, every row of the answer, or ``None`` for a 400.
_Collect = Callable[[Sequence[dict[str, Any]]], Awaitable[dict[str, list[dict[str, Any]] | None]]]

_STAGES = (("mail", MatchedBy.MAIL), ("userPrincipalName", MatchedBy.USER_PRINCIPAL_NAME))


def query_item(item_id: str, filter_: str) -> dict[str, Any]:
    """A ``$batch`` item that lists the users matching ``filter_``."""
    query = urlencode({"$filter": filter_, "$select": USER_SELECT, "$top": "999"}, quote_via=quote, safe="$,")
    return {"id": item_id, "method": "GET", "url": f"/users?{query}"}


def settle(
    found: Mapping[str, list[EntraUser]], matched_by: MatchedBy, result: dict[str, Match], remaining: Sequence[str]
) -> list[str]:
    """Record in ``result`` the addresses one stage matched (to one user, or ambiguously to several); return the
    addresses it did not match, for the next stage."""
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


def _too_long(addresses: Iterable[str]) -> dict[str, str]:
    return {
        address: (
            f"the address has {len(address)} characters; Graph filters on at most {_odata.VALUE_LIMIT}, so "
            "this user cannot be looked up: shorten the e-mail address in Defguard"
        )
        for address in addresses
        if len(address) > _odata.VALUE_LIMIT
    }


async def find_users(addresses: Iterable[str], run: RunBatch, follow: FollowPages) -> dict[str, Match]:
    """Resolve e-mail addresses: by ``mail``, then ``userPrincipalName``, then ``otherMails``.

    Keys of the result are the addresses lower-cased. Lookups are grouped (``in (…)`` filters of 15 inside
    ``$batch`` requests of 20, so 300 addresses per HTTP request); a stage that matches more than one user
    makes the address ambiguous, and an address settled at one stage is not looked up at the next.
    """
    collect = functools.partial(_collect, run, follow)
    wanted = sorted({a.strip().lower() for a in addresses if a and a.strip()})
    result: dict[str, Match] = {}
    refused = _too_long(wanted)  # address -> why Graph would not look it up; the others go on
    remaining = [a for a in wanted if a not in refused]
    for prop, matched_by in _STAGES:
        if not remaining:
            break
        found = await _lookup_in(collect, prop, remaining, refused)
        remaining = settle(found, matched_by, result, [a for a in remaining if a not in refused])
    if remaining:
        found = await _lookup_each(collect, [a for a in remaining if a not in refused], refused)
        remaining = settle(found, MatchedBy.OTHER_MAILS, result, [a for a in remaining if a not in refused])
    for address in remaining:
        result[address] = Match()
    for address, why in refused.items():
        result[address] = Match(error=why)
    return result


async def _collect(
    run: RunBatch, follow: FollowPages, items: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]] | None]:
    """Run GET items; follow nextLinks; ``None`` for an item Graph refused with 400 (unsupported filter)."""
    answers = await run(items)
    out: dict[str, list[dict[str, Any]] | None] = {}
    for item in items:
        answer, _ = answers[item["id"]]
        status = int(answer.get("status", 0))
        body = answer.get("body")
        if status == 400:
            out[item["id"]] = None
            continue
        if status >= 400 or not isinstance(body, dict):
            code, message = _odata.error_of(body, status)
            if status == 401:
                raise EntraAuthError(f"Graph refused the access token (401 {code}): {message}")
            raise EntraAPIError(status, code, message, method="GET", url="/users")
        rows = list(body.get("value") or [])
        if body.get("@odata.nextLink"):
            rows.extend(await follow(str(body["@odata.nextLink"])))
        out[item["id"]] = rows
    return out


async def _lookup_in(
    collect: _Collect, prop: str, addresses: Sequence[str], refused: dict[str, str]
) -> dict[str, list[EntraUser]]:
    chunks = chunked(addresses, _odata.IN_LIMIT)
    answers = await collect([query_item(str(n), _odata.in_(prop, chunk)) for n, chunk in enumerate(chunks)])
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
        single = await collect([query_item(str(n), _odata.eq(prop, a)) for n, a in enumerate(unsupported)])
        why = f"Graph refused to look this address up by {prop} (400)"
        found |= _rows_per_address(unsupported, single, refused, why)
    return found


async def _lookup_each(
    collect: _Collect, addresses: Sequence[str], refused: dict[str, str]
) -> dict[str, list[EntraUser]]:
    items = [query_item(str(n), _odata.any_eq("otherMails", a)) for n, a in enumerate(addresses)]
    answers = await collect(items) if items else {}
    return _rows_per_address(addresses, answers, refused, "Graph refused to look this address up in otherMails (400)")


def _rows_per_address(
    addresses: Sequence[str],
    answers: Mapping[str, list[dict[str, Any]] | None],
    refused: dict[str, str],
    why: str,
) -> dict[str, list[EntraUser]]:
    """The users of one query per address (item ``n`` for ``addresses[n]``); a 400 affects only its address."""
    found: dict[str, list[EntraUser]] = {}
    for n, address in enumerate(addresses):
        rows = answers[str(n)]
        if rows is None:
            refused[address] = why
            continue
        found[address] = [EntraUser.from_api(r) for r in rows]
    return found


# -- users by the value of a custom security attribute -------------------------------------------------------------


def holders_query(set_name: str, attribute: str, value: str) -> dict[str, str]:
    """The query options of ``GET /users`` listing the users whose ``set_name/attribute`` holds ``value``.

    ``customSecurityAttributes/{set}/{attribute} eq '…'`` (the form of "List users", example "Get users with a
    custom security attribute assignment that equals a value", https://learn.microsoft.com/graph/api/user-list),
    with ``$count=true`` and, sent with it, :data:`ADVANCED_HEADERS`. Graph matches at most 120 characters with
    ``eq`` (Microsoft Graph known issues): a longer value is looked up with ``startsWith`` on its first 120
    characters (the same page documents ``startsWith`` on a custom security attribute), and
    :func:`holders_of` keeps only the exact matches. The comparison is case-sensitive on Graph's side ("The
    filter value is case sensitive"), and exact on ours."""
    path = f"customSecurityAttributes/{set_name}/{attribute}"
    filter_ = (
        _odata.eq(path, value)
        if len(value) <= _odata.VALUE_LIMIT
        else _odata.starts_with(path, value[: _odata.VALUE_LIMIT])
    )
    return {
        "$filter": filter_,
        "$count": "true",
        "$select": f"{USER_SELECT},customSecurityAttributes",
        "$top": "999",
    }


def holders_of(rows: Iterable[Mapping[str, Any]], set_name: str, attribute: str, value: str) -> list[EntraUser]:
    """The users of :func:`holders_query`'s answer that hold exactly ``value`` (each once, in Graph's order).

    A row that shows the attribute is kept only when it holds ``value`` exactly (a ``startsWith`` look-up matches
    any longer value with the same first 120 characters); a row that does not show it (not verified to happen:
    the caller filtered on it, so it may read it) is kept when Graph matched it with ``eq``, and dropped when only
    a prefix was matched."""
    exact = len(value) <= _odata.VALUE_LIMIT
    found: dict[str, EntraUser] = {}
    for row in rows:
        if "id" not in row:
            continue
        attributes = row.get("customSecurityAttributes")
        values = attributes.get(set_name) if isinstance(attributes, Mapping) else None
        held = values.get(attribute) if isinstance(values, Mapping) else None
        if (held == value if held is not None else exact) and str(row["id"]) not in found:
            found[str(row["id"])] = EntraUser.from_api(row)
    return list(found.values())
