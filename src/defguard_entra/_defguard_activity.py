"""Defguard's activity log (``GET /api/v1/activity_log``, both API lines) read into :class:`~.models.ActivityLog`;
no HTTP library here (:mod:`._defguard` sends the requests).

What each line serves, and where each fact comes from, is ``docs/reference/defguard-activity-log.md``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .exceptions import ConfigurationError, DefguardAPIError, DefguardAuthError, UnexpectedResponseError
from .models import ActivityEvent, ActivityKind, ActivityLog

__all__ = [
    "ACTIVITY_EVENTS",
    "ActivityPage",
    "activity_query",
    "activity_unavailable",
    "parse_utc_timestamp",
    "read_activity_log",
    "read_activity_page",
    "read_activity_row",
]

#: Defguard's event names (``EventType``, serialised ``snake_case``; v1.6.6 and v2.0.1
#: ``crates/defguard_core/src/db/models/activity_log/mod.rs``) → what they say about a member's tokens. Both token
#: endpoints count as a token minted: ``start_enrollment`` logs ``enrollment_token_added``, ``start_desktop``
#: ``client_configuration_token_added`` (``handlers/user.rs``).
ACTIVITY_EVENTS: Mapping[str, ActivityKind] = {
    "enrollment_token_added": ActivityKind.TOKEN_ADDED,
    "client_configuration_token_added": ActivityKind.TOKEN_ADDED,
    "enrollment_started": ActivityKind.ENROLLMENT_STARTED,
    "enrollment_completed": ActivityKind.ENROLLMENT_COMPLETED,
}
#: The descriptions the event logger writes for the token rows, whose ``{user}`` is the subject's username
#: (``crates/defguard_event_logger/src/description.rs``, v1.6.6 and v2.0.1; ``User``'s ``Display`` is its username).
_SUBJECT_IN_DESCRIPTION = {
    "enrollment_token_added": re.compile(r"Added enrollment token for user (\S+)"),
    "client_configuration_token_added": re.compile(r"Added client configuration token for user (\S+)"),
}
#: Rows the member writes under their own name (the enrollment service's context is the token's user).
_ACTOR_IS_SUBJECT = frozenset({"enrollment_started", "enrollment_completed", "enrollment_device_added"})


@attrs.frozen
class ActivityPage:
    """One page of ``GET /api/v1/activity_log``: its rows, the next page (``None``: last) and the page count."""

    events: tuple[ActivityEvent, ...]
    next_page: int | None
    total_pages: int | None


def _activity_events_for(kinds: Iterable[ActivityKind] | None) -> list[str] | None:
    """The ``event`` filter for ``kinds`` (``None``: no filter, when every event or ``OTHER`` is asked for)."""
    if kinds is None:
        return None
    wanted = set(kinds)
    if ActivityKind.OTHER in wanted:
        return None
    return sorted(name for name, kind in ACTIVITY_EVENTS.items() if kind in wanted)


def _format_since(moment: dt.datetime) -> str:
    """``from`` as both lines parse it (``chrono::DateTime<Utc>``: RFC 3339), in UTC with a ``Z``."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def activity_query(since: dt.datetime, kinds: Iterable[ActivityKind] | None) -> list[tuple[str, str]]:
    """The query of ``GET /api/v1/activity_log`` (both lines: ``handlers/activity_log.rs``): rows at or after
    ``since``, of the events that make ``kinds``, newest first, 100 a page (2.x; 1.6 ignores ``per_page`` and sends
    50). Newest first, so that rows written while the pages are read only repeat a row (dropped by id), and a page
    cap keeps the newest rows. A naive ``since`` raises :class:`ConfigurationError` before any request."""
    if since.tzinfo is None or since.utcoffset() is None:
        raise ConfigurationError(
            "activity_log(since=...) needs a timezone-aware datetime, e.g. dt.datetime.now(dt.UTC)"
        )
    query = [("from", _format_since(since)), ("sort_by", "timestamp"), ("sort_order", "desc"), ("per_page", "100")]
    query.extend(("event", name) for name in _activity_events_for(kinds) or ())
    return query


