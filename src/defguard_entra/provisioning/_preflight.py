"""The preflight: Defguard's version, token and deployment, the Graph sign-in and the attribute set, the group.

Once Defguard has answered its health check (a dead or foreign server is reported as such, and the server's
version is known before any read that depends on it), the independent reads go out together: ``me``, the
enrollment settings, the group list and the user list on the Defguard worker pool, and the Graph checks (sign-in,
who it is, the attribute set) on the event loop. They are judged one after another in the order of the checks,
so the first failure in that order is the one reported: a refused API token is reported as such, never as a later
read that failed with it. A sign-in that may prompt (interactive, device code) starts only after Defguard's checks
passed, as before, so that a wrong Defguard token never costs a browser window or a device code.
"""

from __future__ import annotations

import asyncio
import contextlib
import unicodedata
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

import attrs

from ..config import GRAPH_CLI_CLIENT_ID, AuthMode
from ..exceptions import EntraAPIError, EntraError, PreflightError
from ..models import (
    ATTRIBUTE_EXPIRES,
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    AttributeSetCheck,
    DefguardDeployment,
    DefguardGroup,
    DefguardUser,
    GraphPrincipal,
    Status,
)
from ._ports import Clients
from .plan import Member, enrollment_url_problem, map_entra_members
from .report import Run, log
from .suggest import did_you_mean

__all__ = ["graph_principal", "preflight"]

T = TypeVar("T")

#: Group members missing from the user list that are looked up one by one before they are reported.
_MISSING_LOOKUPS = 100

#: The sign-in modes that may prompt: their sign-in waits for Defguard's checks.
_PROMPTING = frozenset({AuthMode.INTERACTIVE, AuthMode.DEVICE_CODE})


