"""A Microsoft Graph emulator: the slice of ``graph.microsoft.com/v1.0`` that defguard-entra uses.

Users (lookup by mail, UPN and ``otherMails``, the ``in (…)`` form), groups and their (transitive) members, custom
security attribute definitions, attribute sets and assignments (``PATCH /users/{id}``), ``GET /me``, JSON batching,
paging with ``@odata.nextLink`` (optionally with empty pages), OData error envelopes, bearer-token principals with
permissions, a write quota and seeded fault injection. Standard library only; see ``graph-api.md``, section 13.

Deliberate choices where the service is not fully specified (also in the module's tests):

* Without ``$select`` users come back with Graph's v1.0 default property set (``id``, ``displayName``, ``mail``,
  ``userPrincipalName``, … but **not** ``otherMails``, ``accountEnabled`` or ``customSecurityAttributes``). With
  ``$select`` only the selected properties come back (``id`` only when selected), as Graph does.
* ``PATCH /users/{id}`` updates ``customSecurityAttributes`` only; any other property is a 400
  ``Request_BadRequest`` (the top-level ``"@odata.type": "#microsoft.graph.user"`` is accepted and ignored). The
  set object must carry ``@odata.type`` (either spelling); collections and integers need their ``@odata.type``
  annotation.
* ``and``/``or`` of filters that are supported by default are supported by default; ``ne``, ``not``, ``endsWith``,
  ``eq null``, ``gt``/``lt``…, ``otherMails/any(x:x in (…))`` and custom-security-attribute filters need
  ``ConsistencyLevel: eventual`` + ``$count=true``. More than 15 equality values in one filter is a 400 without them.
* The write quota answers with a decimal ``Retry-After`` (three places; rounded up to whole seconds in the
  ``"integer"`` mode). Injected 429, 503 and 504 all follow the ``retry_after`` mode. Every authenticated PATCH
  takes a token from the bucket, whatever its outcome; reads never do.
* Unknown ``$``-options (``$expand``, ``$skip``, …) are a 400; query keys without ``$`` are not OData and are ignored.
* Batch items are logged as ``batch-item:<endpoint>`` *before* the outer ``batch`` entry (which is logged when the
  whole batch has answered); items answered 424 never ran and are not logged. ``item_faults.latency`` is ignored.
* ``read_attributes`` and ``write_attributes`` are independent flags (a principal may write without reading).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from ._server import DROP, EmulatorServer, Faults, Handler, Request, Response

__all__ = [
    "FilterSyntaxError",
    "GraphEmulator",
    "WriteQuota",
    "parse_filter",
    "parse_literal",
]

ODATA_JSON: Final = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false"
ERROR_JSON: Final = "application/json"
USER_TYPE: Final = "#microsoft.graph.user"
GROUP_TYPE: Final = "#microsoft.graph.group"
CSA_READ_TYPE: Final = "#microsoft.graph.customSecurityAttributeValue"
CSA_WRITE_TYPES: Final = frozenset({"#Microsoft.DirectoryServices.CustomSecurityAttributeValue", CSA_READ_TYPE})
MAX_TOP: Final = 999
MAX_BATCH: Final = 20
MAX_EQUALITY_CLAUSES: Final = 15
MAX_ADVANCED_URL: Final = 2048
MAX_CSA_VALUE: Final = 64
MAX_CSA_COLLECTION: Final = 50
RETRY_AFTER_MODES: Final = frozenset({"integer", "decimal", "absent", "zero", "large"})
INSUFFICIENT: Final = "Insufficient privileges to complete the operation."
WWW_AUTHENTICATE: Final = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_FAULTS: Final[Mapping[int, tuple[str, str]]] = {
    429: ("TooManyRequests", "Please retry again later."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The gateway did not receive a response from the service in time."),
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "The gateway received an invalid response."),
}
_ADVANCED_HINT: Final = " (needs the ConsistencyLevel: eventual header and $count=true)"


# -- errors ------------------------------------------------------------------------------------------------


class GraphError(Exception):
    """Raised by a handler: becomes an OData error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def _unsupported(message: str) -> GraphError:
    return GraphError(400, "Request_UnsupportedQuery", message)


def _not_found(message: str) -> GraphError:
    return GraphError(404, "Request_ResourceNotFound", message)


# -- write quota -------------------------------------------------------------------------------------------


@dataclass
class WriteQuota:
    """A token bucket of ``writes`` tokens refilled evenly over ``per_seconds``; every PATCH takes one.

    Graph's identity limit is 3,000 writes per 150 s per app and tenant. The bucket starts full.
    """

    writes: int = 3000
    per_seconds: float = 150.0
    _tokens: float = field(init=False, repr=False)
    _stamp: float = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.writes < 1 or self.per_seconds <= 0:
            raise ValueError("a write quota needs writes >= 1 and per_seconds > 0")
        self._tokens = float(self.writes)
        self._stamp = time.monotonic()

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self.writes / self.per_seconds

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.writes), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def available(self) -> float:
        """Tokens in the bucket right now (fractional)."""
        with self._lock:
            self._refill(time.monotonic())
            return self._tokens

    def take(self) -> float:
        """Take one token: ``0.0`` when granted, else the seconds until a token is available."""
        with self._lock:
            self._refill(time.monotonic())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return max((1.0 - self._tokens) / self.rate, 0.001)

    def reset(self) -> None:
        """Fill the bucket again."""
        with self._lock:
            self._tokens = float(self.writes)
            self._stamp = time.monotonic()


# -- OData $filter: tokenizer, parser, evaluator --------------------------------------------------------------


class FilterSyntaxError(ValueError):
    """A ``$filter`` (or a string literal) that does not parse."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["string", "word", "punct", "end"]
    text: str
    pos: int


_PUNCT: Final = frozenset("(),:/")
_WORD_EXTRA: Final = frozenset("_.$-+@")


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read the OData string literal starting at ``text[start] == "'"``: its value and the index after it."""
    i = start + 1
    out: list[str] = []
    while True:
        end = text.find("'", i)
        if end < 0:
            raise FilterSyntaxError(f"unterminated string literal at position {start}")
        out.append(text[i:end])
        if end + 1 < len(text) and text[end + 1] == "'":
            out.append("'")
            i = end + 2
            continue
        return "".join(out), end + 1


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "'":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", value, i))
            i = end
        elif ch in _PUNCT:
            tokens.append(_Token("punct", ch, i))
            i += 1
        elif ch.isalnum() or ch in _WORD_EXTRA:
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in _WORD_EXTRA):
                j += 1
            tokens.append(_Token("word", text[i:j], i))
            i = j
        else:
            raise FilterSyntaxError(f"unexpected character {ch!r} at position {i}")
    tokens.append(_Token("end", "", n))
    return tokens


def parse_literal(text: str) -> str:
    """The value of one OData string literal: ``'o''neil@example.com'`` → ``o'neil@example.com``."""
    stripped = text.strip()
    if not stripped.startswith("'"):
        raise FilterSyntaxError("a string literal starts with a single quote")
    value, end = _read_string(stripped, 0)
    if end != len(stripped):
        raise FilterSyntaxError(f"unexpected text after the string literal at position {end}")
    return value


@dataclass(frozen=True, slots=True)
class Comparison:
    path: tuple[str, ...]
    op: str  # eq ne gt ge lt le
    value: Any  # str | bool | int | None


@dataclass(frozen=True, slots=True)
class InList:
    path: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Call:
    func: str  # startswith endswith contains (lower-cased)
    path: tuple[str, ...]
    value: Any


@dataclass(frozen=True, slots=True)
class Lambda:
    path: tuple[str, ...]
    kind: str  # any all
    var: str
    body: FilterNode | None


@dataclass(frozen=True, slots=True)
class Not:
    operand: FilterNode


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and or
    left: FilterNode
    right: FilterNode


FilterNode = Comparison | InList | Call | Lambda | Not | BoolOp

_COMPARE_OPS: Final = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
EQ_VALUE_LIMIT: Final = 120
_FUNCTIONS: Final = frozenset({"startswith", "endswith", "contains"})
_GUID_LENGTHS: Final = (8, 4, 4, 4, 12)


