"""Seed data shared by the tests, the docs, ``demo`` and ``python -m defguard_entra.testing serve``.

:func:`seed_sample_organisation` builds a small organisation that follows Defguard's documented Entra flow: most
members were created by directory sync with *Prefetch users* (an OpenID subject, no password, no device: Defguard
lists them ``enrolled``), one has enrolled a device, one has a password but no device, one was invited by hand.
Every ``provision`` status occurs, and the scenario says what each member should end as (and with which kind of
token), so tests and the demo can check the outcome rather than just print it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .defguard import DefguardEmulator
from .graph import GraphEmulator

__all__ = [
    "EXPIRY_SLACK",
    "SAMPLE_GROUP",
    "Scenario",
    "environment",
    "expiry_difference",
    "running_emulators",
    "seed_sample_organisation",
]

SAMPLE_GROUP = "VPN Users"


@dataclass(frozen=True)
class Scenario:
    """What was seeded: the group, and for each Defguard username the status ``provision`` should give it."""

    group: str
    expected: Mapping[str, str]
    entra_only: Mapping[str, str] = field(default_factory=dict)  # Entra UPN → expected status (group source entra)
    entra_ids: Mapping[str, str] = field(default_factory=dict)  # Defguard username → Entra id, where one matches
    token_kinds: Mapping[str, str] = field(default_factory=dict)  # provisioned username → enrollment | desktop
    kinds_of_user: Mapping[str, str] = field(default_factory=dict)  # username → how the user came to be

    @property
    def provisioned(self) -> tuple[str, ...]:
        """The members ``provision`` should give a token, sorted."""
        return tuple(sorted(name for name, status in self.expected.items() if status == "provisioned"))

    def differences(
        self, defguard: DefguardEmulator, graph: GraphEmulator, attribute_set: str = "Defguard"
    ) -> list[str]:
        """What differs, after ``provision``, from what the scenario expects (empty: as expected): every member to
        provision holds in Entra exactly the token Defguard considers valid, of the expected kind, and no other
        member's attributes were touched."""
        problems = []
        for name in self.provisioned:
            token = defguard.current_token(name)
            stored = graph.attributes(self.entra_ids[name]).get(attribute_set, {}).get("EnrollmentToken")
            if token is None or stored != token:
                problems.append(f"{name}: Entra does not hold the token Defguard considers valid")
            elif defguard.token_kind(token) != self.token_kinds[name]:
                problems.append(f"{name}: got a {defguard.token_kind(token)} token, not {self.token_kinds[name]}")
            elif graph.defines(attribute_set, "EnrollmentTokenExpiresAt"):
                held = graph.attributes(self.entra_ids[name]).get(attribute_set, {}).get("EnrollmentTokenExpiresAt")
                problem = expiry_difference(held, defguard.token_expiry(token))
                if problem is not None:
                    problems.append(f"{name}: {problem}")
        problems.extend(
            f"{name}: attributes written although {self.expected[name]}"
            for name, entra_id in sorted(self.entra_ids.items())
            if self.expected[name] != "provisioned" and graph.attributes(entra_id)
        )
        return problems


#: How much earlier than Defguard's own record a stored expiry may be: the tool counts the lifetime from just
#: before its request and stores whole seconds, so it never claims a token lives longer than it does.
EXPIRY_SLACK = dt.timedelta(seconds=5)


def expiry_difference(held: Any, expires: dt.datetime | None) -> str | None:
    """What is wrong with a stored ``EnrollmentTokenExpiresAt`` given when Defguard says the token expires
    (``None``: nothing): it must be ISO 8601 UTC to the second (``…Z``), at most :data:`EXPIRY_SLACK` earlier and
    never later than Defguard's expiry. Nothing stored is no difference: the tool stores null when it cannot know
    the expiry (Defguard 1.6 does not tell its default token lifetime)."""
    if held is None:
        return None
    if expires is None:
        return f"Entra holds the expiry {held!r}, Defguard's token has none"
    stored = _utc_seconds(held)
    if stored is None:
        return f"Entra holds the expiry {held!r}, not YYYY-MM-DDTHH:MM:SSZ"
    if not dt.timedelta(0) <= expires - stored <= EXPIRY_SLACK:
        return f"Entra holds the expiry {held}, Defguard's token expires {expires.isoformat()}"
    return None


