"""The pure reading of activity-log rows and pages (``_defguard_activity``), for the odd rows an emulator run does
not produce: other events, missing fields, offsets, a ``metadata`` a future server might send."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from defguard_entra import (
    ActivityKind,
    ConfigurationError,
    DefguardAPIError,
    DefguardAuthError,
    UnexpectedResponseError,
)
from defguard_entra._defguard_activity import (
    activity_query,
    activity_unavailable,
    parse_utc_timestamp,
    read_activity_log,
    read_activity_page,
    read_activity_row,
)

URL = "https://defguard.example.com/api/v1/activity_log"


def _row(**fields: Any) -> dict[str, Any]:
    row = {
        "id": 7,
        "timestamp": "2026-01-02T03:04:05.123456",
        "user_id": 1,
        "username": "admin",
        "location": None,
        "ip": "10.0.0.1/32",
        "event": "enrollment_token_added",
        "module": "enrollment",
        "device": "Firefox",
        "description": "Added enrollment token for user alice",
    }
    row.update(fields)
    return row


def test_the_subject_of_a_token_row_is_in_its_description() -> None:
    event = read_activity_row(_row())
    assert event is not None
    assert (event.kind, event.actor, event.subject, event.id) == (ActivityKind.TOKEN_ADDED, "admin", "alice", 7)
    assert event.at == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    desktop = read_activity_row(
        _row(event="client_configuration_token_added", description="Added client configuration token for user b.o-b")
    )
    assert desktop is not None
    assert (desktop.kind, desktop.subject) == (ActivityKind.TOKEN_ADDED, "b.o-b")


def test_metadata_wins_and_an_unreadable_subject_is_none() -> None:
    with_metadata = read_activity_row(_row(metadata={"user": {"username": "zoe"}}))
    assert with_metadata is not None
    assert with_metadata.subject == "zoe"
    for description in (None, "Someone did something", 42):
        event = read_activity_row(_row(description=description))
        assert event is not None
        assert event.subject is None
    other = read_activity_row(_row(event="user_login", description="Added enrollment token for user mallory"))
    assert other is not None
    assert (other.kind, other.subject) == (ActivityKind.OTHER, None)


def test_enrollment_rows_are_the_members_own() -> None:
    event = read_activity_row(_row(event="enrollment_started", username="alice", description="User started"))
    assert event is not None
    assert (event.kind, event.actor, event.subject) == (ActivityKind.ENROLLMENT_STARTED, "alice", "alice")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2026-01-02T03:04:05.5", dt.datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)),
        ("2026-01-02T03:04:05.123456789", dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)),
        ("2026-01-02T03:04:05Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2026-01-02T05:04:05+02:00", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("yesterday", None),
        (None, None),
        (1700000000, None),
    ],
)
def test_timestamps_are_utc(text: Any, expected: dt.datetime | None) -> None:
    parsed = parse_utc_timestamp(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == dt.timedelta(0)


def test_rows_without_a_timestamp_are_left_out_and_a_page_of_another_shape_is_refused() -> None:
    page = read_activity_page({"data": [_row(timestamp=None), _row(), "junk"], "pagination": {"next_page": 2}}, URL)
    assert [e.id for e in page.events] == [7]
    assert (page.next_page, page.total_pages) == (2, None)
    with pytest.raises(UnexpectedResponseError, match="no data list"):
        read_activity_page([_row()], URL)


def test_reading_stops_at_a_page_that_does_not_move_on() -> None:
    calls: list[int] = []

    def fetch(number: int) -> Any:
        calls.append(number)
        return {"data": [_row(id=number)], "pagination": {"next_page": 1}}  # a server pointing back

    log = read_activity_log(fetch, URL, cap=10)
    assert (log.available, calls) == (True, [1])


def test_the_query() -> None:
    since = dt.datetime(2026, 1, 2, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    query = activity_query(since, [ActivityKind.ENROLLMENT_STARTED])
    assert query == [
        ("from", "2026-01-02T03:00:00.000000Z"),
        ("sort_by", "timestamp"),
        ("sort_order", "desc"),
        ("per_page", "100"),
        ("event", "enrollment_started"),
    ]
    assert not any(key == "event" for key, _ in activity_query(since, [ActivityKind.OTHER, ActivityKind.TOKEN_ADDED]))
    with pytest.raises(ConfigurationError):
        activity_query(dt.datetime(2026, 1, 2), None)  # noqa: DTZ001 - the point of the test


def test_which_refusals_mean_not_available() -> None:
    refused = activity_unavailable(DefguardAuthError("GET", URL, 401, "Session is required", hint="license gate"))
    assert refused is not None
    assert refused.problem == (
        "the activity log cannot be read: Defguard refused the API token (401 Session is required): license gate"
    )
    assert activity_unavailable(DefguardAPIError("GET", URL, 404, "Not Found")) is not None
    assert activity_unavailable(DefguardAPIError("GET", URL, 500, "Internal Server Error")) is None
    assert activity_unavailable(DefguardAPIError("GET", URL, 502, "Bad Gateway")) is None
