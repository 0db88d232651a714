"""Pure decisions: classification and the mapping between Entra members and Defguard users."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from defguard_entra._chunks import chunked
from defguard_entra.models import DefguardUser, EntraUser, Status, TokenKind
from defguard_entra.provisioning.plan import classify, detect_shared_entra_users, map_entra_members


def _dg(name: str, email: str | None, **kw: bool) -> DefguardUser:
    return DefguardUser(username=name, email=email, active=kw.get("active", True), enrolled=kw.get("enrolled", False))


def test_classify() -> None:
    assert classify(_dg("a", "a@x", active=False), "skip") is Status.DISABLED
    assert classify(_dg("a", None), "skip") is Status.NO_EMAIL
    assert classify(_dg("a", "a@x", enrolled=True), "skip") is Status.ALREADY_ENROLLED
    assert classify(_dg("a", "a@x", enrolled=True), "desktop") is TokenKind.DESKTOP
    assert classify(_dg("a", "a@x"), "skip") is TokenKind.ENROLLMENT


def test_entra_members_map_by_mail_then_upn_then_other_mails() -> None:
    members = map_entra_members(
        [
            EntraUser("1", "one@corp", mail="One@Example.com"),
            EntraUser("2", "two@example.com"),
            EntraUser("3", "three@corp", other_mails=("x@y", "three@example.com")),
            EntraUser("4", "nobody@corp", mail="nobody@corp"),
        ],
        [_dg("one", "one@example.com"), _dg("two", "TWO@example.com"), _dg("three", "three@example.com")],
    )
    got = [(m.username, m.matched_by and m.matched_by.value, m.status) for m in members]
    assert got == [
        ("one", "mail", None),
        ("two", "userPrincipalName", None),
        ("three", "otherMails", None),
        (None, None, Status.NOT_IN_DEFGUARD),
    ]


def test_two_entra_members_for_one_defguard_user_are_both_ambiguous() -> None:
    """One token per Defguard user: minting twice would leave one Entra user holding a cancelled token."""
    members = map_entra_members(
        [
            EntraUser("1", "a@example.com", mail="a@example.com"),
            EntraUser("2", "b@corp", other_mails=("a@example.com",)),
        ],
        [_dg("alice", "a@example.com")],
    )
    assert [m.status for m in members] == [Status.AMBIGUOUS, Status.AMBIGUOUS]
    assert "a@example.com, b@corp" in (members[0].error or "")


def test_one_entra_user_for_two_defguard_users_is_ambiguous() -> None:
    entra = EntraUser("1", "a@example.com", mail="a@example.com")
    members = map_entra_members([entra], [_dg("alice", "a@example.com")])
    from defguard_entra.provisioning.plan import Member

    twin = Member("alice2", _dg("alice2", "alias@example.com"), entra)
    detect_shared_entra_users([*members, twin])
    assert members[0].status is Status.AMBIGUOUS
    assert twin.status is Status.AMBIGUOUS


@given(st.lists(st.integers(), max_size=100), st.integers(min_value=1, max_value=30))
def test_chunked_keeps_order_and_bounds(values: list[int], size: int) -> None:
    chunks = chunked(values, size)
    assert [v for c in chunks for v in c] == values
    assert all(0 < len(c) <= size for c in chunks)
