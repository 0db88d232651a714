"""``check``'s probes: each asks one client one question and hands the answer to :mod:`.checklist` to judge.

Defguard: reachable (and its version), the API token honoured (license gate), valid and an admin's, the group, its
deployment. Graph: sign-in and who it is, permission to read users, the attribute set and both attributes, and the
permissions to write and read them; with ``probe_write`` the write permission proven by a write that changes
nothing (:func:`.probe.probe_write`).
"""

from __future__ import annotations

import attrs

from ..exceptions import (
    DefguardAPIError,
    DefguardAuthError,
    DefguardError,
    DefguardUnreachableError,
    EntraAPIError,
    EntraError,
    PreflightError,
)
from ..models import (
    CheckItem,
    Checklist,
    CheckState,
    DefguardDeployment,
    EntraGroup,
    EntraUser,
    GraphPrincipal,
    GroupSource,
)
from ._ports import Clients
from .checklist import (
    READ_ATTRIBUTES,
    WRITE_ATTRIBUTES,
    attribute_items,
    defguard_token_items,
    deployment_items,
    permission_item,
    read_users_item,
)
from .fixes import defguard_reachable_item, graph_failure_hint, missing_role_hint
from .plan import Member
from .probe import probe_write
from .roster import graph_principal
from .suggest import did_you_mean

__all__ = ["check_defguard", "check_graph", "checklist", "probe_item"]


async def checklist(
    clients: Clients, group_name: str, group_source: GroupSource, *, probe_write: bool, group_id: str | None = None
) -> Checklist:
    """Every line, Defguard's first; with ``probe_write`` the judged write permission replaced by the probe;
    ``group_id``: the Entra group's object id when the group was named by it (its name may not be unique)."""
    items: list[CheckItem] = []
    version = await check_defguard(clients, group_name, group_source, items)
    principal = await check_graph(clients, group_name, group_source, items, group_id=group_id)
    if probe_write:
        items = [i for i in items if i.key != WRITE_ATTRIBUTES.key]
        items.append(await probe_item(clients, group_name, group_source, principal, group_id=group_id))
    return Checklist(
        tuple(items),
        group_name=group_name,
        group_source=group_source,
        attribute_set=clients.attribute_set,
        defguard_url=clients.defguard.url,
        defguard_version=version,
        graph_url=clients.entra.base_url,
    )


async def check_defguard(
    clients: Clients, group_name: str, group_source: GroupSource, items: list[CheckItem]
) -> str | None:
    """The Defguard lines; the server's version, or ``None`` when it is not reachable."""
    defguard = clients.defguard
    try:
        server = await clients.dg(defguard.server)
    except DefguardError as exc:
        items.append(defguard_reachable_item(str(exc), _defguard_cause(exc)))
        keys = ["defguard_license", "defguard_token", "defguard_admin"]
        keys += ["group"] if group_source == "defguard" else []
        items.extend(CheckItem(k, k.replace("_", " "), CheckState.SKIP, "Defguard is not reachable") for k in keys)
        return None
    items.append(CheckItem("defguard_reachable", "Defguard reachable", CheckState.OK, f"version {server.version}"))
    owner: str | None = None
    is_admin: bool | None = None
    error: tuple[int, str] | None = None
    detail = ""
    try:
        me = await clients.dg(defguard.me)
        owner, is_admin = me.username, me.is_admin
    except DefguardAuthError as exc:
        error = (exc.status, exc.message)
    except DefguardError as exc:
        error, detail = (getattr(exc, "status", 0), str(exc)), str(exc)
    items.extend(defguard_token_items(owner, is_admin, error, detail))
    if error is None and is_admin:
        try:
            deployment: DefguardDeployment | None = await clients.dg(defguard.deployment)
        except DefguardError:
            deployment = None
        items.extend(deployment_items(deployment, defguard.url, server.major, clients.attribute_set))
    if group_source != "defguard":
        return server.version
    if error is not None or not is_admin:
        items.append(CheckItem("group", f"group {group_name!r}", CheckState.SKIP, "needs an admin's API token"))
        return server.version
    items.append(await _defguard_group_item(clients, group_name))
    return server.version


def _defguard_cause(exc: DefguardError) -> str | None:
    """Why Defguard gave no usable answer: the transport's cause, or a proxy's 407 (an ``http://`` URL)."""
    if isinstance(exc, DefguardUnreachableError):
        return exc.cause
    if isinstance(exc, DefguardAPIError) and exc.status == 407:
        return "proxy"
    return None


async def _defguard_group_item(clients: Clients, group_name: str) -> CheckItem:
    title = f"group {group_name!r}"
    try:
        groups = await clients.dg(clients.defguard.groups)
    except DefguardError as exc:
        return CheckItem("group", title, CheckState.FAIL, str(exc), None)
    found = next((g for g in groups if g.name == group_name), None)
    if found is None:
        ids = {g.name: str(g.id) for g in groups if g.id is not None}
        similar = did_you_mean(group_name, [g.name for g in groups], ids=ids)
        hint = f"{similar} Pass that name or its --group-id" if similar else "check --group-name"
        return CheckItem("group", title, CheckState.FAIL, f"Defguard has no group named {group_name!r}", hint)
    size = len(set(found.members))
    return CheckItem(
        "group",
        title,
        CheckState.OK if size else CheckState.WARN,
        f"{size} member{'s' if size != 1 else ''}" if size else "no members: provision would do nothing",
    )