def _utc_seconds(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or len(value) != 20 or not value.endswith("Z"):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def seed_sample_organisation(
    defguard: DefguardEmulator,
    graph: GraphEmulator,
    *,
    group: str = SAMPLE_GROUP,
    attribute_set: str = "Defguard",
    expiry_attribute: bool = True,
) -> Scenario:
    """Seed both emulators with one member per outcome; the same group exists in Defguard and in Entra. The set
    defines ``EnrollmentToken``, ``EnrollmentUrl`` and (unless ``expiry_attribute`` is false) the optional
    ``EnrollmentTokenExpiresAt``."""
    graph.define_attribute_set(attribute_set)
    if expiry_attribute:
        graph.define_attribute(attribute_set, "EnrollmentTokenExpiresAt", description="When the token expires (UTC)")
    synced = {"synced": True}  # created by directory sync: OpenID subject = the Entra object id, no password
    people: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
        # username, Defguard fields, Entra user (None: not in Entra), expected status
        (
            "alice",
            {"email": "alice@example.com", "first_name": "Alice", "last_name": "Smith", **synced},
            {"upn": "alice@example.com", "mail": "alice@example.com"},
            "provisioned",
        ),
        (
            "oneil",
            {"email": "o'neil@example.com", "first_name": "Seán", "last_name": "O'Neil", **synced},
            {"upn": "sean.oneil@example.com", "mail": "o'neil@example.com"},
            "provisioned",
        ),
        (
            "grace",
            {"email": "grace@example.com", "first_name": "Grace", **synced},
            {"upn": "grace@example.com", "mail": None},
            "provisioned",
        ),
        (
            "heidi",  # invited by hand: no password, no OpenID subject
            {"email": "heidi.old@example.com", "first_name": "Heidi"},
            {"upn": "heidi@example.com", "mail": "heidi@example.com", "other_mails": ["heidi.old@example.com"]},
            "provisioned",
        ),
        (
            "peggy",  # set a password in the web UI, never installed the client
            {"email": "peggy@example.com", "first_name": "Peggy", "enrolled": True},
            {"upn": "peggy@example.com", "mail": "peggy@example.com"},
            "provisioned",
        ),
        (
            "bob",  # synced, and enrolled a device with the desktop client
            {"email": "bob@example.com", "first_name": "Bob", "devices": 1, **synced},
            {"upn": "bob@example.com", "mail": "bob@example.com"},
            "already_enrolled",
        ),
        (
            "carol",
            {"email": "carol@example.com", "first_name": "Carol", "active": False, **synced},
            {"upn": "carol@example.com", "mail": "carol@example.com"},
            "disabled",
        ),
        (
            "dave",
            {"email": "", "first_name": "Dave"},
            {"upn": "dave@example.com", "mail": "dave@example.com"},
            "no_email",
        ),
        ("erin", {"email": "erin@example.com", "first_name": "Erin"}, None, "not_found"),
        (
            "frank",
            {"email": "frank@example.com", "first_name": "Frank", **synced},
            {"upn": "frank@example.com", "mail": "frank@example.com"},
            "ambiguous",
        ),
    ]
    members: list[str] = []
    entra_members: list[str] = []
    entra_ids: dict[str, str] = {}
    expected: dict[str, str] = {}
    kinds: dict[str, str] = {}
    origins: dict[str, str] = {}
    for username, fields, entra, status in people:
        entra_id = None
        if entra is not None:
            entra_id = graph.add_user(
                entra["upn"],
                mail=entra.get("mail"),
                other_mails=entra.get("other_mails", ()),
                display_name=fields.get("first_name"),
            )
            entra_members.append(entra_id)
            entra_ids[username] = entra_id
        options = dict(fields)
        if options.pop("synced", False):
            options["openid_sub"] = entra_id or f"synced-{username}"
        defguard.add_user(username, **options)
        members.append(username)
        expected[username] = status
        origins[username] = _origin(options)
        if status == "provisioned":
            kinds[username] = _first_token_kind(options, defguard.version)
    # a second Entra user with frank's address: the lookup must not guess
    graph.add_user("frank.jones@example.com", mail="frank@example.com", display_name="Frank Jones")
    # in the Entra group only: nobody in Defguard has this address
    ivan = graph.add_user("ivan@example.com", mail="ivan@example.com", display_name="Ivan")
    entra_members.append(ivan)
    defguard.add_group(group, members)
    graph.add_group(group, entra_members)
    return Scenario(
        group=group,
        expected=expected,
        entra_only={"ivan@example.com": "not_in_defguard"},
        entra_ids=entra_ids,
        token_kinds=kinds,
        kinds_of_user=origins,
    )


def _origin(fields: Mapping[str, Any]) -> str:
    if fields.get("devices"):
        return "has a device"
    if fields.get("openid_sub"):
        return "created by directory sync (no password, no device)"
    if fields.get("enrolled"):
        return "has a password, no device"
    return "invited by hand (no password, no device)"


def _first_token_kind(fields: Mapping[str, Any], version: str) -> str:
    """What ``--enrolled auto`` mints: 2.x refuses enrollment for any user it counts activated (password or OpenID
    subject), 1.6 only for a user with a password; both then take a desktop-activation token."""
    if fields.get("enrolled") or (version != "1.6" and fields.get("openid_sub")):
        return "desktop"
    return "enrollment"


def environment(defguard: DefguardEmulator, graph: GraphEmulator) -> dict[str, str]:
    """The environment variables that point the CLI at the two emulators."""
    return {
        "DEFGUARD_URL": defguard.url,
        "DEFGUARD_API_TOKEN": defguard.admin_token,
        "DEFGUARD_ENTRA_GRAPH_URL": graph.url,
        "DEFGUARD_ENTRA_GRAPH_TOKEN": graph.admin_token,
    }


@contextlib.contextmanager
def running_emulators(
    version: str = "2.0",
    *,
    seed: bool = True,
    **graph_options: Any,
) -> Iterator[tuple[DefguardEmulator, GraphEmulator, Scenario | None]]:
    """Both emulators running (and, with ``seed``, holding the sample organisation)."""
    with (
        DefguardEmulator(version, enrollment_url="https://enroll.example.com") as defguard,
        GraphEmulator(**graph_options) as graph,
    ):
        scenario = seed_sample_organisation(defguard, graph) if seed else None
        yield defguard, graph, scenario
