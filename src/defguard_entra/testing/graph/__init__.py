"""A Microsoft Graph emulator: the slice of ``graph.microsoft.com/v1.0`` that defguard-entra uses.

Users (lookup by mail, UPN and ``otherMails``, the ``in (…)`` form), groups and their (transitive) members, custom
security attribute definitions, attribute sets and assignments (``PATCH /users/{id}``), ``GET /me``, JSON batching,
paging with ``@odata.nextLink`` (optionally with empty pages), OData error envelopes, bearer-token principals with
permissions, a write quota and seeded fault injection. Standard library only. The contracts come from Microsoft's
Graph documentation (https://learn.microsoft.com/graph/overview); each module names the pages it follows.

Deliberate choices where the service is not fully specified (also in tests/emulators/test_emulator_graph.py):

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

The modules, in the order they build on each other: :mod:`._wire` (constants, :class:`GraphError`, JSON responses),
:mod:`._directory` (the records and their property tables), :mod:`._filter` (the ``$filter`` grammar and engine),
:mod:`._query` (the other query options), :mod:`._batch` (``$batch`` payloads), :mod:`._tenant` (the state and the
seeding API), :mod:`._reads` and :mod:`._writes` (the handlers), :mod:`._emulator` (:class:`GraphEmulator`: routing,
the envelope, faults and ``$batch``).
"""

from __future__ import annotations

from ._emulator import GraphEmulator
from ._filter import FilterSyntaxError, parse_filter, parse_literal
from ._writes import WriteQuota

__all__ = [
    "FilterSyntaxError",
    "GraphEmulator",
    "WriteQuota",
    "parse_filter",
    "parse_literal",
]
