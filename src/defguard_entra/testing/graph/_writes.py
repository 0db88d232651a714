"""``PATCH /users/{id}``: custom security attribute assignments, their validation, and the write quota.

Sources: https://learn.microsoft.com/graph/api/user-update, the custom security attributes overview
(https://learn.microsoft.com/graph/custom-security-attributes-overview) and the identity and access limits in
https://learn.microsoft.com/graph/throttling-limits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from defguard_entra.testing._server import Request, Response

from ._batch import parsed_body
from ._directory import USER_PROPS, Definition
from ._tenant import Tenant
from ._wire import (
    CSA_WRITE_TYPES,
    INSUFFICIENT,
    MAX_CSA_COLLECTION,
    MAX_CSA_VALUE,
    USER_TYPE,
    GraphError,
    RetryAfter,
    bad_request,
    is_json_content_type,
    no_resource,
)

__all__ = ["PatchHandler", "WriteQuota"]


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


# -- PATCH /users/{id} -----------------------------------------------------------------------------------------


class PatchHandler(Tenant):
    """The write endpoint: ``PATCH /users/{id}`` (``customSecurityAttributes`` only)."""

    # set by GraphEmulator.__init__
    write_quota: WriteQuota | None
    throttle_header: bool
    _retry_after: RetryAfter
    _write_count: int
    _throttled_count: int

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
        if not is_json_content_type(request.header("content-type")):
            raise bad_request("Write requests must carry Content-Type: application/json.")
        payload = parsed_body(request)
        if not isinstance(payload, dict):
            raise bad_request(
                "Unable to read JSON request payload. Please ensure Content-Type header is set and "
                "payload is of valid JSON format."
            )
        with self.lock:
            record = self._find_user(key)
            if record is None:
                raise no_resource(key)
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
                    raise bad_request(f"Invalid @odata.type '{value}' for a user: expected '{USER_TYPE}'.")
            elif key == "customSecurityAttributes":
                if not isinstance(value, dict):
                    raise bad_request("customSecurityAttributes must be an object of attribute sets.")
                for set_name, set_value in value.items():
                    changes.extend(self._validate_set(set_name, set_value))
            elif key.lower() in USER_PROPS:
                raise bad_request(
                    f"The emulator only updates customSecurityAttributes; property '{key}' cannot be changed here.",
                    "Request_BadRequest",
                )
            else:
                raise bad_request(
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
            raise bad_request(f"Custom security attribute set '{set_name}' is not defined{hint}.")
        if not isinstance(set_value, dict):
            raise bad_request(f"Custom security attribute set '{set_name}' must be an object.")
        odata_type = set_value.get("@odata.type")
        if odata_type not in CSA_WRITE_TYPES:
            raise bad_request(
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
                raise bad_request(
                    f"Custom security attribute '{name}' is not defined in attribute set '{set_name}'{hint}."
                )
            changes.append((set_name, name, self._validate_value(definition, value, annotations.get(name))))
        return changes

    @staticmethod
    def _validate_value(definition: Definition, value: Any, annotation: Any) -> Any:
        label = f"'{definition.attribute_set}_{definition.name}'"
        wire = {"String": "String", "Integer": "Int32", "Boolean": "Boolean"}[definition.type]
        expected = f"#Collection({wire})" if definition.is_collection else f"#{wire}"
        needs_annotation = definition.is_collection or definition.type == "Integer"
        if annotation is not None and annotation != expected:
            raise bad_request(
                f"Invalid @odata.type '{annotation}' for custom security attribute {label}: expected '{expected}'."
            )
        if value is None:
            return None
        if definition.status != "Available":
            raise bad_request(f"Custom security attribute {label} is deprecated and cannot be assigned.")
        if needs_annotation and annotation is None and value != []:
            raise bad_request(f'Custom security attribute {label} needs "{definition.name}@odata.type": "{expected}".')
        values = value if definition.is_collection else [value]
        if definition.is_collection and not isinstance(value, list):
            raise bad_request(f"Custom security attribute {label} is multi-valued: send a JSON array.")
        if len(values) > MAX_CSA_COLLECTION:
            raise bad_request(f"Custom security attribute {label} takes at most {MAX_CSA_COLLECTION} values.")
        for item in values:
            if definition.type == "String":
                if not isinstance(item, str):
                    raise bad_request(f"Custom security attribute {label} expects a String value.")
                if len(item) > MAX_CSA_VALUE:
                    raise bad_request(
                        f"The value of custom security attribute {label} is {len(item)} characters "
                        f"long; the maximum is {MAX_CSA_VALUE}."
                    )
            elif definition.type == "Integer":
                if not isinstance(item, int) or isinstance(item, bool):
                    raise bad_request(f"Custom security attribute {label} expects an Int32 value.")
            elif not isinstance(item, bool):
                raise bad_request(f"Custom security attribute {label} expects a Boolean value.")
            if definition.use_predefined_values_only and item not in definition.allowed_values:
                raise bad_request(
                    f"The value '{item}' is not one of the predefined values of custom security attribute {label}."
                )
        return value
