import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defguard_entra._durations import (
    MAX_TOKEN_LIFETIME,
    MIN_USEFUL_LIFETIME,
    format_for_defguard,
    parse_lifetime,
    short_lifetime_warning,
)
from defguard_entra.exceptions import ConfigurationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("1d", 86400),
        ("2w", 1209600),
        ("90m", 5400),
        ("1.5h", 5400),
        ("1d 12h", 129600),
        ("1d12h", 129600),
        ("2 days", 172800),
        ("1day", 86400),
        ("30s", 30),
        ("1month", 2630016),
        ("2 months", 5260032),
        (" 12h ", 43200),
        ("1500ms", 1),
    ],
)
def test_accepts_what_defguard_accepts(text, seconds):
    assert parse_lifetime(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "   ", "86400", "24H", "1D", "P1D", "-1h", "1.", "h", "1x", "1h30", "1,5h"])
def test_rejects_what_defguard_rejects(text):
    with pytest.raises(ConfigurationError) as info:
        parse_lifetime(text)
    assert "\n" not in str(info.value)


def test_uppercase_unit_hint_names_the_fix():
    with pytest.raises(ConfigurationError, match="did you mean 'h'"):
        parse_lifetime("24H")


@pytest.mark.parametrize("text", ["0", "0s", "500ms"])
def test_zero_lifetime_is_refused(text):
    with pytest.raises(ConfigurationError, match=r"shorter than a second|every number needs a unit"):
        parse_lifetime(text)


def test_upper_bound():
    assert parse_lifetime("366d") == MAX_TOKEN_LIFETIME
    with pytest.raises(ConfigurationError, match="maximum"):
        parse_lifetime("2y")


@given(st.integers(min_value=1, max_value=int(MAX_TOKEN_LIFETIME.total_seconds())))
def test_sent_form_round_trips(seconds):
    lifetime = dt.timedelta(seconds=seconds)
    assert parse_lifetime(format_for_defguard(lifetime)) == lifetime


@pytest.mark.parametrize("text", ["١h", "1٢h", "２h", "1d ٣h", "१h"])
def test_non_ascii_digits_are_refused_with_the_digit_named(text):
    with pytest.raises(ConfigurationError, match=r"ASCII digits 0-9") as info:
        parse_lifetime(text)
    foreign = next(c for c in text if c.isdigit() and not c.isascii())
    assert f"U+{ord(foreign):04X}" in str(info.value)


@pytest.mark.parametrize("text", ["-1h", "-1.5h", " -30m", "- 2d", "-.5h"])
def test_negative_lifetime_says_it_is_negative(text):
    with pytest.raises(ConfigurationError, match="is negative: a token cannot expire before it is issued"):
        parse_lifetime(text)


@pytest.mark.parametrize(("text", "number"), [("1M", "1"), ("15M", "15"), ("1d 2M", "2"), ("1.5 M", "1.5")])
def test_capital_m_is_a_month_and_refused_with_the_minutes_spelling(text, number):
    # humantime (and so Defguard) reads M as a month: we refuse it rather than mint a month-long secret for
    # someone who meant minutes; the spelled-out unit stays accepted
    with pytest.raises(ConfigurationError) as info:
        parse_lifetime(text)
    message = str(info.value)
    assert f"{number}M is a month: did you mean {number}m (minutes)?" in message
    assert f"{number}month" in message
    assert "\n" not in message


def test_the_emulators_humantime_reads_capital_m_as_a_month():
    from defguard_entra.testing.defguard import parse_humantime

    assert parse_humantime("1M") == (2630016, 0)  # the trap the refusal above is for
    assert parse_humantime("1m") == (60, 0)
    assert parse_lifetime("1month") == dt.timedelta(seconds=parse_humantime("1M")[0])


@pytest.mark.parametrize("text", ["1s", "30s", "4m 59s"])
def test_short_lifetime_is_accepted_with_a_warning_giving_the_reason(text):
    lifetime = parse_lifetime(text)
    assert lifetime < MIN_USEFUL_LIFETIME
    warning = short_lifetime_warning(lifetime)
    assert warning is not None
    assert f"{int(lifetime.total_seconds())} s is shorter than 5 minutes" in warning
    assert "destroys the user's previous token" in warning


@pytest.mark.parametrize("text", ["5m", "300s", "24h"])
def test_no_warning_from_the_floor_up(text):
    assert short_lifetime_warning(parse_lifetime(text)) is None
