"""``find_holders``: the real msgraph-sdk stack against the Graph emulator over HTTP, finding every user whose custom
security attribute holds a value (the headers Graph requires, every page, values over the 120-character ``eq``
limit), and ``check_attribute_set`` telling whether the set defines ``EnrollmentTokenExpiresAt``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from azure.core.credentials import AccessToken

from defguard_entra import EntraClient
from defguard_entra.config import GraphSettings
from defguard_entra.exceptions import EntraAPIError
from defguard_entra.testing import Faults, GraphEmulator, Load

URL = "https://enroll.example.com/"
LONG = "https://" + "x" * 130 + ".example.com/"  # over Graph's 120-character eq limit


class Credential:
    """A fixed bearer token, as an ``azure.identity`` credential hands it out."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, 2_000_000_000)


def _client(graph: GraphEmulator, token: str | None = None) -> EntraClient:
    return EntraClient(GraphSettings(graph_url=graph.url), Credential(token or graph.admin_token))


def _holder(graph: GraphEmulator, upn: str, url: str | None, **extra: Any) -> str:
    values = {"EnrollmentToken": f"token-{upn}", "EnrollmentUrl": url} if url else {}
    return graph.add_user(upn, mail=upn, attributes={"Defguard": values} if values else None, **extra)


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator(empty_pages=True) as emulator:  # every list starts with an empty page and a nextLink
        emulator.define_attribute_set("Defguard")
        yield emulator


def test_find_holders_finds_exactly_the_users_holding_the_value_on_every_page(graph: GraphEmulator) -> None:
    holders = {_holder(graph, f"h{n}@example.com", URL, account_enabled=n != 1) for n in range(3)}
    _holder(graph, "other@example.com", "https://other.example.com/")
    _holder(graph, "case@example.com", URL.upper())  # Graph compares custom security attributes case-sensitively
    _holder(graph, "nothing@example.com", None)
    graph.reset_log()
    with _client(graph) as entra:
        found = entra.find_holders("Defguard", "EnrollmentUrl", URL)
    assert {u.id for u in found} == holders
    assert {u.user_principal_name: u.account_enabled for u in found} == {
        "h0@example.com": True,
        "h1@example.com": False,
        "h2@example.com": True,
    }
    gets = [r for r in graph.requests if r.method == "GET"]
    assert len(gets) >= 2  # the empty first page and its nextLink, both with the header Graph requires
    assert all({k.lower(): v for k, v in r.headers.items()}.get("consistencylevel") == "eventual" for r in gets)
    assert all(unquote(r.query).count("$count=true") == 1 for r in gets)


def test_find_holders_reads_more_than_one_full_page() -> None:
    with GraphEmulator() as graph:
        graph.define_attribute_set("Defguard")
        for n in range(1005):  # $top=999: two pages
            graph.add_user(f"u{n}@example.com", attributes={"Defguard": {"EnrollmentUrl": URL}})
        _holder(graph, "other@example.com", "https://other.example.com/")
        with _client(graph) as entra:
            found = entra.find_holders("Defguard", "EnrollmentUrl", URL)
    assert len(found) == 1005
    assert len({u.id for u in found}) == 1005


def test_a_value_over_120_characters_is_found_by_its_prefix_and_matched_exactly(graph: GraphEmulator) -> None:
    holder = _holder(graph, "long@example.com", LONG)
    _holder(graph, "longer@example.com", LONG + "more")  # same first 120 characters: not a holder
    with _client(graph) as entra:
        found = entra.find_holders("Defguard", "EnrollmentUrl", LONG)
        nobody = entra.find_holders("Defguard", "EnrollmentUrl", LONG[:-1] + "!")
    assert [u.id for u in found] == [holder]
    assert nobody == []
    filters = [unquote(r.query) for r in graph.requests if r.method == "GET"]
    assert filters
    assert all("startsWith" in p for p in filters)


def test_a_quote_in_the_value_cannot_change_the_query(graph: GraphEmulator) -> None:
    odd = "https://enroll.example.com/o'neil/"
    holder = _holder(graph, "quote@example.com", odd)
    _holder(graph, "plain@example.com", URL)
    with _client(graph) as entra:
        assert [u.id for u in entra.find_holders("Defguard", "EnrollmentUrl", odd)] == [holder]


