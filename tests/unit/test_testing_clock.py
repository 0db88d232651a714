"""``defguard_entra.testing.Clock``: the shared "now" of tests, emulators and the tool."""

from __future__ import annotations

import datetime as dt

import pytest

from defguard_entra.testing import Clock

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_starts_where_told_and_keeps_running() -> None:
    clock = Clock(T0)
    first, second = clock(), clock()
    assert T0 <= first <= second < T0 + dt.timedelta(seconds=5)
    assert first.utcoffset() == dt.timedelta(0)


def test_advance_by_a_delta_or_units() -> None:
    clock = Clock(T0)
    now = clock.advance(dt.timedelta(hours=1), days=1, minutes=30)
    assert dt.timedelta(days=1, hours=1, minutes=30) <= now - T0 < dt.timedelta(days=1, hours=1, minutes=30, seconds=5)
    assert clock.offset == dt.timedelta(days=1, hours=1, minutes=30)
    assert clock() >= now


def test_other_offsets_become_utc_and_naive_or_backwards_is_refused() -> None:
    assert Clock(dt.datetime(2026, 1, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))))().tzinfo is dt.UTC
    assert Clock()() - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=5)
    with pytest.raises(ValueError, match="timezone-aware"):
        Clock(dt.datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="only moves forward"):
        Clock(T0).advance(hours=-1)