async def check_graph(
    clients: Clients,
    group_name: str,
    group_source: GroupSource,
    items: list[CheckItem],
    *,
    group_id: str | None = None,
) -> GraphPrincipal | None:
    """The Graph lines: sign-in, reading users, the Entra group, the attribute set, and the permissions; who is
    signed in (``None`` when the sign-in failed)."""
    rest = ["graph_read_users", "graph_read_definitions", "attribute_set", "attribute_token", "attribute_url"]
    rest += ["attribute_expires"]
    rest += [WRITE_ATTRIBUTES.key, READ_ATTRIBUTES.key] + (["group"] if group_source == "entra" else [])

    def skip_rest(reason: str) -> None:
        items.extend(CheckItem(k, k.replace("_", " "), CheckState.SKIP, reason) for k in rest)

    entra = clients.entra
    try:
        await entra.sign_in()
        principal = await graph_principal(clients)
    except EntraError as exc:
        items.append(
            CheckItem(
                "graph_sign_in", "Microsoft Graph sign-in", CheckState.FAIL, str(exc), graph_failure_hint(exc.cause)
            )
        )
        skip_rest("needs a Graph sign-in")
        return None
    items.append(CheckItem("graph_sign_in", "Microsoft Graph sign-in", CheckState.OK, principal.describe()))
    try:
        items.append(read_users_item(await entra.can_read_users()))
        if group_source == "entra":
            items.append(await _entra_group_item(clients, group_name, group_id))
        check = await entra.check_attribute_set(clients.attribute_set)
        items.extend(attribute_items(check, clients.attribute_set, principal))
    except EntraError as exc:
        done = {item.key for item in items}
        hint = graph_failure_hint(exc.cause) if exc.cause else "try again later"
        items.append(CheckItem("graph", "Microsoft Graph", CheckState.FAIL, str(exc), hint))
        rest = [k for k in rest if k not in done]
        skip_rest("Graph failed")
        return principal
    judged = permission_item(WRITE_ATTRIBUTES, principal)
    items.append(
        attrs.evolve(
            judged,
            detail=f"{judged.detail} (judged from the access token's claims only)",
            hint=judged.hint or "prove it with a write that changes nothing: check --probe-write",
        )
    )
    items.append(permission_item(READ_ATTRIBUTES, principal))
    return principal


async def probe_item(
    clients: Clients,
    group_name: str,
    group_source: GroupSource,
    principal: GraphPrincipal | None = None,
    *,
    group_id: str | None = None,
) -> CheckItem:
    """``check --probe-write``: the write probe on the first group member found in Entra; ``principal`` names the
    missing Entra role when the write is refused to a user who has the scope."""
    title = f"permission to write attribute set {clients.attribute_set!r} (probed)"
    key = WRITE_ATTRIBUTES.key
    try:
        target = await _probe_target(clients, group_name, group_source, group_id)
        if target is None:
            return CheckItem(key, title, CheckState.SKIP, "no group member was found in Entra to probe with")
        notes: list[str] = []
        await probe_write(clients, Member(None, entra=target), notes)
    except PreflightError as exc:
        return CheckItem(
            key,
            title,
            CheckState.FAIL,
            str(exc).split(": grant ")[0],
            missing_role_hint(principal, WRITE_ATTRIBUTES.scopes, WRITE_ATTRIBUTES.roles[0])
            or f"grant {WRITE_ATTRIBUTES.needs()}",
        )
    except (DefguardError, EntraError) as exc:
        return CheckItem(key, title, CheckState.WARN, f"not probed: {exc}", None)
    if notes:
        return CheckItem(key, title, CheckState.WARN, notes[0], None)
    return CheckItem(
        key, title, CheckState.OK, f"a write that changes nothing was accepted for {target.user_principal_name}"
    )


async def _probe_target(
    clients: Clients, group_name: str, group_source: GroupSource, group_id: str | None = None
) -> EntraUser | None:
    entra = clients.entra
    if group_source == "entra":
        ids = [group_id] if group_id is not None else [g.id for g in await entra.find_groups(group_name)]
        members = await entra.group_members(ids[0]) if len(ids) == 1 else []
        return members[0] if members else None
    group = await clients.dg(clients.defguard.find_group, group_name)
    if group is None:
        return None
    users = await clients.dg(clients.defguard.users)
    emails = [u.email for name in sorted(set(group.members)) if (u := users.get(name)) and u.email]
    if not emails:
        return None
    match = (await entra.find_users(emails[:1]))[emails[0].strip().lower()]
    return match.user


async def _entra_group_item(clients: Clients, group_name: str, group_id: str | None = None) -> CheckItem:
    title = f"Entra group {group_name!r}"
    try:
        groups = [EntraGroup(group_id, group_name)] if group_id else await clients.entra.find_groups(group_name)
    except EntraAPIError as exc:
        if exc.status != 403:
            raise
        return CheckItem(
            "group",
            title,
            CheckState.FAIL,
            "Graph refused to search groups (403)",
            "grant GroupMember.Read.All (application permission with admin consent, or delegated scope)",
        )
    if not groups:
        return CheckItem("group", title, CheckState.FAIL, "no Entra group has this displayName", "check --group-name")
    if len(groups) > 1:
        ids = ", ".join(g.id for g in groups)
        return CheckItem(
            "group",
            title,
            CheckState.FAIL,
            f"{len(groups)} Entra groups have this displayName ({ids})",
            "pass --group-id with the object id of the one you mean, or rename one",
        )
    members = await clients.entra.group_members(groups[0].id)
    size = len(members)
    return CheckItem(
        "group", title, CheckState.OK if size else CheckState.WARN, f"{size} user member{'s' if size != 1 else ''}"
    )