def _looks_like_guid(word: str) -> bool:
    parts = word.split("-")
    return [len(p) for p in parts] == list(_GUID_LENGTHS) and all(
        c in "0123456789abcdefABCDEF" for p in parts for c in p
    )


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text.lower() in words

    def at_punct(self, char: str) -> bool:
        token = self.peek()
        return token.kind == "punct" and token.text == char

    def expect_punct(self, char: str) -> None:
        token = self.advance()
        if token.kind != "punct" or token.text != char:
            raise FilterSyntaxError(f"expected {char!r} at position {token.pos}")

    def expect_word(self) -> _Token:
        token = self.advance()
        if token.kind != "word":
            raise FilterSyntaxError(f"expected a name at position {token.pos}")
        return token

    def parse(self) -> FilterNode:
        node = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            raise FilterSyntaxError(f"unexpected {token.text!r} at position {token.pos}")
        return node

    def or_expr(self) -> FilterNode:
        node = self.and_expr()
        while self.at_word("or"):
            self.advance()
            node = BoolOp("or", node, self.and_expr())
        return node

    def and_expr(self) -> FilterNode:
        node = self.unary()
        while self.at_word("and"):
            self.advance()
            node = BoolOp("and", node, self.unary())
        return node

    def unary(self) -> FilterNode:
        if self.at_word("not"):
            self.advance()
            return Not(self.unary())
        return self.primary()

    def primary(self) -> FilterNode:
        if self.at_punct("("):
            self.advance()
            node = self.or_expr()
            self.expect_punct(")")
            return node
        name = self.expect_word()
        if self.at_punct("(") and name.text.lower() in _FUNCTIONS:
            self.advance()
            path = self.path()
            self.expect_punct(",")
            value = self.literal()
            self.expect_punct(")")
            call = Call(name.text.lower(), path, value)
            if self.at_word("eq"):  # startsWith(mail,'a') eq true
                self.advance()
                if self.literal() is not True:
                    raise FilterSyntaxError("only 'eq true' may follow a function call")
            return call
        parts = [name.text]
        while self.at_punct("/"):
            self.advance()
            segment = self.expect_word()
            if segment.text.lower() in {"any", "all"} and self.at_punct("("):
                return self.lambda_(tuple(parts), segment.text.lower())
            parts.append(segment.text)
        path = tuple(parts)
        op = self.expect_word()
        operator = op.text.lower()
        if operator == "in":
            self.expect_punct("(")
            values = [self.literal()]
            while self.at_punct(","):
                self.advance()
                values.append(self.literal())
            self.expect_punct(")")
            return InList(path, tuple(values))
        if operator not in _COMPARE_OPS:
            raise FilterSyntaxError(f"unknown operator {op.text!r} at position {op.pos}")
        return Comparison(path, operator, self.literal())

    def path(self) -> tuple[str, ...]:
        parts = [self.expect_word().text]
        while self.at_punct("/"):
            self.advance()
            parts.append(self.expect_word().text)
        return tuple(parts)

    def lambda_(self, path: tuple[str, ...], kind: str) -> FilterNode:
        self.expect_punct("(")
        if self.at_punct(")"):
            self.advance()
            return Lambda(path, kind, "", None)
        var = self.expect_word().text
        self.expect_punct(":")
        body = self.or_expr()
        self.expect_punct(")")
        return Lambda(path, kind, var, body)

    def literal(self) -> Any:
        token = self.advance()
        if token.kind == "string":
            return token.text
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered in {"true", "false"}:
                return lowered == "true"
            if lowered == "null":
                return None
            if _looks_like_guid(token.text):
                return token.text
            try:
                return int(token.text)
            except ValueError:
                pass
        raise FilterSyntaxError(f"expected a literal at position {token.pos}")


def parse_filter(text: str) -> FilterNode:
    """Parse an OData ``$filter`` expression into a small syntax tree (raises :class:`FilterSyntaxError`)."""
    return _FilterParser(text).parse()


# -- the directory ---------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _User:
    seq: int
    id: str
    upn: str
    mail: str | None
    other_mails: tuple[str, ...]
    display_name: str | None
    account_enabled: bool
    csa: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True, eq=False)
class _Group:
    seq: int
    id: str
    display_name: str
    members: list[_User | _Group] = field(default_factory=list)
    member_ids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Definition:
    attribute_set: str
    name: str
    type: str
    is_collection: bool
    is_searchable: bool
    status: str
    use_predefined_values_only: bool
    description: str | None
    allowed_values: tuple[Any, ...]

    @property
    def id(self) -> str:
        return f"{self.attribute_set}_{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "attributeSet": self.attribute_set,
            "description": self.description,
            "id": self.id,
            "isCollection": self.is_collection,
            "isSearchable": self.is_searchable,
            "name": self.name,
            "status": self.status,
            "type": self.type,
            "usePreDefinedValuesOnly": self.use_predefined_values_only,
        }


@dataclass(slots=True)
class _AttributeSet:
    id: str
    description: str | None
    max_attributes_per_set: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "maxAttributesPerSet": self.max_attributes_per_set}


@dataclass(frozen=True)
class _Principal:
    """Who a bearer token stands for and what it may do."""

    name: str
    app_id: str
    read_users: bool = True
    read_groups: bool = True
    write_attributes: bool = True
    read_attributes: bool = True
    read_definitions: bool = True
    user: str | None = None  # delegated: the signed-in user (id or UPN)


# -- property tables (for $select, $filter and rendering) ---------------------------------------------------

PropKind = Literal["str", "strlist", "bool", "csa", "none", "list"]


@dataclass(frozen=True, slots=True)
class _Prop:
    name: str
    kind: PropKind
    get: Callable[[Any], Any]


def _nickname(value: str) -> str:
    return "".join(ch for ch in value if ch.isalnum()) or "group"


def _props(*props: _Prop) -> dict[str, _Prop]:
    return {p.name.lower(): p for p in props}


def _none(_: Any) -> None:
    return None


def _empty(_: Any) -> list[str]:
    return []


_USER_PROPS: Final = _props(
    _Prop("id", "str", lambda u: u.id),
    _Prop("userPrincipalName", "str", lambda u: u.upn),
    _Prop("mail", "str", lambda u: u.mail),
    _Prop("otherMails", "strlist", lambda u: list(u.other_mails)),
    _Prop("displayName", "str", lambda u: u.display_name),
    _Prop("accountEnabled", "bool", lambda u: u.account_enabled),
    _Prop("customSecurityAttributes", "csa", _none),  # rendered by the emulator (permission-dependent)
    _Prop("mailNickname", "str", lambda u: u.upn.partition("@")[0]),
    _Prop("userType", "str", lambda _: "Member"),
    _Prop("businessPhones", "list", _empty),
    _Prop("givenName", "none", _none),
    _Prop("surname", "none", _none),
    _Prop("jobTitle", "none", _none),
    _Prop("mobilePhone", "none", _none),
    _Prop("officeLocation", "none", _none),
    _Prop("preferredLanguage", "none", _none),
    _Prop("employeeId", "none", _none),
    _Prop("onPremisesSamAccountName", "none", _none),
    _Prop("proxyAddresses", "list", _empty),
)
_USER_DEFAULT: Final = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
_GROUP_PROPS: Final = _props(
    _Prop("id", "str", lambda g: g.id),
    _Prop("displayName", "str", lambda g: g.display_name),
    _Prop("description", "none", _none),
    _Prop("groupTypes", "list", _empty),
    _Prop("mail", "none", _none),
    _Prop("mailEnabled", "bool", lambda _: False),
    _Prop("mailNickname", "str", lambda g: _nickname(g.display_name)),
    _Prop("securityEnabled", "bool", lambda _: True),
)
_GROUP_DEFAULT: Final = (
    "id",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
)
_DEFINITION_PROPS: Final = _props(
    _Prop("id", "str", lambda d: d.id),
    _Prop("attributeSet", "str", lambda d: d.attribute_set),
    _Prop("name", "str", lambda d: d.name),
    _Prop("type", "str", lambda d: d.type),
    _Prop("status", "str", lambda d: d.status),
    _Prop("description", "str", lambda d: d.description),
    _Prop("isCollection", "bool", lambda d: d.is_collection),
    _Prop("isSearchable", "bool", lambda d: d.is_searchable),
    _Prop("usePreDefinedValuesOnly", "bool", lambda d: d.use_predefined_values_only),
)
_SET_PROPS: Final = _props(
    _Prop("id", "str", lambda s: s.id),
    _Prop("description", "str", lambda s: s.description),
    _Prop("maxAttributesPerSet", "none", lambda s: s.max_attributes_per_set),
)
_MEMBER_PROPS: Final = {**_GROUP_PROPS, **_USER_PROPS}


