"""ProvisioningService: the orchestrator. It decides; the clients speak HTTP.

Each command is one short async method composing its phases: :mod:`.roster` (arguments, preflight, members, Entra
resolution), :mod:`.plan` (pure decisions), :mod:`.mint` or :mod:`.stored` (the writes and reads),
:mod:`.report` (the one place a report is built); ``check`` uses :mod:`.check`. The sync forms are the async ones
run on a private event loop (:func:`defguard_entra._sync.blocking`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from .._scopes import COMMAND_SCOPES
from .._sync import LoopThread, blocking
from ..config import DEFAULT_ATTRIBUTE_SET, DEFAULT_CONCURRENCY, Settings, proxy_for, validate_group_id
from ..models import Checklist, DefguardServer, EnrolledPolicy, GroupSource, Report, Status
from . import check as probes
from . import mint, roster, stored, sync_phases
from ._lifecycle import ServiceLifecycle
from ._ports import Clients
from .journal import RunGuard, run_guard
from .plan import Plan, judge_clear, judge_status
from .report import Progress, Run, desktop_note, guarded_progress, log

if TYPE_CHECKING:
    from .._defguard import DefguardClient
    from .._entra import AsyncEntraClient
    from ._ports import DefguardPort, GraphPort

__all__ = ["Progress", "ProvisioningService"]

T = TypeVar("T")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProvisioningService(ServiceLifecycle):
    """Provision a group's members: mint Defguard enrollment tokens and store them in Entra.

    Build it with :meth:`from_settings` (it then owns and closes the clients), or pass your own
    ``DefguardClient`` and ``AsyncEntraClient``. Every operation has an async form (``aprovision``) and a sync form
    (``provision``) that runs on a private event loop, so it works from scripts and from notebooks alike; use one
    style per service instance.
    """

    def __init__(
        self,
        defguard: DefguardClient | DefguardPort,
        entra: AsyncEntraClient | GraphPort,
        *,
        attribute_set: str = DEFAULT_ATTRIBUTE_SET,
        concurrency: int = DEFAULT_CONCURRENCY,
        owns_clients: bool = False,
        state_dir: Path | None = None,
        stall_timeout: float | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.defguard: DefguardPort = defguard
        self.entra: GraphPort = entra
        self.state_dir = state_dir
        """Where the journal of tokens in flight and the run lock live (per Defguard instance and group); ``None``
        turns both off (see :mod:`defguard_entra.provisioning.journal`)."""
        self.attribute_set = attribute_set
        self.stall_timeout = stall_timeout
        """Seconds of silence from both services that end a provision run; ``None``: :meth:`stall_limit`."""
        self.concurrency = max(1, concurrency)
        self.clock: Callable[[], dt.datetime] = clock or _utc_now
        """The service's "now" (aware UTC): the runs' start and end, and every judgement of a token's time."""
        self._owns = owns_clients
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="defguard")
        self._runner: LoopThread | None = None
        self._runner_lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._options: dict[str, Any] = {
            "defguard_url": defguard.url,
            "graph_url": entra.base_url,
            "graph_auth": entra.settings.resolved_auth().value,
            "attribute_set": attribute_set,
        }

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: Any = None,
        prompt: Callable[[str], None] | None = None,
        delegated_scopes: Sequence[str] = COMMAND_SCOPES["provision"],
        state_dir: Path | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> Self:
        """Wire real clients from :class:`Settings` (the only place that does). ``credential`` overrides sign-in;
        ``clock`` is the "now" of the service and of the Defguard client (tests share one with the emulators)."""
        from .._defguard import DefguardClient  # noqa: PLC0415 - heavy, only when used
        from .._entra import AsyncEntraClient  # noqa: PLC0415

        settings.validate()
        url, token = settings.require_defguard()
        defguard = DefguardClient(
            url,
            token,
            timeout=settings.timeout,
            ca_bundle=settings.ca_bundle,
            retry=settings.retry,
            pool_size=settings.concurrency,
            proxy=proxy_for(url, settings.proxies),
            clock=clock,
        )
        entra = AsyncEntraClient.from_settings(settings, credential=credential, prompt=prompt, scopes=delegated_scopes)
        service = cls(
            defguard,
            entra,
            attribute_set=settings.attribute_set,
            concurrency=settings.concurrency,
            owns_clients=True,
            state_dir=state_dir,
            stall_timeout=settings.stall_timeout,
            clock=clock,
        )
        service._options.update(defguard_url=settings.defguard_url, graph_url=settings.graph.base_url)
        return service

    def stall_limit(self) -> float:
        """The watchdog's limit: :attr:`stall_timeout`, or else twice the longest one try of a request may go
        unanswered (connect and read timeouts of the slower service: two tries that time out in a row, what the
        Defguard client allows) plus the longest back-off between tries: 90 s at the default ``--timeout 30``
        (Graph: 10 s to connect, 30 s to read). Waits a server asks for (``Retry-After``) do not count."""
        if self.stall_timeout is not None:
            return self.stall_timeout
        retry = getattr(self.defguard, "retry", None)
        back_off = retry.wait_max if retry is not None else 10.0
        return 2 * max(self.defguard.patience, self.entra.patience) + back_off

    def _guard(self, group_name: str, group_source: GroupSource, *, write: bool) -> RunGuard:
        return run_guard(self.state_dir, self.defguard.url, group_name, group_source, write=write)

    def _start(
        self, command: str, group_name: str, group_source: GroupSource, group_id: str | None = None, **audit: Any
    ) -> Run:
        if group_id is not None:
            audit["group_id"] = group_id
        return Run(
            command,
            group_name,
            group_source,
            self.attribute_set,
            self.defguard.url,
            options=self._options,
            audit=dict(audit),
            timed=command != "export",
            group_id=group_id,
            clock=self.clock,
        )

    @staticmethod
    async def _named(
        clients: Clients, group_name: str | None, group_id: int | str | None, group_source: GroupSource
    ) -> tuple[str, str | None]:
        """The group's name and, when it was named by ``group_id``, its id (the name read from the server)."""
        if group_id is None:
            return group_name or "", None
        checked = validate_group_id(group_id, group_source)
        return await roster.group_name_of(clients, checked, group_source), checked

    # -- the commands ----------------------------------------------------------------------------------------

    async def asign_in(self) -> None:
        """Sign in to Microsoft Graph now, before a command (which otherwise signs in during its preflight): an
        interactive or device-code prompt happens here. Raises :class:`EntraAuthError` with the cause and fix.

        .. versionadded:: 0.1.0
        """
        await self._bind().entra.sign_in()

    sign_in = blocking(asign_in)

    async def aprovision(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        users: Sequence[str] | None = None,
        lifetime: dt.timedelta | None = None,
        enrolled: EnrolledPolicy = "auto",
        dry_run: bool = False,
        only_missing: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Provision every member of ``group_name``; returns a :class:`Report` with each member exactly once.

        Raises (before any token is minted) :class:`PreflightError`, :class:`DefguardError` or
        :class:`EntraError` when the run cannot start. Per-member problems are outcomes, not exceptions.

        Every command names its group by ``group_name`` or, unambiguously, by ``group_id`` (one of the two): the
        Defguard group's id (an ``int``, as ``GET /api/v1/group-info`` lists it), or with ``group_source="entra"``
        the Entra group's object id (a GUID). A name that is not found raises :class:`PreflightError` listing
        the closest existing names and how each differs (case, spaces, Unicode normalisation, letters).

        Every command takes ``users``: only the members it names (each a Defguard username or an e-mail address,
        case-insensitive) are worked on and reported; a name that is no member's raises :class:`PreflightError`
        with the closest member names, before anything is minted or written.
        """
        clients = self._bind()
        lifetime = roster.checked_arguments(
            group_name, group_source, enrolled=enrolled, lifetime=lifetime, group_id=group_id
        )
        names = roster.checked_users(users)
        progress = guarded_progress(progress)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        with self._guard(name, group_source, write=not dry_run) as (journal, stale):
            run = self._start("provision", name, group_source, checked_id)
            members = await roster.members(clients, run, enrolled=enrolled, mints=True, users=names)
            if only_missing and any(m.status is None for m in members):
                judge = await sync_phases.token_judge(clients, run, None, lifetime=lifetime, refresh_before=None)
                await stored.skip_existing(
                    clients, [m for m in members if m.status is None and m.username not in stale], judge
                )
            plan = Plan.of(members, stale)
            if (note := plan.note()) is not None:
                run.note(note)
            if journal is not None:  # stale members who enrolled since need nothing more
                journal.done(m.username for m in members if m.username and m.status is Status.ALREADY_ENROLLED)
            fatal, interrupted = None, False
            if plan.mint:  # in a dry run, the probe's read only: it reads exactly what the real run reads
                await mint.probe_write(clients, plan.mint[0], run.notes, write=not dry_run)
            if dry_run:
                plan.settle_planned()
            elif plan.mint:
                fatal, interrupted = await mint.mint_and_write(
                    clients,
                    plan.mint,
                    lifetime,
                    progress=progress,
                    stop=stop,
                    journal=journal,
                    stall_after=self.stall_limit(),
                    notes=run.notes,
                    expiry=run.expiry_attribute is True,
                )
            run.mark("write")
            log.info("minted and stored %d tokens (%.2fs)", sum(m.token is not None for m in members), run.seconds)
            gate = getattr(self.defguard, "gate", None)  # a DefguardClient's adaptive limit (not on every port)
            if gate is not None:
                log.info(
                    "Defguard token requests in flight: %d to %d so far (at most %d); halved %d times on answers "
                    "of overload (503, 504, 408 or a timeout)",
                    gate.low,
                    gate.peak,
                    gate.ceiling,
                    gate.halvings,
                )
            if (note := desktop_note(members, run.audit)) is not None:
                run.note(note)
            return run.report(members, dry_run=dry_run, interrupted=interrupted, fatal=fatal)

    provision = blocking(aprovision)

    async def astatus(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        users: Sequence[str] | None = None,
        enrolled: EnrolledPolicy = "auto",
        stop: threading.Event | None = None,
    ) -> Report:
        """Where every member stands, read-only: Defguard state and devices, Entra match, what the attribute set
        holds, and what ``provision`` (with the same ``enrolled`` policy) would mint now (``would_mint``, with the
        reason in ``error``).

        Statuses: ``set`` (token and URL stored), ``partial`` (only one of them), ``not_set`` (nothing, or this
        sign-in may not read them: Graph answers both the same way), and the lookup statuses ``no_email``,
        ``not_found``, ``ambiguous``, ``not_in_defguard``, ``failed``. Stored tokens are carried as
        :class:`Secret` (masked in reports). A complete stored pair also gets its ``token_state``
        (:mod:`.tokens`: the stored expiry and Defguard's activity log), the reason first in ``error``. Nothing is
        minted or written.

        .. versionadded:: 0.1.0
        """
        clients = self._bind()
        roster.checked_arguments(group_name, group_source, enrolled=enrolled, group_id=group_id)
        names = roster.checked_users(users)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        run = self._start("status", name, group_source, checked_id)
        with self._guard(name, group_source, write=False) as (_, stale):
            members = await roster.members(clients, run, enrolled=None, users=names)
            await stored.read_values(clients, run, members, stop)
            judge = await sync_phases.token_judge(clients, run, members, lifetime=None, refresh_before=None)
        judge_status(members, enrolled, DefguardServer(run.version or "").major, stale)
        sync_phases.judge_states(members, judge)
        return run.report(members, interrupted=stop is not None and stop.is_set())

    status = blocking(astatus)

    async def async_(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        users: Sequence[str] | None = None,
        lifetime: dt.timedelta | None = None,
        enrolled: EnrolledPolicy = "auto",
        refresh_before: dt.timedelta | None = None,
        max_changes: int | str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Keep every member's attributes true: read everything, plan, apply, report each member and each outsider
        once; a second run right after changes nothing. Per member ``mint`` a first token (as :meth:`aprovision`,
        same ``enrolled`` rules), ``refresh`` a stored token ``expiring`` (within ``refresh_before``, default a
        quarter of the token's lifetime), ``expired``, ``superseded`` or ``used``, ``clear`` what members with a
        device, disabled ones and users outside the group hold, ``keep`` the rest (:mod:`.sync_plan`,
        :mod:`.tokens`).
        More destructive changes than ``max_changes`` (``N`` or ``"P%"`` of the group; default 10 %, at least 25)
        hold the plan: nothing changes and :attr:`Report.held` says why. ``users``: only those members, as every
        command takes it; users outside the group are then not looked for.

        Statuses: ``provisioned``, ``refreshed``, ``cleared``, ``existing``, ``not_set``, the skip statuses,
        ``failed``, ``planned``; outcomes carry ``token_state`` and ``action``, the report ``plan``.

        .. versionadded:: 0.2.0
        """
        clients = self._bind()
        lifetime, window, limit = roster.checked_sync_arguments(
            group_name,
            group_source,
            enrolled=enrolled,
            lifetime=lifetime,
            group_id=group_id,
            refresh_before=refresh_before,
            max_changes=max_changes,
        )
        names = roster.checked_users(users)
        progress = guarded_progress(progress)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        with self._guard(name, group_source, write=not dry_run) as (journal, stale):
            options = {"dry_run": dry_run, "max_changes": str(limit), "refresh_before": str(window) if window else None}
            run = self._start("sync", name, group_source, checked_id, options=options)
            todo = sync_phases.SyncRun(clients, run, enrolled, lifetime, window, limit, stale, journal, names)
            return await todo.go(dry_run=dry_run, progress=progress, stop=stop, stall_after=self.stall_limit())

    sync = blocking(async_)

    async def aclear(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        users: Sequence[str] | None = None,
        all_members: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Set ``EnrollmentToken`` and ``EnrollmentUrl`` to null for members who have a device in Defguard (the
        token has done its job), or, with ``all_members``, for every member, that have something stored. A member
        without a device keeps its token, whatever Defguard's ``enrolled`` flag says (directory-synced users are
        flagged enrolled from day one).

        Statuses: ``cleared``, ``not_set`` (nothing stored), ``kept`` (no device, without ``all_members``),
        ``planned`` (``dry_run``), ``not_found`` (also for a member without e-mail: its Entra user cannot be
        found), ``ambiguous``, ``failed``, ``interrupted``. Other attributes of the set are left alone.

        .. versionadded:: 0.1.0
        """
        clients = self._bind()
        roster.checked_arguments(group_name, group_source, group_id=group_id)
        names = roster.checked_users(users)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        run = self._start("clear", name, group_source, checked_id, options={"all": all_members, "dry_run": dry_run})
        progress = guarded_progress(progress)
        with self._guard(name, group_source, write=not dry_run) as (journal, stale):
            members = await roster.members(clients, run, enrolled=None, users=names)
            await stored.read_values(clients, run, members, stop)
            todo = judge_clear(members, all_members=all_members, stale=stale)
            if dry_run:
                for member in todo:
                    member.settle(Status.PLANNED)
            elif todo:
                await stored.clear_values(clients, todo, progress, stop, expiry=run.expiry_attribute is True)
            if journal is not None:  # a cleared member holds nothing that could be dead
                journal.done(m.username for m in members if m.username and m.status is Status.CLEARED)
            run.mark("write")
            return run.report(members, dry_run=dry_run, interrupted=stop is not None and stop.is_set())

    clear = blocking(aclear)

    async def acheck(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        probe_write: bool = False,
    ) -> Checklist:
        """Check a setup end to end without changing anything; every failing line carries a fix hint.

        Defguard: reachable (and its version), the API token honoured (license gate), valid and an admin's, the
        group found, its enrollment URL. Graph: sign-in and who it is, permission to read users, the attribute set
        and both attributes (single-valued String, free-form, Available), and the permissions to write and read
        them, judged from the token's claims where it has any (see :mod:`defguard_entra.provisioning.checklist`).
        With ``probe_write`` the write permission is proven instead, as ``provision`` does before its first token:
        a write that changes nothing (a group member's current values written back); without it no PATCH is sent.

        .. versionadded:: 0.1.0
        """
        clients = self._bind()
        roster.checked_arguments(group_name, group_source, group_id=group_id)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        return await probes.checklist(clients, name, group_source, probe_write=probe_write, group_id=checked_id)

    check = blocking(acheck)

    async def aexport(
        self,
        group_name: str | None = None,
        *,
        group_id: int | str | None = None,
        group_source: GroupSource = "defguard",
        users: Sequence[str] | None = None,
        enrolled: EnrolledPolicy = "auto",
        after: Report | None = None,
    ) -> Report:
        """Each member's stored enrollment URL and token, read back from Entra; nothing is minted or written.

        Same preflight and member resolution as :meth:`aprovision`. Members whose attribute set holds both values
        end ``set`` and carry them (``enrollment_url``, ``enrollment_token``); ``not_set`` means Graph returned
        nothing (not provisioned, or this sign-in may not read them); an incomplete pair is ``failed``. ``after``
        is the provision report of the same run: members it failed are not read back, because Entra may still
        hold a token Defguard has already cancelled. :func:`defguard_entra._export.write_export` turns the
        result into files.

        .. versionadded:: 0.1.0
        """
        clients = self._bind()
        roster.checked_arguments(group_name, group_source, enrolled=enrolled, group_id=group_id)
        names = roster.checked_users(users)
        name, checked_id = await self._named(clients, group_name, group_id, group_source)
        run = self._start("export", name, group_source, checked_id)
        members = await roster.members(clients, run, enrolled=enrolled, users=names)
        if after is not None:
            stored.skip_failed_in(members, after)
        await stored.read_configs(clients, run, members)
        return run.report(members)

    export = blocking(aexport)
