"""What Graph puts on the wire: content types, limits, the OData error (:class:`GraphError`) and JSON responses.

Sources: Microsoft Graph's error page (https://learn.microsoft.com/graph/errors), its throttling page
(https://learn.microsoft.com/graph/throttling) and the JSON batching page (https://learn.microsoft.com/graph/json-batching).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any, Final

from defguard_entra.testing._server import Response

__all__ = [
    "ADVANCED_HINT",
    "CSA_READ_TYPE",
    "CSA_WRITE_TYPES",
    "ERROR_JSON",
    "FAULTS",
    "GROUP_TYPE",
    "INSUFFICIENT",
    "MAX_ADVANCED_URL",
    "MAX_BATCH",
    "MAX_CSA_COLLECTION",
    "MAX_CSA_VALUE",
    "MAX_EQUALITY_CLAUSES",
    "MAX_TOP",
    "ODATA_JSON",
    "RETRY_AFTER_MODES",
    "USER_TYPE",
    "WWW_AUTHENTICATE",
    "GraphError",
    "RetryAfter",
    "bad_request",
    "is_json_content_type",
    "json_bytes",
    "new_request_id",
    "no_resource",
    "not_found",
    "ok",
    "unsupported",
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
FAULTS: Final[Mapping[int, tuple[str, str]]] = {
    429: ("TooManyRequests", "Please retry again later."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The gateway did not receive a response from the service in time."),
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "The gateway received an invalid response."),
}
ADVANCED_HINT: Final = " (needs the ConsistencyLevel: eventual header and $count=true)"

#: ``GraphEmulator(retry_after=…)``: a mode of :data:`RETRY_AFTER_MODES`, a number of seconds, or ``None`` (absent).
RetryAfter = str | float | None


# -- errors ------------------------------------------------------------------------------------------------


class GraphError(Exception):
    """Raised by a handler: becomes an OData error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def unsupported(message: str) -> GraphError:
    return GraphError(400, "Request_UnsupportedQuery", message)


def not_found(message: str) -> GraphError:
    return GraphError(404, "Request_ResourceNotFound", message)


def no_resource(key: str) -> GraphError:
    """The 404 for a key that names no user, group, attribute definition or attribute set."""
    return not_found(
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present."
    )


# -- responses -------------------------------------------------------------------------------------------------


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def ok(payload: Any, resource_units: int | None = None, status: int = 200) -> Response:
    headers = {} if resource_units is None else {"x-ms-resource-unit": str(resource_units)}
    return Response(status, json_bytes(payload), ODATA_JSON, headers)


def is_json_content_type(value: str | None) -> bool:
    return value is not None and value.split(";", 1)[0].strip().lower() == "application/json"


_ID_RNG: Final = random.Random()  # request ids need no seed: they are unique, not reproducible


def new_request_id() -> str:
    """A random uuid4 string, cheaper than :func:`uuid.uuid4` (no system call per response)."""
    h = f"{_ID_RNG.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