# -- filter analysis and evaluation ----------------------------------------------------------------------


@dataclass
class _Analysis:
    advanced: list[str] = field(default_factory=list)  # why the filter needs advanced query parameters
    equalities: int = 0


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _FilterEngine:
    """Validates a parsed filter against a property table and evaluates it on records."""

    def __init__(self, node: FilterNode, props: Mapping[str, _Prop], resource: str) -> None:
        self.node = node
        self.props = props
        self.resource = resource
        self.analysis = _Analysis()
        self._check(node, {})

    # validation --------------------------------------------------------------------------------------------

    def _prop(self, path: tuple[str, ...], env: Mapping[str, str]) -> _Prop | None:
        """The property a path names (``None`` for a lambda variable); raises for unknown properties."""
        if len(path) == 1 and path[0] in env:
            return None
        head = path[0].lower()
        prop = self.props.get(head)
        if prop is None:
            raise _bad_request(
                f"Could not find a property named '{path[0]}' on type 'microsoft.graph.{self.resource}'."
            )
        if prop.kind == "csa":
            if len(path) != 3:
                raise _bad_request("Filter on customSecurityAttributes needs customSecurityAttributes/<set>/<name>.")
            self.analysis.advanced.append("custom security attribute filters")
            return prop
        if len(path) != 1:
            raise _bad_request(f"Property '{path[0]}' has no property '{path[1]}'.")
        if prop.kind not in {"str", "strlist", "bool"}:
            raise _unsupported(
                f"Unsupported or invalid query filter clause specified for property '{prop.name}' "
                f"of resource '{self.resource.capitalize()}'."
            )
        return prop

    def _scalar(self, prop: _Prop | None, value: Any, op: str) -> None:
        kind = "str" if prop is None else prop.kind
        if kind == "strlist":
            raise _bad_request(f"Property '{prop.name if prop else ''}' is a collection: use any(x:x {op} …).")
        if value is None:
            self.analysis.advanced.append(f"'{op} null'")
            return
        if (kind in {"str", "csa"} and not isinstance(value, str)) or (kind == "bool" and not isinstance(value, bool)):
            raise _bad_request("A binary operator with incompatible types was detected.")
        if isinstance(value, str) and len(value) > EQ_VALUE_LIMIT:
            # Graph known issues, "Some limitations apply to query parameters": at most 120 characters for an eq
            # value (assumed for in values too). The exact answer Graph gives is not verified: a 400 is certain.
            raise _unsupported(
                f"Unsupported or invalid query filter clause: the value to match has {len(value)} characters, "
                f"more than {EQ_VALUE_LIMIT}."
            )

    def _check(self, node: FilterNode, env: Mapping[str, str]) -> None:
        a = self.analysis
        if isinstance(node, Comparison):
            prop = self._prop(node.path, env)
            self._scalar(prop, node.value, node.op)
            if node.op == "eq":
                a.equalities += 1
            else:
                a.advanced.append(f"the '{node.op}' operator")
        elif isinstance(node, InList):
            prop = self._prop(node.path, env)
            for value in node.values:
                self._scalar(prop, value, "in")
            a.equalities += len(node.values)
            if prop is None and env:
                a.advanced.append("'in' inside a lambda")
        elif isinstance(node, Call):
            prop = self._prop(node.path, env)
            if prop is not None and prop.kind not in {"str", "csa"}:
                raise _bad_request(f"{node.func}() needs a string property.")
            if not isinstance(node.value, str):
                raise _bad_request(f"{node.func}() needs a string literal.")
            if node.func == "contains":
                raise _unsupported("Unsupported query: contains() is not supported on directory objects.")
            if node.func == "endswith":
                a.advanced.append("endsWith()")
        elif isinstance(node, Lambda):
            prop = self._prop(node.path, env)
            if prop is None or prop.kind != "strlist":
                raise _bad_request(f"'{'/'.join(node.path)}' is not a collection: {node.kind}() needs one.")
            if node.kind == "all":
                raise _unsupported(f"Unsupported query: all() on '{prop.name}'.")
            if node.body is None:
                a.advanced.append("any() without a condition")
                return
            if not isinstance(node.body, Comparison | InList | Call) or node.body.path != (node.var,):
                raise _unsupported(f"Unsupported lambda expression on '{prop.name}'.")
            self._check(node.body, {**env, node.var: prop.name})
        elif isinstance(node, Not):
            a.advanced.append("the 'not' operator")
            self._check(node.operand, env)
        else:
            self._check(node.left, env)
            self._check(node.right, env)

    # evaluation --------------------------------------------------------------------------------------------

    def _value(self, obj: Any, path: tuple[str, ...], env: Mapping[str, Any]) -> Any:
        if len(path) == 1 and path[0] in env:
            return env[path[0]]
        props = _USER_PROPS if isinstance(obj, _User) else _GROUP_PROPS if isinstance(obj, _Group) else self.props
        prop = props.get(path[0].lower())
        if prop is None:
            return None
        if prop.kind == "csa":
            csa = getattr(obj, "csa", None) or {}
            return (csa.get(path[1]) or {}).get(path[2])
        return prop.get(obj)

    def matches(self, obj: Any, node: FilterNode | None = None, env: Mapping[str, Any] | None = None) -> bool:
        node = self.node if node is None else node
        env = env or {}
        if isinstance(node, Comparison):
            return _compare(self._value(obj, node.path, env), node.op, node.value)
        if isinstance(node, InList):
            value = _lower(self._value(obj, node.path, env))
            return any(value == _lower(v) for v in node.values)
        if isinstance(node, Call):
            value = self._value(obj, node.path, env)
            if not isinstance(value, str):
                return False
            needle = str(node.value).lower()
            return value.lower().startswith(needle) if node.func == "startswith" else value.lower().endswith(needle)
        if isinstance(node, Lambda):
            items = self._value(obj, node.path, env) or []
            if node.body is None:
                return bool(items)
            return any(self.matches(obj, node.body, {**env, node.var: item}) for item in items)
        if isinstance(node, Not):
            return not self.matches(obj, node.operand, env)
        if node.op == "and":
            return self.matches(obj, node.left, env) and self.matches(obj, node.right, env)
        return self.matches(obj, node.left, env) or self.matches(obj, node.right, env)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if expected is None or actual is None:
        same = actual is None and expected is None
        return same if op == "eq" else (not same if op == "ne" else False)
    left, right = _lower(actual), _lower(expected)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    try:
        return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])
    except TypeError:
        return False


# -- request options -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    filter: str | None = None
    select: tuple[str, ...] | None = None
    top: int | None = None
    count: bool = False
    skiptoken: str | None = None
    orderby: str | None = None
    search: str | None = None
    advanced: bool = False


_KNOWN_OPTIONS: Final = frozenset({"$filter", "$select", "$top", "$count", "$skiptoken", "$orderby", "$search"})


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


def _options(request: Request, allowed: Collection[str]) -> _Options:
    params = _query_params(request.query)
    for key in params:
        if key.startswith("$") and (key not in _KNOWN_OPTIONS or key not in allowed):
            raise _bad_request(f"Query option '{key}' is not supported here by the emulator.", "Request_BadRequest")
    top: int | None = None
    if "$top" in params:
        raw = params["$top"].strip()
        try:
            top = int(raw)
        except ValueError:
            top = -1
        if not 1 <= top <= MAX_TOP:
            raise _bad_request(
                f"Invalid page size specified: '{raw}'. Must be between 1 and 999 inclusive.", "Request_BadRequest"
            )
    count = False
    if "$count" in params:
        raw = params["$count"].strip().lower()
        if raw not in {"true", "false"}:
            raise _bad_request(f"Invalid value '{params['$count']}' for $count: use true or false.")
        count = raw == "true"
    select = None
    if "$select" in params:
        names = tuple(s.strip() for s in params["$select"].split(",") if s.strip())
        select = names or None
    consistency = (request.header("consistencylevel") or "").strip().lower()
    return _Options(
        filter=params.get("$filter"),
        select=select,
        top=top,
        count=count,
        skiptoken=params.get("$skiptoken"),
        orderby=params.get("$orderby"),
        search=params.get("$search"),
        advanced=consistency == "eventual" and count,
    )


