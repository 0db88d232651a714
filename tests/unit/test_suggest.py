"""The closest group names and how each differs (``provisioning.suggest``): pure functions."""

from __future__ import annotations

import unicodedata

import pytest

from defguard_entra.provisioning.suggest import closest_names, did_you_mean, how_it_differs, loose

PARIS = "Équipe VPN / Paris"
PARIS_NFD = unicodedata.normalize("NFD", PARIS)
NAMES = ["VPN Users", PARIS, "Admins", "VPN Usres", "Finance"]


def test_the_nfd_name_looks_the_same_but_is_not() -> None:
    assert PARIS_NFD != PARIS
    assert loose(PARIS_NFD) == loose(PARIS)


@pytest.mark.parametrize(
    ("typed", "existing", "how"),
    [
        ("VPN USERS", "VPN Users", "differs only in case"),
        ("VPN Users ", "VPN Users", "yours has a trailing space"),
        ("  VPN Users", "VPN Users", "yours has 2 leading spaces"),
        ("VPN Users", "VPN Users ", "the group's name has a trailing space"),
        ("VPN  Users", "VPN Users", "the spaces inside differ"),
        (PARIS_NFD, PARIS, "differs in Unicode normalisation, yours is NFD"),
        (PARIS, PARIS_NFD, "differs in Unicode normalisation, the group's name is NFD"),
        ("vpn users ", "VPN Users", "yours has a trailing space and differs in case"),
        ("VPN Usres", "VPN Users", "2 letters differ"),
        ("VPN Userz", "VPN Users", "1 letter differs"),
    ],
)
def test_how_it_differs(typed: str, existing: str, how: str) -> None:
    assert how_it_differs(typed, existing) == how


@pytest.mark.parametrize("typed", ["VPN USERS", "VPN Users ", " vpn users", "VPN  Users"])
def test_the_loose_match_comes_first(typed: str) -> None:
    assert closest_names(typed, NAMES) == ["VPN Users", "VPN Usres"]


def test_the_nfd_name_finds_the_nfc_group() -> None:
    assert closest_names(PARIS_NFD, NAMES) == [PARIS]


def test_far_names_are_not_suggested() -> None:
    assert closest_names("Marketing", NAMES) == []
    assert did_you_mean("Marketing", NAMES) is None


def test_at_most_three_and_each_once() -> None:
    names = ["Team A", "Team B", "Team C", "Team D", "Team A"]
    assert closest_names("Team E", names) == ["Team A", "Team B", "Team C"]


def test_the_exact_name_is_not_its_own_suggestion() -> None:
    assert closest_names("Admins", NAMES) == []


def test_did_you_mean_names_each_candidate_its_id_and_difference() -> None:
    message = did_you_mean("VPN USERS", NAMES, ids={"VPN Users": "3"})
    assert message == "did you mean 'VPN Users' (id 3: differs only in case), or 'VPN Usres' (2 letters differ)?"
