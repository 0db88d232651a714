import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defguard_entra._durations import MAX_TOKEN_LIFETIME, format_for_defguard, parse_lifetime
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
        ("1M", 2630016),
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