def _resolve_select(
    select: tuple[str, ...] | None, props: Mapping[str, _Prop], resource: str
) -> tuple[str, ...] | None:
    if select is None:
        return None
    names: list[str] = []
    for name in select:
        prop = props.get(name.lower())
        if prop is None:
            raise _bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.{resource}'.")
        if prop.name not in names:
            names.append(prop.name)
    return tuple(names)


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"EMU1:{offset}".encode()).decode().rstrip("=")


def _decode_skiptoken(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    prefix, _, offset = raw.partition(":")
    if prefix != "EMU1" or not offset.isdigit():
        raise _bad_request("Invalid $skiptoken.", "Request_BadRequest")
    return int(offset)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _ok(payload: Any, resource_units: int | None = None, status: int = 200) -> Response:
    headers = {} if resource_units is None else {"x-ms-resource-unit": str(resource_units)}
    return Response(status, _json_bytes(payload), ODATA_JSON, headers)


def _is_json_content_type(value: str | None) -> bool:
    return value is not None and value.split(";", 1)[0].strip().lower() == "application/json"


def _key(value: str) -> str:
    """``value.lower()``, reusing ``value`` itself when it already is lower-case (one string less per key)."""
    lowered = value.lower()
    return value if lowered == value else lowered


def _index(index: dict[str, _User | tuple[_User, ...]], key: str, record: _User) -> None:
    current = index.get(key)
    if current is None:
        index[key] = record
    elif isinstance(current, tuple):
        index[key] = (*current, record)
    else:
        index[key] = (current, record)


def _lookup(index: Mapping[str, _User | tuple[_User, ...]], key: str) -> tuple[_User, ...]:
    found = index.get(key)
    if found is None:
        return ()
    return found if isinstance(found, tuple) else (found,)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 32 and name.isascii() and name.isalnum() and not name[0].isdigit()


_RetryAfter = str | float | None


# -- the emulator ----------------------------------------------------------------------------------------------


class GraphEmulator(EmulatorServer):
    """Microsoft Graph v1.0 on ``http://127.0.0.1:<port>/v1.0``: users, groups, custom security attributes."""

    server_header = "defguard-entra-graph-emulator"

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        item_faults: Faults | None = None,
        retry_after: _RetryAfter = "decimal",
        write_quota: WriteQuota | None = None,
        page_size: int = 100,
        empty_pages: bool = False,
        shuffle_batch: bool = True,
        throttled_batch_status: int | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
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
        self.seed = seed
        self._rng = random.Random(seed)
        self._token_rng = random.Random(f"tokens-{seed}")
        self._shuffle_rng = random.Random(f"batch-{seed}")
        self.tenant_id = self._new_id()
        self._seq = itertools.count()
        self._users: dict[str, _User] = {}
        self._user_order: list[_User] = []
        self._by_upn: dict[str, _User] = {}
        # address → one user, or a tuple of users when several share it (most addresses belong to one user)
        self._by_mail: dict[str, _User | tuple[_User, ...]] = {}
        self._by_other_mail: dict[str, _User | tuple[_User, ...]] = {}
        self._groups: dict[str, _Group] = {}
        self._group_order: list[_Group] = []
        self._groups_by_name: dict[str, list[_Group]] = {}
        self._membership_version = 0
        self._member_cache: dict[tuple[str, bool], tuple[int, list[_User | _Group]]] = {}
        self._sets: dict[str, _AttributeSet] = {}
        self._definitions: dict[str, _Definition] = {}
        self._tokens: dict[str, _Principal] = {}
        self._write_count = 0
        self._throttled_count = 0
        self.admin_token = self._register(_Principal("admin", self._new_id()))

    # -- configuration -----------------------------------------------------------------------------------------

    @property
    def retry_after(self) -> _RetryAfter:
        return self._retry_after

    @retry_after.setter
    def retry_after(self, value: _RetryAfter) -> None:
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

    # -- seeding ----------------------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _register(self, principal: _Principal) -> str:
        token = f"emu.{len(self._tokens)}.{self._token_rng.getrandbits(96):024x}"
        self._tokens[token] = principal
        return token

    def add_principal(
        self,
        name: str,
        *,
        read_users: bool = True,
        read_groups: bool = True,
        write_attributes: bool = True,
        read_attributes: bool = True,
        read_definitions: bool = True,
        user: str | None = None,
    ) -> str:
        """A new bearer token for a principal with these permissions; ``user`` (id or UPN) makes it delegated."""
        with self.lock:
            principal = _Principal(
                name, self._new_id(), read_users, read_groups, write_attributes, read_attributes, read_definitions, user
            )
            return self._register(principal)

    def add_user(
        self,
        user_principal_name: str,
        *,
        mail: str | None = None,
        other_mails: Iterable[str] = (),
        display_name: str | None = None,
        account_enabled: bool = True,
        id: str | None = None,  # noqa: A002 - Graph's name
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str:
        """Add a user; returns its id (a seeded uuid4 unless given)."""
        with self.lock:
            upn_key = _key(user_principal_name)
            if upn_key in self._by_upn:
                raise ValueError(f"userPrincipalName {user_principal_name!r} already exists")
            user_id = id if id is not None else self._new_id()
            if user_id.lower() in self._users or user_id.lower() in self._groups:
                raise ValueError(f"id {user_id!r} already exists")
            record = _User(
                next(self._seq), user_id, user_principal_name, mail, tuple(other_mails), display_name, account_enabled
            )
            self._users[_key(user_id)] = record
            self._user_order.append(record)
            self._by_upn[upn_key] = record
            if mail:
                _index(self._by_mail, _key(mail), record)
            for address in dict.fromkeys(_key(m) for m in record.other_mails):
                _index(self._by_other_mail, address, record)
            for set_name, values in (attributes or {}).items():
                self._seed_attributes(record, set_name, values)
            return user_id

    def add_group(self, display_name: str, members: Iterable[str] = (), id: str | None = None) -> str:  # noqa: A002
        """Add a group (display names need not be unique); members are user ids/UPNs or group ids."""
        with self.lock:
            group_id = id if id is not None else self._new_id()
            if group_id.lower() in self._groups or group_id.lower() in self._users:
                raise ValueError(f"id {group_id!r} already exists")
            group = _Group(next(self._seq), group_id, display_name)
            self._groups[group_id.lower()] = group
            self._group_order.append(group)
            self._groups_by_name.setdefault(display_name.lower(), []).append(group)
            self.add_members(group_id, *members)
            return group_id

    def add_members(self, group_id: str, *member_ids: str) -> None:
        """Add direct members (user ids or UPNs, group ids) to a group; nesting cycles are allowed."""
        with self.lock:
            group = self._groups.get(group_id.lower())
            if group is None:
                raise KeyError(f"no group {group_id!r}")
            for member_id in member_ids:
                member: _User | _Group | None = self._find_user(member_id) or self._groups.get(member_id.lower())
                if member is None:
                    raise KeyError(f"no user or group {member_id!r}")
                if member.id.lower() not in group.member_ids:
                    group.member_ids.add(member.id.lower())
                    group.members.append(member)
            self._membership_version += 1

    def define_attribute_set(
        self,
        name: str = "Defguard",
        attributes: Iterable[str] = ("EnrollmentToken", "EnrollmentUrl"),
        *,
        description: str = "",
        max_attributes_per_set: int | None = 25,
    ) -> None:
        """Define an attribute set and, in it, single-valued String attributes (status Available)."""
        if not _valid_name(name):
            raise ValueError(f"invalid attribute set name {name!r}: up to 32 letters/digits, not starting with a digit")
        with self.lock:
            self._sets[name] = _AttributeSet(name, description or None, max_attributes_per_set)
            for attribute in attributes:
                self.define_attribute(name, attribute)

    def define_attribute(
        self,
        set_name: str,
        name: str,
        *,
        type: str = "String",  # noqa: A002 - Graph's name
        is_collection: bool = False,
        use_predefined_values_only: bool = False,
        status: str = "Available",
        is_searchable: bool = True,
        description: str = "",
        allowed_values: Iterable[Any] = (),
    ) -> None:
        """Define (or redefine) one attribute in an existing set; ``allowed_values`` are its predefined values."""
        if type not in {"String", "Integer", "Boolean"}:
            raise ValueError("type must be String, Integer or Boolean")
        if status not in {"Available", "Deprecated"}:
            raise ValueError("status must be Available or Deprecated")
        if type == "Boolean" and is_collection:
            raise ValueError("Boolean attributes cannot be collections")
        if not _valid_name(name):
            raise ValueError(f"invalid attribute name {name!r}: up to 32 letters/digits, not starting with a digit")
        with self.lock:
            if set_name not in self._sets:
                raise KeyError(f"attribute set {set_name!r} is not defined: call define_attribute_set first")
            definition = _Definition(
                set_name,
                name,
                type,
                is_collection,
                is_searchable,
                status,
                use_predefined_values_only,
                description or None,
                tuple(allowed_values),
            )
            self._definitions[definition.id] = definition

    def set_attributes(self, user: str, set_name: str, values: Mapping[str, Any]) -> None:
        """Seed stored attribute values directly (no validation; ``None`` removes a value)."""
        with self.lock:
            self._seed_attributes(self._require_user(user), set_name, values)

    def attributes(self, user: str) -> dict[str, dict[str, Any]]:
        """The user's stored custom security attributes by set, then attribute (no annotations)."""
        with self.lock:
            record = self._require_user(user)
            return {s: dict(v) for s, v in (record.csa or {}).items()}

    def user(self, user: str) -> dict[str, Any]:
        """A copy of the stored user record (id or UPN)."""
        with self.lock:
            r = self._require_user(user)
            return {
                "id": r.id,
                "userPrincipalName": r.upn,
                "mail": r.mail,
                "otherMails": list(r.other_mails),
                "displayName": r.display_name,
                "accountEnabled": r.account_enabled,
                "customSecurityAttributes": {s: dict(v) for s, v in r.csa.items()} if r.csa else None,
            }

    def _seed_attributes(self, record: _User, set_name: str, values: Mapping[str, Any]) -> None:
        self._apply_csa(record, [(set_name, name, value) for name, value in values.items()])

    @staticmethod
    def _apply_csa(record: _User, changes: Iterable[tuple[str, str, Any]]) -> None:
        csa = record.csa if record.csa is not None else {}
        for set_name, name, value in changes:
            if value is None or (isinstance(value, list) and not value):
                values = csa.get(set_name)
                if values is not None:
                    values.pop(name, None)
                    if not values:
                        del csa[set_name]
            else:
                csa.setdefault(set_name, {})[name] = list(value) if isinstance(value, list) else value
        record.csa = csa or None

    def _find_user(self, key: str) -> _User | None:
        lowered = key.lower()
        return self._users.get(lowered) or self._by_upn.get(lowered)

    def _require_user(self, key: str) -> _User:
        record = self._find_user(key)
        if record is None:
            raise KeyError(f"no user {key!r}")
        return record

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
        endpoint: str | None = None
        handler: Handler | None = None
        allowed = "GET"
        if head.lower() == "users" and len(rest) == 1:
            endpoint, handler = "users-list", self._list_users
        elif head.lower().startswith("users(") and head.endswith(")") and len(rest) == 1:
            key = self._key_literal(head[len("users(") : -1])
            endpoint, handler, allowed = self._user_route(method, key)
        elif head.lower() == "users" and len(rest) == 2:
            endpoint, handler, allowed = self._user_route(method, rest[1])
        elif head.lower() == "me" and len(rest) == 1:
            endpoint, handler = "me", self._get_me
        elif head.lower() == "groups" and len(rest) == 1:
            endpoint, handler = "groups-list", self._list_groups
        elif head.lower() == "groups" and len(rest) == 2:
            group_id = rest[1]
            endpoint, handler = "group-get", lambda req: self._get_group(req, group_id)
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
        elif head.lower() == "directory" and len(rest) in {2, 3}:
            sub = rest[1].lower()
            item = rest[2] if len(rest) == 3 else None
            if sub == "customsecurityattributedefinitions":
                if item is None:
                    endpoint, handler = "attribute-definitions", self._list_definitions
                else:
                    endpoint, handler = "attribute-definition", lambda req: self._get_definition(req, item)
            elif sub == "attributesets":
                endpoint = "attribute-sets"
                handler = self._list_sets if item is None else (lambda req: self._get_set(req, item))
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
        return "user-get", lambda req: self._get_user(req, key), "GET,PATCH"

    @staticmethod
    def _key_literal(text: str) -> str:
        try:
            return parse_literal(text)
        except FilterSyntaxError:
            return text

    # -- the envelope --------------------------------------------------------------------------------------------

    @staticmethod
    def _ids(request: Request) -> tuple[str, str]:
        request_id = _request_id()
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
        return Response(error.status, _json_bytes(body), ERROR_JSON, headers)

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
        code, message = _FAULTS.get(status, ("UnknownError", "An injected failure."))
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

    # -- auth ----------------------------------------------------------------------------------------------------

    def _principal(self, request: Request) -> _Principal:
        auth = (request.header("authorization") or "").strip()
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if not auth or scheme.lower() != "bearer" or not token:
            raise GraphError(
                401, "InvalidAuthenticationToken", "Access token is empty.", {"WWW-Authenticate": WWW_AUTHENTICATE}
            )
        principal = self._tokens.get(token)
        if principal is None:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
                {"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        return principal

    def _require(self, request: Request, permission: str) -> _Principal:
        principal = self._principal(request)
        if not getattr(principal, permission):
            raise GraphError(403, "Authorization_RequestDenied", INSUFFICIENT)
        return principal

    # -- paging ------------------------------------------------------------------------------------------------

    def _next_link(self, request: Request, offset: int) -> str:
        path = "/" + "/".join(s for s in request.raw_path.split("/") if s)
        kept = [p for p in request.query.split("&") if p and unquote(p.partition("=")[0]) != "$skiptoken"]
        kept.append(f"$skiptoken={_encode_skiptoken(offset)}")
        return f"{self.base_url}{path}?{'&'.join(kept)}"

    def _page(
        self,
        request: Request,
        options: _Options,
        items: Sequence[Any],
        render: Callable[[Any], dict[str, Any]],
        *,
        context: str,
        resource_units: int,
    ) -> Response:
        top = options.top or self.page_size
        body: dict[str, Any] = {"@odata.context": context}
        first = options.skiptoken is None
        if options.count and options.advanced and first:
            body["@odata.count"] = len(items)
        if self.empty_pages and first:
            page: Sequence[Any] = ()
            next_offset: int | None = 0
        else:
            offset = 0 if first else _decode_skiptoken(options.skiptoken or "")
            page = items[offset : offset + top]
            next_offset = offset + top if offset + top < len(items) else None
        if next_offset is not None:
            body["@odata.nextLink"] = self._next_link(request, next_offset)
        body["value"] = [render(item) for item in page]
        return _ok(body, resource_units)

    @staticmethod
    def _resource_units(base: int, options: _Options) -> int:
        units = base - (options.select is not None) - (options.top is not None and options.top < 20)
        return max(units, 1)

    def _check_advanced(self, request: Request, options: _Options, engine: _FilterEngine | None) -> None:
        if engine is not None:
            if engine.analysis.advanced and not options.advanced:
                raise _unsupported(
                    f"Unsupported or invalid query filter clause: {engine.analysis.advanced[0]}{_ADVANCED_HINT}."
                )
            if engine.analysis.equalities > MAX_EQUALITY_CLAUSES and not options.advanced:
                raise _unsupported(
                    f"Too many child clauses specified in search filter expression containing 'OR' operators: "
                    f"{engine.analysis.equalities}. Max allowed: {MAX_EQUALITY_CLAUSES}."
                )
            if options.advanced and len(request.raw_path) + len(request.query) + 1 > MAX_ADVANCED_URL:
                raise _unsupported(f"The request URL exceeds {MAX_ADVANCED_URL} characters.")
        if options.search is not None:
            if not options.advanced:
                raise _unsupported(f"Request with $search query parameter only works{_ADVANCED_HINT}.")
            raise _unsupported("$search is not implemented by the emulator.")
        if options.orderby is not None and options.filter is not None and not options.advanced:
            raise _unsupported(f"Sorting with $orderby together with $filter is not supported{_ADVANCED_HINT}.")

    @staticmethod
    def _engine(options: _Options, props: Mapping[str, _Prop], resource: str) -> _FilterEngine | None:
        if options.filter is None:
            return None
        try:
            node = parse_filter(options.filter)
        except FilterSyntaxError as exc:
            raise _bad_request(f"Invalid filter clause: {exc}") from None
        return _FilterEngine(node, props, resource)

    @staticmethod
    def _ordered(items: list[Any], orderby: str | None, props: Mapping[str, _Prop], resource: str) -> list[Any]:
        if orderby is None:
            return items
        name, _, direction = orderby.strip().partition(" ")
        prop = props.get(name.lower())
        if prop is None or prop.kind != "str" or direction.strip().lower() not in {"", "asc", "desc"}:
            raise _bad_request(f"Invalid $orderby '{orderby}' on type 'microsoft.graph.{resource}'.")
        key = prop.get
        present = sorted(
            (o for o in items if key(o) is not None),
            key=lambda o: str(key(o)).lower(),
            reverse=direction.strip().lower() == "desc",
        )
        return present + [o for o in items if key(o) is None]  # nulls last either way

    # -- users -----------------------------------------------------------------------------------------------------

    def _user_candidates(self, node: FilterNode) -> list[_User] | None:
        """A superset of the users matching ``node`` from the indexes, or ``None`` when a scan is needed."""
        if isinstance(node, Comparison | InList) and len(node.path) == 1:
            values = (node.value,) if isinstance(node, Comparison) else node.values
            if isinstance(node, Comparison) and node.op != "eq":
                return None
            field_name = node.path[0].lower()
            if field_name not in {"mail", "userprincipalname", "id"} or not all(isinstance(v, str) for v in values):
                return None
            found: list[_User] = []
            for value in values:
                key = value.lower()
                if field_name == "mail":
                    found.extend(_lookup(self._by_mail, key))
                else:
                    user = (self._by_upn if field_name == "userprincipalname" else self._users).get(key)
                    if user is not None:
                        found.append(user)
            return found
        if isinstance(node, Lambda) and node.path[0].lower() == "othermails" and node.kind == "any":
            body = node.body
            if isinstance(body, Comparison) and body.op == "eq" and isinstance(body.value, str):
                return list(_lookup(self._by_other_mail, body.value.lower()))
            if isinstance(body, InList) and all(isinstance(v, str) for v in body.values):
                return [u for v in body.values for u in _lookup(self._by_other_mail, v.lower())]
            return None
        if isinstance(node, BoolOp):
            left = self._user_candidates(node.left)
            if node.op == "and":
                return left if left is not None else self._user_candidates(node.right)
            right = self._user_candidates(node.right)
            return None if left is None or right is None else left + right
        return None

    def _matching_users(self, engine: _FilterEngine | None) -> list[_User]:
        if engine is None:
            return self._user_order
        candidates = self._user_candidates(engine.node)
        if candidates is None:
            return [u for u in self._user_order if engine.matches(u)]
        unique = {id(u): u for u in candidates}.values()
        return sorted((u for u in unique if engine.matches(u)), key=lambda u: u.seq)

    def _csa_json(self, record: _User) -> dict[str, Any] | None:
        if not record.csa:
            return None
        out: dict[str, Any] = {}
        for set_name, values in record.csa.items():
            rendered: dict[str, Any] = {"@odata.type": CSA_READ_TYPE}
            for name, value in values.items():
                definition = self._definitions.get(f"{set_name}_{name}")
                if definition is not None and (definition.is_collection or definition.type == "Integer"):
                    inner = "Int32" if definition.type == "Integer" else "String"
                    rendered[f"{name}@odata.type"] = f"#Collection({inner})" if definition.is_collection else "#Int32"
                rendered[name] = list(value) if isinstance(value, list) else value
            out[set_name] = rendered
        return out

    def _render_user(
        self, record: _User, select: tuple[str, ...] | None, principal: _Principal, *, typed: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.type": USER_TYPE} if typed else {}
        if typed and not principal.read_users:
            out["id"] = record.id
            return out
        for name in _USER_DEFAULT if select is None else select:
            prop = _USER_PROPS.get(name.lower())
            if prop is None:
                continue
            if prop.kind == "csa":
                out[prop.name] = self._csa_json(record) if principal.read_attributes else None
            else:
                out[prop.name] = prop.get(record)
        return out

    def _context(self, entity_set: str, select: tuple[str, ...] | None, suffix: str = "") -> str:
        selected = f"({','.join(select)})" if select else ""
        return f"{self.url}/$metadata#{entity_set}{selected}{suffix}"

    def _list_users(self, request: Request) -> Response:
        principal = self._require(request, "read_users")
        options = _options(request, _KNOWN_OPTIONS)
        select = _resolve_select(options.select, _USER_PROPS, "user")
        engine = self._engine(options, _USER_PROPS, "user")
        self._check_advanced(request, options, engine)
        with self.lock:
            users = self._ordered(self._matching_users(engine), options.orderby, _USER_PROPS, "user")
            return self._page(
                request,
                options,
                users,
                lambda u: self._render_user(u, select, principal),
                context=self._context("users", select),
                resource_units=self._resource_units(2, options),
            )

    def _get_user(self, request: Request, key: str) -> Response:
        principal = self._require(request, "read_users")
        return self._user_entity(request, principal, key)

    def _user_entity(self, request: Request, principal: _Principal, key: str) -> Response:
        options = _options(request, {"$select"})
        select = _resolve_select(options.select, _USER_PROPS, "user")
        with self.lock:
            record = self._find_user(key)
            if record is None:
                raise _not_found(
                    f"Resource '{key}' does not exist or one of its queried reference-property objects are not present."
                )
            body = {"@odata.context": self._context("users", select, "/$entity")}
            body.update(self._render_user(record, select, principal))
        return _ok(body, 1)

    def _get_me(self, request: Request) -> Response:
        principal = self._principal(request)
        if principal.user is None:
            raise _bad_request("/me request is only valid with delegated authentication flow.")
        return self._user_entity(request, principal, principal.user)

    # -- PATCH /users/{id} -----------------------------------------------------------------------------------------

    def _patch_user(self, request: Request, key: str) -> Response:
        principal = self._principal(request)
        quota = self.write_quota
        if quota is not None:
            wait = quota.take()
            if wait > 0:
                with self.lock:
                    self._throttled_count += 1
                retry = str(math.ceil(wait)) if self._retry_after == "integer" else f"{wait:.3f}"
                raise GraphError(
                    429,
                    "TooManyRequests",
                    "Too many write requests. Please retry after a while.",
                    {
                        "Retry-After": retry,
                        "x-ms-throttle-scope": f"Tenant_Application/ReadWrite/{self.tenant_id}/{principal.app_id}",
                        "x-ms-throttle-information": "WriteLimitExceeded",
                    },
                )
        if not principal.write_attributes:
            raise GraphError(403, "Authorization_RequestDenied", INSUFFICIENT)
        if not _is_json_content_type(request.header("content-type")):
            raise _bad_request("Write requests must carry Content-Type: application/json.")
        payload = _parsed_body(request)
        if not isinstance(payload, dict):
            raise _bad_request(
                "Unable to read JSON request payload. Please ensure Content-Type header is set and "
                "payload is of valid JSON format."
            )
        with self.lock:
            record = self._find_user(key)
            if record is None:
                raise _not_found(
                    f"Resource '{key}' does not exist or one of its queried reference-property objects are not present."
                )
            changes = self._validate_patch(payload)
            self._apply_csa(record, changes)
            self._write_count += 1
        headers = {"x-ms-resource-unit": "1"}
        if quota is not None:
            used = 1 - quota.available / quota.writes
            if used >= 0.8 and self.throttle_header:
                headers["x-ms-throttle-limit-percentage"] = f"{used:.2f}"
        return Response.empty(204, headers)

    def _validate_patch(self, payload: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
        changes: list[tuple[str, str, Any]] = []
        for key, value in payload.items():
            if key == "@odata.type":
                if not isinstance(value, str) or value.lower() != USER_TYPE.lower():
                    raise _bad_request(f"Invalid @odata.type '{value}' for a user: expected '{USER_TYPE}'.")
            elif key == "customSecurityAttributes":
                if not isinstance(value, dict):
                    raise _bad_request("customSecurityAttributes must be an object of attribute sets.")
                for set_name, set_value in value.items():
                    changes.extend(self._validate_set(set_name, set_value))
            elif key.lower() in _USER_PROPS:
                raise _bad_request(
                    f"The emulator only updates customSecurityAttributes; property '{key}' cannot be changed here.",
                    "Request_BadRequest",
                )
            else:
                raise _bad_request(
                    f"Property '{key}' does not exist on type 'microsoft.graph.user'.", "Request_BadRequest"
                )
        return changes

    def _validate_set(self, set_name: str, set_value: Any) -> list[tuple[str, str, Any]]:
        if set_name not in self._sets:
            hint = next(
                (
                    f" (did you mean '{s}'? names are case-sensitive)"
                    for s in self._sets
                    if s.lower() == set_name.lower()
                ),
                "",
            )
            raise _bad_request(f"Custom security attribute set '{set_name}' is not defined{hint}.")
        if not isinstance(set_value, dict):
            raise _bad_request(f"Custom security attribute set '{set_name}' must be an object.")
        odata_type = set_value.get("@odata.type")
        if odata_type not in CSA_WRITE_TYPES:
            raise _bad_request(
                f"Custom security attribute set '{set_name}' needs \"@odata.type\": "
                '"#Microsoft.DirectoryServices.CustomSecurityAttributeValue".'
            )
        annotations = {
            k.removesuffix("@odata.type"): v
            for k, v in set_value.items()
            if k.endswith("@odata.type") and k != "@odata.type"
        }
        changes = []
        for name, value in set_value.items():
            if name.endswith("@odata.type"):
                continue
            definition = self._definitions.get(f"{set_name}_{name}")
            if definition is None or definition.attribute_set != set_name:
                hint = next(
                    (
                        f" (did you mean '{d.name}'? names are case-sensitive)"
                        for d in self._definitions.values()
                        if d.attribute_set == set_name and d.name.lower() == name.lower()
                    ),
                    "",
                )
                raise _bad_request(
                    f"Custom security attribute '{name}' is not defined in attribute set '{set_name}'{hint}."
                )
            changes.append((set_name, name, self._validate_value(definition, value, annotations.get(name))))
        return changes

    @staticmethod
    def _validate_value(definition: _Definition, value: Any, annotation: Any) -> Any:
        label = f"'{definition.attribute_set}_{definition.name}'"
        wire = {"String": "String", "Integer": "Int32", "Boolean": "Boolean"}[definition.type]
        expected = f"#Collection({wire})" if definition.is_collection else f"#{wire}"
        needs_annotation = definition.is_collection or definition.type == "Integer"
        if annotation is not None and annotation != expected:
            raise _bad_request(
                f"Invalid @odata.type '{annotation}' for custom security attribute {label}: expected '{expected}'."
            )
        if value is None:
            return None
        if definition.status != "Available":
            raise _bad_request(f"Custom security attribute {label} is deprecated and cannot be assigned.")
        if needs_annotation and annotation is None and value != []:
            raise _bad_request(f'Custom security attribute {label} needs "{definition.name}@odata.type": "{expected}".')
        values = value if definition.is_collection else [value]
        if definition.is_collection and not isinstance(value, list):
            raise _bad_request(f"Custom security attribute {label} is multi-valued: send a JSON array.")
        if len(values) > MAX_CSA_COLLECTION:
            raise _bad_request(f"Custom security attribute {label} takes at most {MAX_CSA_COLLECTION} values.")
        for item in values:
            if definition.type == "String":
                if not isinstance(item, str):
                    raise _bad_request(f"Custom security attribute {label} expects a String value.")
                if len(item) > MAX_CSA_VALUE:
                    raise _bad_request(
                        f"The value of custom security attribute {label} is {len(item)} characters "
                        f"long; the maximum is {MAX_CSA_VALUE}."
                    )
            elif definition.type == "Integer":
                if not isinstance(item, int) or isinstance(item, bool):
                    raise _bad_request(f"Custom security attribute {label} expects an Int32 value.")
            elif not isinstance(item, bool):
                raise _bad_request(f"Custom security attribute {label} expects a Boolean value.")
            if definition.use_predefined_values_only and item not in definition.allowed_values:
                raise _bad_request(
                    f"The value '{item}' is not one of the predefined values of custom security attribute {label}."
                )
        return value

    # -- groups ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _render_group(group: _Group, select: tuple[str, ...] | None, *, typed: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.type": GROUP_TYPE} if typed else {}
        for name in _GROUP_DEFAULT if select is None else select:
            prop = _GROUP_PROPS.get(name.lower())
            if prop is not None:
                out[prop.name] = prop.get(group)
        return out

    def _list_groups(self, request: Request) -> Response:
        self._require(request, "read_groups")
        options = _options(request, _KNOWN_OPTIONS)
        select = _resolve_select(options.select, _GROUP_PROPS, "group")
        engine = self._engine(options, _GROUP_PROPS, "group")
        self._check_advanced(request, options, engine)
        with self.lock:
            groups: list[_Group] = self._group_order
            if engine is not None:
                node = engine.node
                if (
                    isinstance(node, Comparison)
                    and node.op == "eq"
                    and node.path[0].lower() == "displayname"
                    and isinstance(node.value, str)
                ):
                    groups = list(self._groups_by_name.get(node.value.lower(), ()))
                else:
                    groups = [g for g in groups if engine.matches(g)]
            groups = self._ordered(groups, options.orderby, _GROUP_PROPS, "group")
            return self._page(
                request,
                options,
                groups,
                lambda g: self._render_group(g, select),
                context=self._context("groups", select),
                resource_units=self._resource_units(2, options),
            )

    def _require_group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id.lower())
        if group is None:
            raise _not_found(
                f"Resource '{group_id}' does not exist or one of its queried reference-property objects "
                "are not present."
            )
        return group

    def _get_group(self, request: Request, group_id: str) -> Response:
        self._require(request, "read_groups")
        options = _options(request, {"$select"})
        select = _resolve_select(options.select, _GROUP_PROPS, "group")
        with self.lock:
            group = self._require_group(group_id)
            body = {"@odata.context": self._context("groups", select, "/$entity")}
            body.update(self._render_group(group, select))
        return _ok(body, 1)

    def _flatten(self, group: _Group, *, transitive: bool) -> list[_User | _Group]:
        if not transitive:
            return group.members
        cache_key = (group.id.lower(), transitive)
        cached = self._member_cache.get(cache_key)
        if cached is not None and cached[0] == self._membership_version:
            return cached[1]
        seen: set[str] = {group.id.lower()}
        out: list[_User | _Group] = []
        queue = [group]
        while queue:
            current = queue.pop(0)
            for member in current.members:
                key = member.id.lower()
                if key in seen:
                    continue
                seen.add(key)
                out.append(member)
                if isinstance(member, _Group):
                    queue.append(member)
        self._member_cache[cache_key] = (self._membership_version, out)
        return out

    def _list_members(self, request: Request, group_id: str, *, transitive: bool, cast: str | None) -> Response:
        principal = self._require(request, "read_groups")
        options = _options(request, _KNOWN_OPTIONS - {"$orderby"})
        props = _USER_PROPS if cast == "user" else _GROUP_PROPS if cast == "group" else _MEMBER_PROPS
        select = _resolve_select(options.select, props, cast or "directoryObject")
        engine = self._engine(options, props, cast or "directoryObject")
        if engine is not None and not options.advanced:
            raise _unsupported(f"Filtering group members is not supported{_ADVANCED_HINT}.")
        self._check_advanced(request, options, engine)
        with self.lock:
            group = self._require_group(group_id)
            members: Sequence[_User | _Group] = self._flatten(group, transitive=transitive)
            if cast is not None:
                wanted = _User if cast == "user" else _Group
                members = [m for m in members if isinstance(m, wanted)]
            if engine is not None:
                members = [m for m in members if engine.matches(m)]

            def render(member: _User | _Group) -> dict[str, Any]:
                if isinstance(member, _User):
                    return self._render_user(member, select, principal, typed=True)
                return self._render_group(member, select, typed=True)

            entity_set = {"user": "users", "group": "groups"}.get(cast or "", "directoryObjects")
            units = self._resource_units(5 if transitive else 3, options)
            return self._page(
                request, options, members, render, context=self._context(entity_set, select), resource_units=units
            )

    # -- attribute definitions and sets --------------------------------------------------------------------------

    def _list_definitions(self, request: Request) -> Response:
        self._require(request, "read_definitions")
        options = _options(request, _KNOWN_OPTIONS - {"$orderby", "$search"})
        select = _resolve_select(options.select, _DEFINITION_PROPS, "customSecurityAttributeDefinition")
        engine = self._engine(options, _DEFINITION_PROPS, "customSecurityAttributeDefinition")
        self._check_advanced(request, options, engine)
        with self.lock:
            items = [d for d in self._definitions.values() if engine is None or engine.matches(d)]
            return self._page(
                request,
                options,
                items,
                lambda d: _selected(d.to_json(), select),
                context=self._context("directory/customSecurityAttributeDefinitions", select),
                resource_units=1,
            )

    def _get_definition(self, request: Request, definition_id: str) -> Response:
        self._require(request, "read_definitions")
        options = _options(request, {"$select"})
        select = _resolve_select(options.select, _DEFINITION_PROPS, "customSecurityAttributeDefinition")
        with self.lock:
            definition = self._definitions.get(definition_id) or next(
                (d for d in self._definitions.values() if d.id.lower() == definition_id.lower()), None
            )
            if definition is None:
                raise _not_found(
                    f"Resource '{definition_id}' does not exist or one of its queried reference-property "
                    "objects are not present."
                )
            body = {"@odata.context": self._context("directory/customSecurityAttributeDefinitions", select, "/$entity")}
            body.update(_selected(definition.to_json(), select))
        return _ok(body, 1)

    def _list_sets(self, request: Request) -> Response:
        self._require(request, "read_definitions")
        options = _options(request, _KNOWN_OPTIONS - {"$orderby", "$search"})
        select = _resolve_select(options.select, _SET_PROPS, "attributeSet")
        engine = self._engine(options, _SET_PROPS, "attributeSet")
        self._check_advanced(request, options, engine)
        with self.lock:
            items = [s for s in self._sets.values() if engine is None or engine.matches(s)]
            return self._page(
                request,
                options,
                items,
                lambda s: _selected(s.to_json(), select),
                context=self._context("directory/attributeSets", select),
                resource_units=1,
            )

    def _get_set(self, request: Request, set_id: str) -> Response:
        self._require(request, "read_definitions")
        options = _options(request, {"$select"})
        select = _resolve_select(options.select, _SET_PROPS, "attributeSet")
        with self.lock:
            attribute_set = self._sets.get(set_id) or next(
                (s for s in self._sets.values() if s.id.lower() == set_id.lower()), None
            )
            if attribute_set is None:
                raise _not_found(
                    f"Resource '{set_id}' does not exist or one of its queried reference-property "
                    "objects are not present."
                )
            body = {"@odata.context": self._context("directory/attributeSets", select, "/$entity")}
            body.update(_selected(attribute_set.to_json(), select))
        return _ok(body, 1)

    # -- JSON batching -----------------------------------------------------------------------------------------------

    def _batch(self, request: Request) -> Response:
        self._principal(request)
        if not _is_json_content_type(request.header("content-type")):
            raise _bad_request("Write requests must carry Content-Type: application/json.")
        items = _validate_batch(_parsed_body(request))
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
            if not progressed:  # pragma: no cover - _validate_batch rejects cycles
                break
        responses = [outcomes[item["id"]] for item in items]
        if self.shuffle_batch:
            with self.lock:
                self._shuffle_rng.shuffle(responses)
        return _ok({"responses": responses})

    def _failed_dependency(self, request: Request, item_id: str, failed: str) -> dict[str, Any]:
        response = self._error(
            request,
            GraphError(424, "FailedDependency", f"Request {item_id} depends on request {failed}, which failed."),
        )
        return _item_response(item_id, response)

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
            inner: Request = _ItemRequest(item["method"], path, query, headers, _json_bytes(item["body"]), item["body"])
        else:
            inner = Request(item["method"], path, query, headers, b"")
        endpoint, handler = self.resolve(inner)
        if "body" in item and "content-type" not in headers:
            message = f"Write request id : {item['id']} does not contain Content-Type header or body."
            response = self._error(inner, _bad_request(message))
            self.record(inner, f"batch-item:{endpoint}", response.status)
            return _item_response(item["id"], response)
        if endpoint == "batch":
            response = self._error(inner, _bad_request("Nested $batch requests are not supported."))
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
        return _item_response(item["id"], response)


@dataclass(frozen=True)
class _ItemRequest(Request):
    """A ``$batch`` item: its JSON body is already parsed (the bytes are kept for the request log)."""

    parsed: Any = None


def _parsed_body(request: Request) -> Any:
    """The JSON body, or ``None`` when it does not parse."""
    if isinstance(request, _ItemRequest):
        return request.parsed
    try:
        return request.json()
    except (ValueError, UnicodeDecodeError):
        return None


_ID_RNG: Final = random.Random()  # request ids need no seed: they are unique, not reproducible


def _request_id() -> str:
    """A random uuid4 string, cheaper than :func:`uuid.uuid4` (no system call per response)."""
    h = f"{_ID_RNG.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _selected(payload: dict[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
    if select is None:
        return payload
    return {name: payload.get(name) for name in select}


def _item_response(item_id: str, response: Response) -> dict[str, Any]:
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


def _validate_batch(payload: Any) -> list[dict[str, Any]]:
    """The batch items, normalised (``method`` upper-cased, ``depends`` a list); raises 400 for a malformed batch."""
    if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
        raise _bad_request('Invalid batch payload format: expected {"requests": [...]}.')
    raw_items: list[Any] = payload["requests"]
    if not raw_items:
        raise _bad_request("Invalid batch payload format: the batch has no requests.")
    if len(raw_items) > MAX_BATCH:
        raise _bad_request(f"Number of requests in the batch ({len(raw_items)}) exceeds the limit of {MAX_BATCH}.")
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in raw_items:
        if not isinstance(raw, dict):
            raise _bad_request("Invalid batch payload format: every request must be an object.")
        item_id, method, url = raw.get("id"), raw.get("method"), raw.get("url")
        if not isinstance(item_id, str) or not item_id:
            raise _bad_request("Invalid batch payload format: every request needs a string 'id'.")
        if item_id in seen:
            raise _bad_request(f"Batch request id '{item_id}' is used more than once: ids must be unique.")
        seen.add(item_id)
        if not isinstance(method, str) or not method or not isinstance(url, str) or not url:
            raise _bad_request(f"Invalid batch payload format: request '{item_id}' needs 'method' and 'url'.")
        headers = raw.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise _bad_request(f"Invalid batch payload format: 'headers' of request '{item_id}' must be an object.")
        depends: list[str] = []
        for key in ("dependsOn", "depends_on"):
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise _bad_request(f"Invalid batch payload format: '{key}' of request '{item_id}' must list ids.")
            depends.extend(value)
        items.append({**raw, "id": item_id, "method": method.upper(), "url": url, "depends": depends})
    graph = {item["id"]: item["depends"] for item in items}
    for item in items:
        for dep in item["depends"]:
            if dep not in graph:
                raise _bad_request(f"Request '{item['id']}' depends on unknown request id '{dep}'.")
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
                raise _bad_request(f"The dependsOn chain of request '{current}' contains a cycle.")
            if dep not in state:
                state[dep] = 1
                stack.append((dep, iter(graph[dep])))

    for node in graph:
        if node not in state:
            visit(node)
