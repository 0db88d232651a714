"""The phases of ``sync`` that speak to the services (the decisions are pure, in :mod:`.tokens` and
:mod:`.sync_plan`): the members and what they hold, the activity log and the token judgement (shared with
``status`` and ``provision --only-missing``), the outsiders, and applying the plan."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs

from ..exceptions import DefguardError, EntraError
from ..models import ATTRIBUTE_EXPIRES, ATTRIBUTE_URL, ActivityLog, DefguardServer, EnrolledPolicy, Report, Status
from . import mint, roster, stored
from ._ports import Clients
from .journal import Journal
from .plan import Member
from .report import Progress, Run, log
from .sync_plan import ChangeLimit, SyncPlan, plan_sync
from .tokens import DEFAULT_LIFETIME, LOG_KINDS, TokenJudge, candidate_lifetimes, log_since

__all__ = ["SyncRun", "apply", "find_outsiders", "judge_states", "sync_members", "token_judge"]


async def sync_members(
    clients: Clients, run: Run, stop: threading.Event | None, users: tuple[str, ...] | None = None
) -> list[Member]:
    """Preflight (as a run that mints), the group's members resolved in Entra (only those ``users`` names, when
    given), and what each holds. Disabled and enrolled members are resolved too: what they hold may have to be
    cleared."""
    members = await roster.members(clients, run, enrolled=None, mints=True, users=users)
    for member in members:  # roster settles them for provision; sync judges them (clear what they hold)
        if member.status is Status.ENTRA_DISABLED:
            member.status, member.error = None, None
    await stored.read_values(clients, run, members, stop)
    return members


def _server_lifetime(run: Run) -> dt.timedelta | None:
    hours = run.audit.get("defguard_token_lifetime_hours")
    return dt.timedelta(hours=hours) if isinstance(hours, int | float) and hours > 0 else None


async def token_judge(
    clients: Clients,
    run: Run,
    members: Sequence[Member] | None,
    *,
    lifetime: dt.timedelta | None,
    refresh_before: dt.timedelta | None,
) -> TokenJudge:
    """The judgement of stored tokens for this run: Defguard's activity log read once (when any of ``members``
    holds a complete pair; ``None``: always), its problems and the missing expiry attribute noted once."""
    now = run.clock()
    lifetimes = candidate_lifetimes(lifetime, _server_lifetime(run))
    expiry_known = run.expiry_attribute is True
    holders = members is None or any(m.read and m.stored is not None and m.stored.complete for m in members)
    if not expiry_known and (holders or run.command == "sync"):
        why = "could not be checked" if run.expiry_attribute is None else "is not defined"
        run.note(
            f"{ATTRIBUTE_EXPIRES} {why} in attribute set {clients.attribute_set!r}: expiry cannot be known: define "
            "it, see docs/entra-setup.md"
        )
    activity = ActivityLog(available=False, problem="not read: nothing is stored")
    if holders:
        read = functools.partial(clients.defguard.activity_log, since=log_since(now, lifetimes), kinds=LOG_KINDS)
        try:
            activity = await clients.dg(read)
        except DefguardError as exc:
            activity = ActivityLog(available=False, problem=str(exc))
        if not activity.available:
            run.note(
                f"Defguard's activity log is not available ({activity.problem}): whether a stored token was replaced "
                "or used cannot be known"
            )
        run.mark("log")
    minter = run.audit.get("defguard_user")
    return TokenJudge(
        activity, now, lifetimes, refresh_before, expiry_known, minter if isinstance(minter, str) else None
    )


def judge_states(members: Sequence[Member], judge: TokenJudge) -> None:
    """``status``: each member with a complete stored pair gets its token state; the reason comes first in its
    ``error`` (what provision would mint follows)."""
    for member in members:
        pair = member.stored
        if member.read and pair is not None and pair.complete and member.status in {None, Status.SET}:
            member.state, why = judge(pair, member.username)
            member.error = f"token {member.state}: {why}" + (f"; {member.error}" if member.error else "")


async def find_outsiders(clients: Clients, run: Run, members: Sequence[Member]) -> list[Member]:
    """Users outside the group who hold this Defguard instance's attributes (its enrollment URL), each as a
    :class:`Member` with no Defguard user and the reason. A holder whose id or addresses match a member (found or
    not) is never an outsider. Not looked up (noted) when the enrollment URL is not known or Graph refuses."""
    url = run.audit.get("enrollment_url")
    if not isinstance(url, str) or not url:
        run.note("users outside the group were not looked for: Defguard's enrollment URL could not be read")
        return []
    # The deployment's URL is read with a "/" added to an empty path; a token's URL is as Defguard answers it:
    # with an empty path both forms are looked for.
    root = url.rstrip("/")
    variants = dict.fromkeys((url, root, root + "/") if urlsplit(url).path in {"", "/"} else (url,))
    try:
        holders = [
            user
            for value in variants
            for user in await clients.entra.find_holders(clients.attribute_set, ATTRIBUTE_URL, value)
        ]
    except EntraError as exc:
        run.note(f"users outside the group were not looked for ({exc}): none cleared", warn=True)
        return []
    ids = {m.entra.id for m in members if m.entra is not None}
    addresses = {m.email.strip().lower() for m in members if m.email}
    outsiders = []
    for user in sorted(holders, key=lambda u: (u.user_principal_name.lower(), u.id)):
        own = (user.mail, user.user_principal_name, *user.other_mails)
        if user.id in ids or any(a and a.strip().lower() in addresses for a in own):
            continue
        ids.add(user.id)
        outsider = Member(None, entra=user)
        outsider.error = f"not a member of group {run.group_name!r}: holds this Defguard instance's attributes"
        outsiders.append(outsider)
    run.mark("outsiders")
    return outsiders


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _: progress(before + done, total)


async def apply(
    clients: Clients,
    run: Run,
    plan: SyncPlan,
    *,
    lifetime: dt.timedelta | None,
    progress: Progress | None,
    stop: threading.Event | None,
    journal: Journal | None,
    stall_after: float | None,
) -> tuple[str | None, bool]:
    """Mint and store the plan's first tokens and refreshes (the write probe first), then clear; the fatal error
    and whether the run was interrupted."""
    todo = [*plan.refresh, *plan.mint]
    total = len(todo) + len(plan.clear)
    fatal, interrupted = None, False
    expiry = run.expiry_attribute is True
    if todo:
        await mint.probe_write(clients, todo[0], run.notes)
        fatal, interrupted = await mint.mint_and_write(
            clients,
            todo,
            lifetime,
            progress=_offset(progress, 0, total),
            stop=stop,
            journal=journal,
            stall_after=stall_after,
            notes=run.notes,
            expiry=expiry,
        )
        plan.settle_refreshed()
    if plan.clear:
        await stored.clear_values(clients, plan.clear, _offset(progress, len(todo), total), stop, expiry=expiry)
        for member in plan.clear:
            if member.status is Status.CLEARED:
                member.error = plan.reason(member)
        if journal is not None:  # a cleared member holds nothing that could be dead
            journal.done(m.username for m in plan.clear if m.username and m.status is Status.CLEARED)
    interrupted = interrupted or (stop is not None and stop.is_set())
    log.info(
        "sync: %d tokens stored, %d cleared (%.2fs)",
        sum(m.status in {Status.PROVISIONED, Status.REFRESHED} for m in todo),
        sum(m.status is Status.CLEARED for m in plan.clear),
        run.seconds,
    )
    return fatal, interrupted


@attrs.frozen
class SyncRun:
    """One ``sync``: its checked arguments and the run; :meth:`go` composes the phases into the report."""

    clients: Clients
    run: Run
    enrolled: EnrolledPolicy
    lifetime: dt.timedelta | None
    refresh_before: dt.timedelta | None
    limit: ChangeLimit
    stale: frozenset[str]
    journal: Journal | None
    #: Only these members (``--user``); users outside the group are then not looked for: every other member
    #: of the group would look like one.
    users: tuple[str, ...] | None = None

    async def go(
        self, *, dry_run: bool, progress: Progress | None, stop: threading.Event | None, stall_after: float | None
    ) -> Report:
        """Members and what they hold, the judgement, the outsiders, the plan; then apply it, unless it is a dry
        run or held (every planned member ``planned``); the report with every member and outsider once."""
        clients, run = self.clients, self.run
        members = await sync_members(clients, run, stop, self.users)
        lifetime = self.lifetime
        if lifetime is None and _server_lifetime(run) is None:
            # 1.6 does not say its default lifetime, and a token's expiry is what tells sync when to renew it:
            # ask for Defguard's documented default explicitly, so the expiry is known.
            lifetime = DEFAULT_LIFETIME
            run.note(
                "Defguard does not say its default token lifetime (1.6): enrollment tokens are asked for with "
                "24h, Defguard's default, so that their expiry is known; --lifetime chooses another"
            )
        judge = await token_judge(clients, run, members, lifetime=lifetime, refresh_before=self.refresh_before)
        outsiders = [] if self.users is not None else await find_outsiders(clients, run, members)
        line = DefguardServer(run.version or "").major
        plan = plan_sync(
            members, outsiders, enrolled=self.enrolled, line=line, judge=judge, stale=self.stale, limit=self.limit
        )
        held, fatal, interrupted = plan.held, None, False
        if dry_run or held is not None:
            plan.settle_planned()
            if dry_run and held is not None:
                run.note(f"a real run would be held: {held}")
                held = None
        else:
            fatal, interrupted = await apply(
                clients,
                run,
                plan,
                lifetime=lifetime,
                progress=progress,
                stop=stop,
                journal=self.journal,
                stall_after=stall_after,
            )
        plan.settle_unchanged()
        run.mark("write")
        return run.report(
            [*members, *outsiders], dry_run=dry_run, interrupted=interrupted, fatal=fatal, held=held, plan=plan.counts
        )