def test_find_holders_raises_when_the_sign_in_may_not_read_the_attributes(graph: GraphEmulator) -> None:
    _holder(graph, "h@example.com", URL)
    token = graph.add_principal("no-read", read_attributes=False)
    with _client(graph, token) as entra, pytest.raises(EntraAPIError) as caught:
        entra.find_holders("Defguard", "EnrollmentUrl", URL)
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("define", "expected", "problems"),
    [
        ({}, True, ()),
        (None, False, ()),
        ({"type": "Integer"}, False, ("Defguard.EnrollmentTokenExpiresAt has type Integer, it must be String",)),
        (
            {"is_collection": True},
            False,
            ("Defguard.EnrollmentTokenExpiresAt allows multiple values: it must be single-valued",),
        ),
    ],
    ids=["string", "not-defined", "integer", "multi-valued"],
)
def test_check_attribute_set_says_whether_the_expiry_is_defined(
    graph: GraphEmulator, define: dict[str, Any] | None, expected: bool, problems: tuple[str, ...]
) -> None:
    if define is not None:
        graph.define_attribute("Defguard", "EnrollmentTokenExpiresAt", **define)
    with _client(graph) as entra:
        check = entra.check_attribute_set("Defguard")
    assert check.ok  # the two attributes the flow needs are fine either way
    assert check.defines_expiry is expected
    assert check.expiry_problems == problems


def test_check_attribute_set_cannot_say_without_reading_the_definitions(graph: GraphEmulator) -> None:
    graph.define_attribute("Defguard", "EnrollmentTokenExpiresAt")
    token = graph.add_principal("no-definitions", read_definitions=False)
    with _client(graph, token) as entra:
        check = entra.check_attribute_set("Defguard")
    assert not check.readable
    assert check.defines_expiry is None


class _ImportCounter:
    """A meta path finder that only counts the searches for one module name (and finds nothing itself)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.searches = 0

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        self.searches += fullname == self.name


def test_the_graph_stack_does_not_search_for_a_module_at_every_request(graph: GraphEmulator) -> None:
    # httpcore (under msgraph's httpx) runs `import sniffio` each time it sets up a lock, falling back to asyncio
    # when that fails; since anyio 4.11 no longer installs sniffio, each failed import searched all of sys.path:
    # 266 times in a 1,000-member run (encode/httpcore#1103). sniffio is a dependency so that it is found once.
    for n in range(3):
        _holder(graph, f"h{n}@example.com", URL)
    counter = _ImportCounter("sniffio")
    sys.meta_path.insert(0, counter)
    try:
        with _client(graph) as entra:
            for _ in range(5):
                assert len(entra.find_holders("Defguard", "EnrollmentUrl", URL)) == 3
    finally:
        sys.meta_path.remove(counter)
    assert graph.request_counts["users-list"] >= 5
    assert counter.searches <= 1


def test_a_client_built_directly_writes_at_full_speed_as_settings_do(graph: GraphEmulator) -> None:
    # One default for the write ceiling (config.DEFAULT_GRAPH_WRITE_RATE: none): EntraClient(GraphSettings, ...)
    # used to cap writes at 20 a second from the first one, the pace issue 14 removed from provision.
    ids = [graph.add_user(f"w{n}@example.com", mail=f"w{n}@example.com") for n in range(200)]
    graph.faults = Faults(latency=0.2)
    graph.load = Load()
    with _client(graph) as entra:
        written = entra.write_attributes("Defguard", {i: {"EnrollmentToken": "t", "EnrollmentUrl": URL} for i in ids})
    assert all(result.ok for result in written.values())
    assert graph.request_counts["batch"] == 10
    # The slow start (_batch.SlowStart) sends one batch at a time until 160 writes are answered clean, then two:
    # the last two batches overlap. At 20 writes a second each batch of 20 waited a second for its allowance, so
    # two were never in flight together (0.2 s each): the peak was 1.
    assert graph.load.peak == 2