class _Reads:
    """Reads started together and judged in order; whatever is left when the preflight ends (a failure) is
    cancelled, and the failures of reads nobody judged are collected, never logged as unretrieved."""

    def __init__(self) -> None:
        self._started: list[asyncio.Future[Any]] = []

    def start(self, read: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        future = asyncio.ensure_future(read)
        self._started.append(future)
        return future

    def close(self) -> None:
        for future in self._started:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # judged already, or not needed after an earlier failure


@contextlib.contextmanager
def _reads() -> Iterator[_Reads]:
    reads = _Reads()
    try:
        yield reads
    finally:
        reads.close()


def _may_prompt(clients: Clients) -> bool:
    return clients.entra.settings.resolved_auth() in _PROMPTING


async def _graph_checks(clients: Clients) -> tuple[GraphPrincipal, AttributeSetCheck]:
    """Sign in, who Graph sees, and the attribute set's definitions."""
    await clients.entra.sign_in()
    principal = await graph_principal(clients)
    return principal, await clients.entra.check_attribute_set(clients.attribute_set)


async def preflight(clients: Clients, run: Run, *, mints: bool = False) -> list[Member]:
    """Check both ends (``mints``: also Defguard's enrollment URL), then the group's members, sorted; the reads
    are concurrent, the failures raised in the order of the checks (module docstring)."""
    defguard, entra = clients.defguard, clients.entra
    server = await clients.dg(defguard.server)
    with _reads() as reads:
        me = reads.start(clients.dg(defguard.me))
        deployment = reads.start(clients.dg(defguard.deployment)) if mints else None
        listed = reads.start(clients.dg(defguard.groups)) if run.group_source == "defguard" else None
        users = reads.start(clients.dg(defguard.users))
        graph = None if _may_prompt(clients) else reads.start(_graph_checks(clients))
        owner = await me
        run.audit["defguard_user"] = owner.username
        if not owner.is_admin:
            raise PreflightError(f"the Defguard API token belongs to {owner.username!r}, who is not an admin")
        if deployment is not None:
            _check_enrollment_url(clients, server.major, run, await deployment)
        principal, check = await (graph or reads.start(_graph_checks(clients)))
        run.audit["graph_principal"] = principal.to_audit()
        run.audit["graph_url"] = entra.base_url
        _judge_attribute_set(clients, run, check)
        run.version = server.version
        if listed is not None:
            return await _defguard_members(clients, run, await listed, users)
        entra_members = await entra.group_members(run.group_id or await _entra_group_id(clients, run.group_name))
        entra_members.sort(key=lambda u: (u.user_principal_name.lower(), u.id))
        return map_entra_members(entra_members, (await users).values())


def _judge_attribute_set(clients: Clients, run: Run, check: AttributeSetCheck) -> None:
    name = clients.attribute_set
    if not check.readable:
        run.note(
            f"could not read the definitions of attribute set {name!r} (needs "
            "CustomSecAttributeDefinition.Read.All and the Attribute Definition Reader role): not checked, and "
            f"the tokens' expiry is not stored ({ATTRIBUTE_EXPIRES} may not be defined)",
            warn=True,
        )
    elif not check.set_exists:
        raise PreflightError(
            f"attribute set {name!r} does not exist in Entra: create it with the String attributes "
            f"{ATTRIBUTE_TOKEN} and {ATTRIBUTE_URL} (see docs/entra-setup.md), or pass --attribute-set-name"
        )
    elif check.problems:
        raise PreflightError("; ".join(check.problems) + " (see docs/entra-setup.md)")
    run.expiry_attribute = check.defines_expiry
    if check.expiry_problems:
        log.warning("%s: the token's expiry is not stored (see docs/entra-setup.md)", "; ".join(check.expiry_problems))


async def _entra_group_id(clients: Clients, group_name: str) -> str:
    """The object id of the one Entra group named ``group_name``; refused when none or several are."""
    groups = await clients.entra.find_groups(group_name)
    if len(groups) > 1:
        ids = ", ".join(g.id for g in groups)
        raise PreflightError(
            f"{len(groups)} Entra groups are named {group_name!r} ({ids}): pass --group-id with the object id of "
            "the one you mean (with --group-source entra), or rename one"
        )
    if groups:
        return groups[0].id
    message = f"Entra has no group with displayName {group_name!r}"
    word = next(iter(group_name.split()), "")
    similar: dict[str, str] = {}
    try:  # Graph compares displayName case-insensitively: spaces and Unicode forms are what it misses
        for prefix in dict.fromkeys(unicodedata.normalize(form, word) for form in ("NFC", "NFD") if word):
            similar.update((g.display_name, g.id) for g in await clients.entra.groups_starting_with(prefix))
    except EntraError as exc:
        log.debug("no suggestions for Entra group %r: %s", group_name, exc)
    if (suggestion := did_you_mean(group_name, similar, ids=similar)) is not None:
        raise PreflightError(f"{message}: {suggestion} Pass that name or its --group-id")
    raise PreflightError(f"{message}: check --group-name")


async def _defguard_members(
    clients: Clients, run: Run, listed: list[DefguardGroup], all_users: Awaitable[dict[str, DefguardUser]]
) -> list[Member]:
    group_name, group_id = run.group_name, run.group_id
    if group_id is not None:
        group = next((g for g in listed if g.id is not None and str(g.id) == group_id), None)
        if group is None:
            raise PreflightError(f"Defguard has no group with id {group_id} (any longer): check --group-id")
    else:
        group = next((g for g in listed if g.name == group_name), None)  # exactly: names are case-sensitive
    if group is None:
        message = f"Defguard has no group named {group_name!r} (names are case-sensitive)"
        ids = {g.name: str(g.id) for g in listed if g.id is not None}
        if (suggestion := did_you_mean(group_name, [g.name for g in listed], ids=ids)) is not None:
            raise PreflightError(f"{message}: {suggestion} Pass that name or its --group-id")
        raise PreflightError(f"{message}: check --group-name")
    users = await all_users
    missing = sorted(set(group.members) - users.keys())
    for username in missing[:_MISSING_LOOKUPS]:  # a user the unordered pages skipped, or one just added
        found = await clients.dg(clients.defguard.user, username)
        if found is not None:
            users[username] = found
    members = []
    for username in sorted(set(group.members)):
        user = users.get(username)
        member = Member(username, user)
        if user is None:
            member.settle(Status.FAILED, "Defguard: group member missing from the user list")
        members.append(member)
    return members


def _check_enrollment_url(clients: Clients, line: int, run: Run, deployment: DefguardDeployment) -> None:
    """Refuse Defguard's enrollment URL, read before any token is minted, when it cannot work."""
    run.audit["enrollment_url"] = deployment.enrollment_url
    if deployment.token_lifetime is not None:
        run.audit["defguard_token_lifetime_hours"] = round(deployment.token_lifetime.total_seconds() / 3600, 2)
    if deployment.enrollment_url is None:
        run.note(
            f"could not read Defguard's enrollment URL ({'; '.join(deployment.problems)}): "
            "the first token minted is checked instead",
            warn=True,
        )
        return
    problem = enrollment_url_problem(deployment.enrollment_url, clients.defguard.url, line)
    if problem is not None:
        raise PreflightError(problem)


async def graph_principal(clients: Clients) -> GraphPrincipal:
    """Who Graph sees: the token's claims when it is a JWT, else ``/me`` (a 400 there means app-only)."""
    entra = clients.entra
    principal = GraphPrincipal.from_claims(await entra.token_claims()) or GraphPrincipal("unknown")
    if principal.kind == "unknown" or (principal.kind == "delegated" and not principal.user):
        try:
            me = await entra.me()
        except EntraAPIError as exc:
            if exc.status == 400:  # "/me request is only valid with delegated authentication flow"
                principal = attrs.evolve(principal, kind="application")
        else:
            principal = attrs.evolve(principal, kind="delegated", user=str(me.get("userPrincipalName") or "") or None)
    if principal.client_id is None:
        graph = entra.settings
        client_id = graph.client_id or graph.environment.get("AZURE_CLIENT_ID")
        if client_id is None and graph.resolved_auth() in _PROMPTING:
            client_id = GRAPH_CLI_CLIENT_ID
        principal = attrs.evolve(principal, client_id=client_id)
    return principal