def read_activity_log(
    fetch: Callable[[int], Any], url: str, cap: int, kinds: Iterable[ActivityKind] | None = None
) -> ActivityLog:
    """Every page of the activity log (``fetch(page)``), at most ``cap`` pages; the events oldest first.

    More pages than ``cap`` → ``available=False`` with the newest rows read and the problem said."""
    wanted = None if kinds is None else frozenset(kinds)
    seen: set[int] = set()
    events: list[ActivityEvent] = []
    number = 1
    while True:
        page = read_activity_page(fetch(number), url)
        for event in page.events:
            if event.id is not None:
                if event.id in seen:
                    continue
                seen.add(event.id)
            if wanted is None or event.kind in wanted:
                events.append(event)
        if page.next_page is None or page.next_page <= number or not page.events:
            break
        if number >= cap:
            events.sort(key=_by_time)
            total = f" of {page.total_pages}" if page.total_pages else ""
            return ActivityLog(
                tuple(events),
                available=False,
                problem=f"Defguard's activity log has more rows than this reads ({cap} pages{total}): only the "
                f"{len(events)} newest were read, so older token events cannot be seen",
            )
        number = page.next_page
    events.sort(key=_by_time)
    return ActivityLog(tuple(events))


def _by_time(event: ActivityEvent) -> tuple[dt.datetime, int]:
    return event.at, event.id if event.id is not None else -1


def activity_unavailable(exc: DefguardAPIError) -> ActivityLog | None:
    """The answers that mean "this server or token cannot read the log" → an unavailable log saying why; ``None``
    for a real failure (5xx after the retries, anything else), which the caller raises."""
    if isinstance(exc, UnexpectedResponseError):
        why = f"the answer is not the activity log ({exc.message})"
        if "html" in exc.message:  # an unknown GET path: the web UI's catch-all page
            why = "this Defguard serves no activity log (its web UI answered: a version without one?)"
    elif isinstance(exc, DefguardAuthError):
        why = f"Defguard refused the API token ({exc.status} {exc.message})"
        if exc.hint:
            why += f": {exc.hint}"
    elif exc.status in {400, 404, 405}:
        why = f"Defguard does not serve the activity log as asked ({exc.status} {exc.message})"
    else:
        return None
    return ActivityLog(available=False, problem=f"the activity log cannot be read: {why}")


def read_activity_page(payload: Any, url: str) -> ActivityPage:
    """A page of the activity log (``{"data": [...], "pagination": {...}}`` on both lines) → its events.

    Rows that do not parse (no timestamp) are left out; an answer of another shape raises
    :class:`UnexpectedResponseError`."""
    rows = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(rows, list):
        raise UnexpectedResponseError("GET", url, 200, "the activity log page has no data list")
    events = tuple(event for event in (read_activity_row(row) for row in rows) if event is not None)
    meta = payload.get("pagination")
    meta = meta if isinstance(meta, Mapping) else {}
    next_page = meta.get("next_page")
    total = meta.get("total_pages")
    return ActivityPage(
        events,
        next_page if isinstance(next_page, int) and not isinstance(next_page, bool) else None,
        total if isinstance(total, int) and not isinstance(total, bool) else None,
    )


def read_activity_row(row: Any) -> ActivityEvent | None:
    """One ``ApiActivityLogEvent`` → an event; ``None`` when it has no readable timestamp.

    The API returns no ``metadata`` (the table has it; ``ApiActivityLogEvent`` leaves it out on both lines), so
    the subject of a token row is read from its description; a ``metadata.user.username`` is used when a server
    sends one. Enrollment rows are under the member's own name."""
    if not isinstance(row, Mapping):
        return None
    at = parse_utc_timestamp(row.get("timestamp"))
    if at is None:
        return None
    event = str(row.get("event") or "")
    actor = row.get("username") if isinstance(row.get("username"), str) else None
    return ActivityEvent(
        at=at,
        kind=ACTIVITY_EVENTS.get(event, ActivityKind.OTHER),
        event=event,
        actor=actor,
        subject=_subject(row, event, actor),
        id=row.get("id") if isinstance(row.get("id"), int) else None,
    )


def _subject(row: Mapping[str, Any], event: str, actor: str | None) -> str | None:
    metadata = row.get("metadata")
    user = metadata.get("user") if isinstance(metadata, Mapping) else None
    if isinstance(user, Mapping) and isinstance(user.get("username"), str):
        return str(user["username"])
    if event in _ACTOR_IS_SUBJECT:
        return actor
    pattern = _SUBJECT_IN_DESCRIPTION.get(event)
    description = row.get("description")
    if pattern is not None and isinstance(description, str):
        found = pattern.fullmatch(description.strip())
        if found:
            return found.group(1)
    return None


def parse_utc_timestamp(value: Any) -> dt.datetime | None:
    """A ``NaiveDateTime`` as chrono serialises it (``2026-01-02T03:04:05.123456``, UTC by Defguard's convention:
    ``Utc::now().naive_utc()``) → an aware UTC datetime; an explicit offset is honoured; else ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)
