"""ProvisioningService: the orchestrator. It decides; the clients speak HTTP.

Order of work in :meth:`ProvisioningService.aprovision` (the scripts' weaknesses 1, 2 and 6 are why):

1. preflight — Defguard reachable and the token an admin's; Graph sign-in; the attribute set defined; the group
   found. Any failure here raises before a single token is minted.
2. members — Defguard users from the bulk list (never one GET per member), classified (disabled, no e-mail,
   already enrolled).
3. Entra — every remaining member resolved in bulk (mail, then UPN, then otherMails); not found and ambiguous
   members are settled *without* a token, so their previous token survives.
4. mint and write — tokens minted in parallel, written in paced ``$batch``es of 20; the first one alone, to check
   that Defguard's ``EnrollmentUrl`` fits Graph's 64-character limit before minting more.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs

from ._checks import (
    READ_ATTRIBUTES,
    WRITE_ATTRIBUTES,
    GraphPrincipal,
    attribute_items,
    defguard_token_items,
    deployment_items,
    permission_item,
    principal_from_claims,
    read_users_item,
)
from ._journal import Journal, RunLock, run_key
from ._plan import (
    ENROLLED_POLICIES,
    EnrolledPolicy,
    Member,
    chunked,
    classify,
    detect_shared_entra_users,
    enrollment_url_problem,
    map_entra_members,
)
from ._scopes import COMMAND_SCOPES
from ._sync import LoopThread
from ._version import __version__
from .config import (
    BATCH_LIMIT,
    DEFAULT_ATTRIBUTE_SET,
    GRAPH_CLI_CLIENT_ID,
    AuthMode,
    Settings,
    proxy_for,
)
from .exceptions import (
    ConfigurationError,
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    EntraAPIError,
    EntraError,
    PreflightError,
    ServiceStateError,
)
from .models import (
    ATTRIBUTE_TOKEN,
    ATTRIBUTE_URL,
    CheckItem,
    Checklist,
    CheckState,
    DefguardDeployment,
    DefguardServer,
    DefguardUser,
    EnrollmentAttributes,
    EntraUser,
    IssuedToken,
    Outcome,
    ProvisioningConfig,
    Report,
    Status,
    TokenKind,
)

if TYPE_CHECKING:
    from ._defguard import DefguardClient
    from ._entra import AsyncEntraClient

__all__ = ["Progress", "ProvisioningService"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while members are processed."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Abort(Exception):  # noqa: N818 - internal: stop minting, settle the rest
    pass


#: Server errors (5xx) in a row that stop minting: before the first token was minted, and after.
_FAULTS_BEFORE_FIRST_TOKEN = 3
_FAULTS_IN_A_ROW = 8
#: Batches minted and not yet stored at any moment: the most an abnormal end can leave stale.
_BATCHES_IN_FLIGHT = 2
#: Group members missing from the user list that are looked up one by one before they are reported.
_MISSING_LOOKUPS = 100


class _Breaker:
    """Tells a permanent server fault from one member's bad luck: a few 5xx answers in a row before any token was
    minted, or more later, mean every token request fails (2.x answers 500 to all of them while its public proxy
    URL does not parse), so minting stops instead of retrying each of thousands of members."""

    def __init__(self) -> None:
        self.streak = 0
        self.minted = False

    def success(self) -> None:
        self.streak = 0
        self.minted = True

    def fault(self, exc: DefguardAPIError) -> None:
        self.streak += 1
        limit = _FAULTS_IN_A_ROW if self.minted else _FAULTS_BEFORE_FIRST_TOKEN
        if self.streak >= limit:
            raise _Abort(f"Defguard answered {exc.status} to {self.streak} token requests in a row ({exc.message})")


class ProvisioningService:
    """Provision a group's members: mint Defguard enrollment tokens and store them in Entra.

    Build it with :meth:`from_settings` (it then owns and closes the clients), or pass your own
    ``DefguardClient`` and ``AsyncEntraClient``. Every operation has an async form (``aprovision``) and a sync form
    (``provision``) that runs on a private event loop, so it works from scripts and from notebooks alike; use one
    style per service instance.
    """

    def __init__(
        self,
        defguard: DefguardClient,
        entra: AsyncEntraClient,
        *,
        attribute_set: str = DEFAULT_ATTRIBUTE_SET,
        concurrency: int = 16,
        owns_clients: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        self.defguard = defguard
        self.entra = entra
        self.state_dir = state_dir
        """Where the journal of tokens in flight and the run lock live (per Defguard instance and group); ``None``
        turns both off (see :mod:`defguard_entra._journal`)."""
        self.attribute_set = attribute_set
        self.concurrency = max(1, concurrency)
        self._owns = owns_clients
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="defguard")
        self._runner: LoopThread | None = None
        self._runner_lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: Any = None,
        prompt: Callable[[str], None] | None = None,
        delegated_scopes: Sequence[str] = COMMAND_SCOPES["provision"],
        state_dir: Path | None = None,
    ) -> Self:
        """Wire real clients from :class:`Settings` (the only place that does). ``credential`` overrides sign-in."""
        from ._defguard import DefguardClient  # noqa: PLC0415 - heavy, only when used
        from ._entra import AsyncEntraClient  # noqa: PLC0415

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
        )
        entra = AsyncEntraClient.from_settings(settings, credential=credential, prompt=prompt, scopes=delegated_scopes)
        return cls(
            defguard,
            entra,
            attribute_set=settings.attribute_set,
            concurrency=settings.concurrency,
            owns_clients=True,
            state_dir=state_dir,
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        with self._runner_lock:
            if self._closed:  # e.g. after ``async with``: no new loop thread that nobody would stop
                coro.close()
                msg = "this ProvisioningService is closed: create a new one (or use it inside one with-block)"
                raise ServiceStateError(msg)
            if self._runner is None:
                self._runner = LoopThread()
        return self._runner.run(coro)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self.entra.aclose()
            self.defguard.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self.aclose())
        finally:
            if self._runner is not None:
                self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _bind(self) -> None:
        """Tie the service to the event loop of its first call: its Graph client lives on that loop, so a call from
        another one (the async forms after the sync ones, or the reverse) would fail deep inside the HTTP stack."""
        loop = asyncio.get_running_loop()
        if self._closed:
            msg = "this ProvisioningService is closed: create a new one (or use it inside one with-block)"
            raise ServiceStateError(msg)
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            msg = (
                "this ProvisioningService was first used from another event loop: use one style per service, the "
                "sync forms (provision, status, …) or the async ones (aprovision, astatus, …) on one loop; create "
                "a new service for the other"
            )
            raise ServiceStateError(msg)

    async def _dg(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking Defguard call on the pooled worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @contextlib.contextmanager
    def _guard(
        self, group_name: str, group_source: str, *, write: bool
    ) -> Iterator[tuple[Journal | None, frozenset[str]]]:
        """The run lock and the journal for a run that may mint or clear (``write``), or only the stale members
        for one that reads; nothing without a :attr:`state_dir`."""
        if self.state_dir is None:
            yield None, frozenset()
            return
        key = run_key(self.defguard.url, group_source, group_name)
        if not write:
            yield None, Journal.peek(self.state_dir, key)
            return
        with (
            RunLock(self.state_dir, key, what=f"group {group_name!r} of {self.defguard.url}"),
            Journal(self.state_dir, key, group_name=group_name, defguard_url=self.defguard.url) as journal,
        ):
            yield journal, journal.stale

    # -- provision -------------------------------------------------------------------------------------------

    def provision(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        lifetime: dt.timedelta | None = None,
        enrolled: EnrolledPolicy = "auto",
        dry_run: bool = False,
        only_missing: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Sync form of :meth:`aprovision`."""
        report: Report = self._run(
            self.aprovision(
                group_name,
                group_source=group_source,
                lifetime=lifetime,
                enrolled=enrolled,
                dry_run=dry_run,
                only_missing=only_missing,
                progress=progress,
                stop=stop,
            )
        )
        return report

    async def aprovision(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
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
        """
        self._bind()
        _check_group_args(group_name, group_source)
        _check_enrolled(enrolled)
        lifetime = _checked_lifetime(lifetime)
        progress = _guarded_progress(progress)
        with self._guard(group_name, group_source, write=not dry_run) as (journal, stale):
            return await self._provision(
                group_name,
                group_source=group_source,
                lifetime=lifetime,
                enrolled=enrolled,
                dry_run=dry_run,
                only_missing=only_missing,
                progress=progress,
                stop=stop,
                journal=journal,
                stale=stale,
            )

    async def _provision(
        self,
        group_name: str,
        *,
        group_source: str,
        lifetime: dt.timedelta | None,
        enrolled: EnrolledPolicy,
        dry_run: bool,
        only_missing: bool,
        progress: Progress | None,
        stop: threading.Event | None,
        journal: Journal | None,
        stale: frozenset[str],
    ) -> Report:
        started = _now()
        notes: list[str] = []
        audit: dict[str, Any] = {}
        clock = _Phases(audit)
        version, members = await self._preflight(group_name, group_source, notes, audit, mints=True)
        clock.mark("preflight")
        log.info("preflight passed: %d members (%.2fs)", len(members), (_now() - started).total_seconds())
        self._classify(members, enrolled, version)
        if group_source == "defguard":
            await self._resolve_in_entra(members)
            clock.mark("resolve")
            log.info("resolved members in Entra (%.2fs)", (_now() - started).total_seconds())
        detect_shared_entra_users(members)
        for member in members:
            if member.status is None and member.entra is not None and member.entra.account_enabled is False:
                member.settle(Status.ENTRA_DISABLED, "the Entra account is disabled: no token minted")
        todo = [m for m in members if m.status is None]
        if todo and only_missing:
            await self._skip_existing([m for m in todo if m.username not in stale])
            todo = [m for m in todo if m.status is None]
        repaired = [m for m in todo if m.username in stale]
        if repaired:
            todo.sort(key=lambda m: m.username not in stale)  # the stale first: their stored token may be dead
            notes.append(
                f"{len(repaired)} member{'s' if len(repaired) != 1 else ''} had a token minted by an earlier run that "
                "did not finish (the token stored in Entra may be dead): given new tokens first"
            )
        if journal is not None:  # stale members who enrolled since need nothing more
            journal.done(m.username for m in members if m.username and m.status is Status.ALREADY_ENROLLED)
        tokens: dict[int, IssuedToken] = {}
        fatal: str | None = None
        interrupted = False
        if dry_run:
            if todo:  # the probe's read, so that a dry run reads exactly what the real run reads
                await self._probe_write(todo[0], notes, write=False)
            for m in todo:
                m.settle(Status.PLANNED)
        elif todo:
            await self._probe_write(todo[0], notes)
            fatal, interrupted = await self._mint_and_write(todo, lifetime, tokens, progress, stop, journal=journal)
        clock.mark("write")
        log.info("minted and stored %d tokens (%.2fs)", len(tokens), (_now() - started).total_seconds())
        desktop = sum(1 for m in members if m.kind is TokenKind.DESKTOP and id(m) in tokens)
        if desktop:
            lifetime = audit.get("defguard_token_lifetime_hours")
            told = f"{lifetime:g} h" if lifetime is not None else "not readable on this Defguard line"
            notes.append(
                f"{desktop} member{'s' if desktop != 1 else ''} got a desktop-activation token (Defguard counts "
                "them as activated: directory sync, SSO sign-in or a password, but no device yet): such tokens "
                f"always get the server's default lifetime ({told}), whatever lifetime was asked for"
            )
        outcomes = tuple(self._outcome(m, tokens.get(id(m))) for m in members)
        return Report(
            command="provision",
            started_at=started,
            finished_at=_now(),
            group_name=group_name,
            group_source=group_source,
            attribute_set=self.attribute_set,
            outcomes=outcomes,
            defguard_url=self.defguard.url,
            defguard_version=version,
            tool_version=__version__,
            dry_run=dry_run,
            interrupted=interrupted,
            notes=tuple(notes),
            audit=audit,
            fatal_error=fatal,
        )

    # -- steps -----------------------------------------------------------------------------------------------

    async def _preflight(
        self, group_name: str, group_source: str, notes: list[str], audit: dict[str, Any], *, mints: bool = False
    ) -> tuple[str, list[Member]]:
        server = await self._dg(self.defguard.server)
        me = await self._dg(self.defguard.me)
        audit["defguard_user"] = me.username
        if not me.is_admin:
            raise PreflightError(f"the Defguard API token belongs to {me.username!r}, who is not an admin")
        if mints:
            await self._check_enrollment_url(server.major, notes, audit)
        await self.entra.sign_in()
        audit["graph_principal"] = (await self._graph_principal()).to_audit()
        audit["graph_url"] = self.entra.base_url
        check = await self.entra.check_attribute_set(self.attribute_set)
        if not check.readable:
            note = (
                f"could not read the definitions of attribute set {self.attribute_set!r} (needs "
                "CustomSecAttributeDefinition.Read.All and the Attribute Definition Reader role): not checked"
            )
            log.warning("%s", note)
            notes.append(note)
        elif not check.set_exists:
            raise PreflightError(
                f"attribute set {self.attribute_set!r} does not exist in Entra: create it with the String attributes "
                f"{ATTRIBUTE_TOKEN} and {ATTRIBUTE_URL} (see docs/entra-setup.md), or pass --attribute-set-name"
            )
        elif check.problems:
            raise PreflightError("; ".join(check.problems) + " (see docs/entra-setup.md)")
        if group_source == "defguard":
            group = await self._dg(self.defguard.find_group, group_name)
            if group is None:
                raise PreflightError(
                    f"Defguard has no group named {group_name!r} (names are case-sensitive): check --group-name"
                )
            users = await self._dg(self.defguard.users)
            missing = sorted(set(group.members) - users.keys())
            for username in missing[:_MISSING_LOOKUPS]:  # a user the unordered pages skipped, or one just added
                found = await self._dg(self.defguard.user, username)
                if found is not None:
                    users[username] = found
            members = []
            for username in sorted(set(group.members)):
                user = users.get(username)
                member = Member(username, user)
                if user is None:
                    member.settle(Status.FAILED, "Defguard: group member missing from the user list")
                members.append(member)
            return server.version, members
        groups = await self.entra.find_groups(group_name)
        if not groups:
            raise PreflightError(f"Entra has no group with displayName {group_name!r}: check --group-name")
        if len(groups) > 1:
            ids = ", ".join(g.id for g in groups)
            raise PreflightError(f"{len(groups)} Entra groups are named {group_name!r} ({ids}): rename one")
        entra_members = await self.entra.group_members(groups[0].id)
        users = await self._dg(self.defguard.users)
        entra_members.sort(key=lambda u: (u.user_principal_name.lower(), u.id))
        return server.version, map_entra_members(entra_members, users.values())

    async def _check_enrollment_url(self, line: int, notes: list[str], audit: dict[str, Any]) -> None:
        """Read Defguard's enrollment URL before any token is minted, and refuse one that cannot work."""
        deployment = await self._dg(self.defguard.deployment)
        audit["enrollment_url"] = deployment.enrollment_url
        if deployment.token_lifetime is not None:
            audit["defguard_token_lifetime_hours"] = round(deployment.token_lifetime.total_seconds() / 3600, 2)
        if deployment.enrollment_url is None:
            note = (
                f"could not read Defguard's enrollment URL ({'; '.join(deployment.problems)}): "
                "the first token minted is checked instead"
            )
            log.warning("%s", note)
            notes.append(note)
            return
        problem = enrollment_url_problem(deployment.enrollment_url, self.defguard.url, line)
        if problem is not None:
            raise PreflightError(problem)

    @staticmethod
    def _classify(members: Sequence[Member], enrolled: EnrolledPolicy, version: str) -> None:
        line = DefguardServer(version).major
        for member in members:
            if member.status is not None or member.defguard is None:
                continue
            fate = classify(member.defguard, enrolled, line)
            if isinstance(fate, TokenKind):
                member.kind = fate
            else:
                member.settle(fate, _SKIP_REASONS.get(fate))

    async def _resolve_in_entra(self, members: Sequence[Member]) -> None:
        pending = [m for m in members if m.status is None]
        if not pending:
            return
        matches = await self.entra.find_users([m.email or "" for m in pending])
        for member in pending:
            match = matches[(member.email or "").strip().lower()]
            if match.user is not None:
                member.entra, member.matched_by = match.user, match.matched_by
            elif match.ambiguous:
                member.matched_by = match.matched_by
                member.settle(Status.AMBIGUOUS, match.error)
            else:
                member.settle(
                    Status.NOT_FOUND,
                    match.error or f"no Entra user has mail, userPrincipalName or otherMails {member.email!r}",
                )

    async def _skip_existing(self, todo: Sequence[Member]) -> None:
        ids = [m.entra.id for m in todo if m.entra is not None]
        errors: dict[str, str] = {}
        stored = await self.entra.read_attributes(self.attribute_set, ids, errors=errors)
        for member in todo:
            pair = EnrollmentAttributes.from_graph(stored.get(member.entra.id)) if member.entra else None
            if member.entra is not None and member.entra.id in errors:  # never mint blind: the read failed
                member.settle(Status.FAILED, f"could not read what is stored ({errors[member.entra.id]}): not minted")
            elif pair is not None and pair.complete:
                member.settle(Status.EXISTING)

    async def _probe_write(self, member: Member, notes: list[str], *, write: bool = True) -> None:
        """Prove, before the first token is minted, that this sign-in may write the attribute set, with a write that
        changes nothing: the member's current values written back, or (when nothing is stored or readable) the set
        with no attribute named. A refusal (401/403) stops the run here, nothing minted."""
        assert member.entra is not None
        entra_id = member.entra.id
        read_errors: dict[str, str] = {}
        values = await self.entra.read_attributes(self.attribute_set, [entra_id], errors=read_errors)
        if entra_id in read_errors:  # no current values to write back: nothing is written, nothing proven
            note = f"write permission not proven: the probe could not read {entra_id} ({read_errors[entra_id]})"
            log.warning("%s", note)
            notes.append(note)
            return
        stored = EnrollmentAttributes.from_graph(values.get(entra_id))
        # What is stored, written back; with nothing stored (or nothing readable) the set with no attribute named.
        same = stored.to_graph() if stored is not None and not stored.not_text else {}
        if not write:
            return
        result = (await self.entra.write_attributes(self.attribute_set, {entra_id: same}))[entra_id]
        if result.ok:
            return
        if result.status in {401, 403}:
            raise PreflightError(
                f"Graph refused to write attribute set {self.attribute_set!r} ({result.error}): grant "
                f"{WRITE_ATTRIBUTES.needs()}; no token was minted"
            )
        note = f"write permission could not be proven with a write that changes nothing ({result.error}): not verified"
        log.warning("%s", note)
        notes.append(note)

    async def _mint_and_write(
        self,
        todo: list[Member],
        lifetime: dt.timedelta | None,
        tokens: dict[int, IssuedToken],
        progress: Progress | None,
        stop: threading.Event | None,
        *,
        journal: Journal | None = None,
    ) -> tuple[str | None, bool]:
        total = len(todo)
        done = 0
        abort: list[str] = []
        breaker = _Breaker()

        async def run(chunk: Sequence[Member]) -> None:
            nonlocal done
            if abort or (stop is not None and stop.is_set()):
                for m in chunk:
                    if stop is not None and stop.is_set():
                        m.settle(Status.INTERRUPTED, "the run was interrupted before this member")
                    else:
                        m.settle(Status.FAILED, f"not attempted: {abort[0]}")
            else:
                try:
                    await self._chunk(chunk, lifetime, tokens, breaker, journal)
                except _Abort as exc:
                    abort.append(str(exc))
            done += len(chunk)
            if progress is not None:
                progress(done, total)

        # One member at a time until a token is minted: a server that fails every token request is found after a
        # few members, and the first token's URL is checked (when the settings could not be read beforehand).
        start = 0
        while start < total and not breaker.minted and not abort and not (stop is not None and stop.is_set()):
            first = todo[start]
            start += 1
            await run([first])
            token = tokens.get(id(first))
            problem = (
                enrollment_url_problem(token.url, self.defguard.url, self.defguard.server().major)
                if token is not None
                else None
            )
            if problem is not None:
                first.settle(Status.FAILED, problem + "; the token minted for this member was not stored")
                for m in todo[start:]:
                    m.settle(Status.FAILED, "not attempted: Defguard's enrollment URL cannot work (see the error)")
                return problem, False
        # Two batches in flight: one minting while the other is written. That bounds the tokens minted and not yet
        # stored (the journal's window) to two batches whatever happens to the run.
        gate = asyncio.Semaphore(_BATCHES_IN_FLIGHT)

        async def gated(chunk: Sequence[Member]) -> None:
            async with gate:
                await run(chunk)

        await asyncio.gather(*(gated(c) for c in chunked(todo[start:], BATCH_LIMIT)))
        interrupted = stop is not None and stop.is_set()
        return None, interrupted

    async def _mint(self, member: Member, lifetime: dt.timedelta | None, breaker: _Breaker) -> IssuedToken | None:
        assert member.defguard is not None
        username = member.defguard.username
        try:
            if member.kind is not TokenKind.DESKTOP:
                try:
                    token = await self._dg(self.defguard.start_enrollment, username, lifetime)
                except DefguardAlreadyActivatedError:
                    # The server's answer is final (1.6: the user has a password; 2.x: a race) and changed nothing.
                    member.kind = TokenKind.DESKTOP
                else:
                    breaker.success()
                    return token
            token = await self._dg(self.defguard.start_desktop, username)
        except DefguardUserDisabledError:
            member.settle(Status.DISABLED, "disabled in Defguard since the user list was read: no token minted")
            return None
        except DefguardAuthError as exc:
            member.settle(Status.FAILED, f"Defguard refused the API token: {exc}")
            raise _Abort(f"Defguard refused the API token mid-run ({exc.status} {exc.message})") from None
        except DefguardUnreachableError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            raise _Abort(f"Defguard became unreachable ({exc})") from None
        except DefguardError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            if isinstance(exc, DefguardAPIError) and exc.status >= 500:
                breaker.fault(exc)
            # A 4xx answer (but a timeout's 408) is a refusal that changed nothing: no token to track.
            member.refused = isinstance(exc, DefguardAPIError) and 400 <= exc.status < 500 and exc.status != 408
            return None
        breaker.success()
        return token

    async def _chunk(
        self,
        chunk: Sequence[Member],
        lifetime: dt.timedelta | None,
        tokens: dict[int, IssuedToken],
        breaker: _Breaker,
        journal: Journal | None = None,
    ) -> None:
        if journal is not None:
            journal.minting(m.username for m in chunk if m.username)
        try:
            await self._mint_and_store(chunk, lifetime, tokens, breaker)
        finally:
            if journal is not None:  # what is confirmed stored, or surely not minted; the rest stays stale
                journal.done(m.username for m in chunk if m.username and _settled_safely(m, id(m) in tokens))

    async def _mint_and_store(
        self,
        chunk: Sequence[Member],
        lifetime: dt.timedelta | None,
        tokens: dict[int, IssuedToken],
        breaker: _Breaker,
    ) -> None:
        minted = await asyncio.gather(*(self._mint(m, lifetime, breaker) for m in chunk), return_exceptions=True)
        to_write: dict[str, Mapping[str, str | None]] = {}
        owners: dict[str, Member] = {}
        abort: BaseException | None = None
        for member, result in zip(chunk, minted, strict=True):
            if isinstance(result, _Abort):
                abort = abort or result
                continue
            if isinstance(result, BaseException):
                raise result
            if result is None:
                continue
            tokens[id(member)] = result
            if enrollment_url_problem(result.url, self.defguard.url, self.defguard.server().major) is not None:
                continue  # settled by the caller (the first token minted) — a URL cannot change between members
            assert member.entra is not None
            to_write[member.entra.id] = EnrollmentAttributes(token=result.token, url=result.url).to_graph()
            owners[member.entra.id] = member
        if to_write:
            try:
                results = await self.entra.write_attributes(self.attribute_set, to_write)
            except EntraError as exc:
                for member in owners.values():
                    member.settle(Status.FAILED, _unusable(f"Graph write failed: {exc}"))
                raise _Abort(f"Microsoft Graph failed mid-run ({exc})") from None
            for entra_id, member in owners.items():
                written = results[entra_id]
                if written.ok:
                    member.settle(Status.PROVISIONED)
                else:
                    member.settle(Status.FAILED, _unusable(f"Graph write failed: {written.error}"))
                if written.retries:
                    tokens[id(member)] = _with_retries(tokens[id(member)], written.retries)
            refused = [r for r in results.values() if not r.ok and r.status in {401, 403}]
            if refused and len(refused) == len(results):  # systematic: the sign-in, not the members
                abort = abort or _Abort(f"Graph refused every write of a batch ({refused[0].error})")
        if abort is not None:
            for member in chunk:
                if member.status is None:
                    member.settle(Status.FAILED, f"not attempted: {abort}")
            raise abort

    def _outcome(self, member: Member, token: IssuedToken | None, *, would_mint: bool = False) -> Outcome:
        entra = member.entra
        status = member.status or Status.FAILED
        keep_token = token is not None and status is Status.PROVISIONED
        return Outcome(
            username=member.username,
            email=member.email if member.defguard is not None else (entra.mail if entra else None),
            status=status,
            matched_by=member.matched_by,
            entra_id=entra.id if entra else None,
            user_principal_name=entra.user_principal_name if entra else None,
            enrollment_url=token.url if token is not None else None,
            enrollment_token=token.token if keep_token and token is not None else None,
            token_kind=token.kind if token is not None else member.kind if status is Status.PLANNED else None,
            token_expires_at=token.expires_at if keep_token and token is not None else None,
            error=member.error if member.status is not None else "internal error: member was never settled",
            retries=token.retries if token is not None else 0,
            defguard_active=member.defguard.active if member.defguard is not None else None,
            defguard_enrolled=member.defguard.enrolled if member.defguard is not None else None,
            devices=member.defguard.devices if member.defguard is not None else None,
            would_mint=member.kind if would_mint else None,
        )

    # -- status, clear and check (issue 5): built on the same preflight and member resolution ---------------------

    def status(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        enrolled: EnrolledPolicy = "auto",
        stop: threading.Event | None = None,
    ) -> Report:
        """Sync form of :meth:`astatus`."""
        report: Report = self._run(self.astatus(group_name, group_source=group_source, enrolled=enrolled, stop=stop))
        return report

    async def astatus(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        enrolled: EnrolledPolicy = "auto",
        stop: threading.Event | None = None,
    ) -> Report:
        """Where every member stands, read-only: Defguard state and devices, Entra match, what the attribute set
        holds, and what ``provision`` (with the same ``enrolled`` policy) would mint now (``would_mint``, with the
        reason in ``error``).

        Statuses: ``set`` (token and URL stored), ``partial`` (only one of them), ``not_set`` (nothing, or this
        sign-in may not read them: Graph answers both the same way), and the lookup statuses ``no_email``,
        ``not_found``, ``ambiguous``, ``not_in_defguard``, ``failed``. Stored tokens are carried as
        :class:`Secret` (masked in reports). Nothing is minted or written.

        .. versionadded:: 0.1.0
        """
        self._bind()
        _check_group_args(group_name, group_source)
        _check_enrolled(enrolled)
        started = _now()
        notes: list[str] = []
        audit: dict[str, Any] = {}
        with self._guard(group_name, group_source, write=False) as (_, stale):
            version, members, stored = await self._members_with_values(group_name, group_source, notes, audit, stop)
        line = DefguardServer(version).major
        for member in members:
            if member.status is None:
                member.kind, why = _would_mint(member, enrolled, line)
                if member.username in stale and not (member.defguard and _has_device(member.defguard)):
                    member.settle(Status.STALE, _STALE_REASON)
                else:
                    member.settle(_stored_status(stored.get(id(member))), why)
        self._note_unreadable(stored, notes)
        return self._report(
            "status",
            started,
            group_name=group_name,
            group_source=group_source,
            version=version,
            members=members,
            stored=stored,
            notes=notes,
            audit=audit,
            stop=stop,
        )

    def clear(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        all_members: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Sync form of :meth:`aclear`."""
        report: Report = self._run(
            self.aclear(
                group_name,
                group_source=group_source,
                all_members=all_members,
                dry_run=dry_run,
                progress=progress,
                stop=stop,
            )
        )
        return report

    async def aclear(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
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
        self._bind()
        _check_group_args(group_name, group_source)
        started = _now()
        notes: list[str] = []
        audit: dict[str, Any] = {"options": {"all": all_members, "dry_run": dry_run}}
        progress = _guarded_progress(progress)
        with self._guard(group_name, group_source, write=not dry_run) as (journal, stale):
            return await self._clear(
                group_name, group_source, all_members, dry_run, progress, stop, journal, stale, notes, audit, started
            )

    async def _clear(  # noqa: PLR0917 - the steps of aclear inside its run guard
        self,
        group_name: str,
        group_source: str,
        all_members: bool,
        dry_run: bool,
        progress: Progress | None,
        stop: threading.Event | None,
        journal: Journal | None,
        stale: frozenset[str],
        notes: list[str],
        audit: dict[str, Any],
        started: dt.datetime,
    ) -> Report:
        version, members, stored = await self._members_with_values(group_name, group_source, notes, audit, stop)
        todo: list[Member] = []
        for member in members:
            if member.status is Status.NO_EMAIL:
                member.settle(Status.NOT_FOUND, "no e-mail address in Defguard, so its Entra user cannot be found")
            if member.status not in {None, Status.NOT_IN_DEFGUARD}:
                continue
            if not stored.get(id(member)):
                member.settle(Status.NOT_SET)
            elif (
                all_members
                or (member.defguard is not None and (_has_device(member.defguard) or not member.defguard.active))
                or (member.entra is not None and member.entra.account_enabled is False)
            ):  # the token did its job, or its owner is offboarded: it has no business staying in Entra
                todo.append(member)
            elif member.defguard is None:
                member.settle(Status.KEPT, "no Defguard user has this member's addresses (--all clears it)")
            elif member.username in stale:
                member.settle(Status.STALE, _STALE_REASON)
            else:
                member.settle(
                    Status.KEPT, "no device in Defguard yet: the stored token may still be needed (--all clears it)"
                )
        clock = _Phases(audit)
        if dry_run:
            for member in todo:
                member.settle(Status.PLANNED)
        elif todo:
            await self._clear_stored(todo, progress, stop)
        if journal is not None:  # a cleared member holds nothing that could be dead
            journal.done(m.username for m in members if m.username and m.status is Status.CLEARED)
        clock.mark("write")
        self._note_unreadable(stored, notes)
        return self._report(
            "clear",
            started,
            group_name=group_name,
            group_source=group_source,
            version=version,
            members=members,
            stored=stored,
            notes=notes,
            audit=audit,
            stop=stop,
            dry_run=dry_run,
        )

    def check(self, group_name: str, *, group_source: str = "defguard", probe_write: bool = False) -> Checklist:
        """Sync form of :meth:`acheck`."""
        result: Checklist = self._run(self.acheck(group_name, group_source=group_source, probe_write=probe_write))
        return result

    async def acheck(self, group_name: str, *, group_source: str = "defguard", probe_write: bool = False) -> Checklist:
        """Check a setup end to end without changing anything; every failing line carries a fix hint.

        Defguard: reachable (and its version), the API token honoured (license gate), valid and an admin's, the
        group found, its enrollment URL. Graph: sign-in and who it is, permission to read users, the attribute set
        and both attributes (single-valued String, free-form, Available), and the permissions to write and read
        them, judged from the token's claims where it has any (see :mod:`defguard_entra._checks`). With
        ``probe_write`` the write permission is proven instead, as ``provision`` does before its first token: a
        write that changes nothing (a group member's current values written back); without it no PATCH is sent.

        .. versionadded:: 0.1.0
        """
        self._bind()
        _check_group_args(group_name, group_source)
        items: list[CheckItem] = []
        version = await self._check_defguard(group_name, group_source, items)
        await self._check_graph(group_name, group_source, items)
        if probe_write:
            items = [i for i in items if i.key != WRITE_ATTRIBUTES.key]
            items.append(await self._probe_item(group_name, group_source))
        return Checklist(
            tuple(items),
            group_name=group_name,
            group_source=group_source,
            attribute_set=self.attribute_set,
            defguard_url=self.defguard.url,
            defguard_version=version,
            graph_url=self.entra.base_url,
        )

    # status and clear: the steps

    async def _members_with_values(
        self,
        group_name: str,
        group_source: str,
        notes: list[str],
        audit: dict[str, Any],
        stop: threading.Event | None,
    ) -> tuple[str, list[Member], dict[int, dict[str, Any] | None]]:
        """Preflight, members, Entra resolution (disabled and enrolled members too), then the stored values."""
        clock = _Phases(audit)
        version, members = await self._preflight(group_name, group_source, notes, audit)
        clock.mark("preflight")
        for member in members:  # unlike provision, disabled and enrolled members are looked up too
            if member.status is None and member.defguard is not None and not member.defguard.email:
                member.settle(Status.NO_EMAIL, _SKIP_REASONS[Status.NO_EMAIL])
        if group_source == "defguard":
            await self._resolve_in_entra(members)
        detect_shared_entra_users(members)
        clock.mark("resolve")
        readable = [m for m in members if m.entra is not None and m.status in {None, Status.NOT_IN_DEFGUARD}]
        if stop is not None and stop.is_set():
            for member in readable:  # attributes not read: say so rather than "nothing stored"
                member.settle(Status.INTERRUPTED, "the run was interrupted before this member")
            return version, members, {}
        errors: dict[str, str] = {}
        ids = [m.entra.id for m in readable if m.entra]
        values = await self.entra.read_attributes(self.attribute_set, ids, errors=errors)
        for member in readable:  # one user deleted since the lookup must not stop the run for everyone
            if member.entra is not None and member.entra.id in errors:
                member.settle(Status.FAILED, f"could not read what is stored: {errors[member.entra.id]}")
        clock.mark("read")
        return version, members, {id(m): values.get(m.entra.id) for m in readable if m.entra}

    async def _clear_stored(
        self, todo: Sequence[Member], progress: Progress | None, stop: threading.Event | None
    ) -> None:
        """Null both attributes, a few batches at a time; stop between slices when asked (in-flight ones finish)."""
        total, done = len(todo), 0
        abort: str | None = None
        for chunk in chunked(todo, BATCH_LIMIT * 4):
            if stop is not None and stop.is_set():
                for member in chunk:
                    member.settle(Status.INTERRUPTED, "the run was interrupted before this member")
            elif abort is not None:
                for member in chunk:
                    member.settle(Status.FAILED, f"not attempted: {abort}")
            else:
                values = {m.entra.id: EnrollmentAttributes().to_graph() for m in chunk if m.entra}
                try:
                    results = await self.entra.write_attributes(self.attribute_set, values)
                except EntraError as exc:
                    abort = f"Microsoft Graph failed mid-run ({exc})"
                    for member in chunk:
                        member.settle(Status.FAILED, f"Graph: {exc}")
                else:
                    for member in chunk:
                        assert member.entra is not None
                        written = results[member.entra.id]
                        if written.ok:
                            member.settle(Status.CLEARED)
                        else:
                            member.settle(Status.FAILED, f"Graph write failed: {written.error}")
            done += len(chunk)
            if progress is not None:
                progress(done, total)

    @staticmethod
    def _note_unreadable(stored: Mapping[int, dict[str, Any] | None], notes: list[str]) -> None:
        if stored and not any(stored.values()):
            notes.append(
                f"Graph returned no attribute values for any of the {len(stored)} members looked up: nothing is "
                "stored, or this sign-in may not read them (needs CustomSecAttributeAssignment.Read.All and the "
                "Attribute Assignment Reader role; Graph answers both the same way)"
            )

    def _report(
        self,
        command: str,
        started: dt.datetime,
        *,
        group_name: str,
        group_source: str,
        version: str,
        members: Sequence[Member],
        stored: Mapping[int, dict[str, Any] | None],
        notes: list[str],
        audit: dict[str, Any],
        stop: threading.Event | None,
        dry_run: bool = False,
    ) -> Report:
        status = command == "status"
        outcomes = tuple(_with_stored(self._outcome(m, None, would_mint=status), stored.get(id(m))) for m in members)
        return Report(
            command=command,
            started_at=started,
            finished_at=_now(),
            group_name=group_name,
            group_source=group_source,
            attribute_set=self.attribute_set,
            outcomes=outcomes,
            defguard_url=self.defguard.url,
            defguard_version=version,
            tool_version=__version__,
            dry_run=dry_run,
            interrupted=stop is not None and stop.is_set(),
            notes=tuple(notes),
            audit=audit,
        )

    # check: the steps

    async def _check_defguard(self, group_name: str, group_source: str, items: list[CheckItem]) -> str | None:
        try:
            server = await self._dg(self.defguard.server)
        except DefguardError as exc:
            items.append(
                CheckItem(
                    "defguard_reachable",
                    "Defguard reachable",
                    CheckState.FAIL,
                    str(exc),
                    "check --url (the Defguard core's base URL), that the server is up and reachable from here, "
                    "and --ca-bundle for a private CA",
                )
            )
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
            me = await self._dg(self.defguard.me)
            owner, is_admin = me.username, me.is_admin
        except DefguardAuthError as exc:
            error = (exc.status, exc.message)
        except DefguardError as exc:
            error, detail = (getattr(exc, "status", 0), str(exc)), str(exc)
        items.extend(defguard_token_items(owner, is_admin, error, detail))
        if error is None and is_admin:
            try:
                deployment: DefguardDeployment | None = await self._dg(self.defguard.deployment)
            except DefguardError:
                deployment = None
            items.extend(deployment_items(deployment, self.defguard.url, server.major, self.attribute_set))
        if group_source != "defguard":
            return server.version
        if error is not None or not is_admin:
            items.append(CheckItem("group", f"group {group_name!r}", CheckState.SKIP, "needs an admin's API token"))
            return server.version
        try:
            groups = await self._dg(self.defguard.groups)
        except DefguardError as exc:
            items.append(CheckItem("group", f"group {group_name!r}", CheckState.FAIL, str(exc), None))
            return server.version
        found = next((g for g in groups if g.name == group_name), None)
        if found is None:
            similar = [g.name for g in groups if g.name.casefold() == group_name.casefold()]
            hint = f"did you mean {similar[0]!r}? names are case-sensitive" if similar else "check --group-name"
            items.append(
                CheckItem(
                    "group",
                    f"group {group_name!r}",
                    CheckState.FAIL,
                    f"Defguard has no group named {group_name!r}",
                    hint,
                )
            )
        else:
            size = len(set(found.members))
            items.append(
                CheckItem(
                    "group",
                    f"group {group_name!r}",
                    CheckState.OK if size else CheckState.WARN,
                    f"{size} member{'s' if size != 1 else ''}" if size else "no members: provision would do nothing",
                )
            )
        return server.version

    async def _check_graph(self, group_name: str, group_source: str, items: list[CheckItem]) -> None:
        rest = ["graph_read_users", "graph_read_definitions", "attribute_set", "attribute_token", "attribute_url"]
        rest += [WRITE_ATTRIBUTES.key, READ_ATTRIBUTES.key] + (["group"] if group_source == "entra" else [])

        def skip_rest(reason: str) -> None:
            items.extend(CheckItem(k, k.replace("_", " "), CheckState.SKIP, reason) for k in rest)

        try:
            await self.entra.sign_in()
            principal = await self._graph_principal()
        except EntraError as exc:
            items.append(
                CheckItem(
                    "graph_sign_in",
                    "Microsoft Graph sign-in",
                    CheckState.FAIL,
                    str(exc),
                    "sign in again or get a fresh token: it must be for Microsoft Graph in this tenant and cloud "
                    "(check --auth, --tenant-id, --client-id, --cloud and the AZURE_* or DEFGUARD_ENTRA_GRAPH_TOKEN "
                    "variables)",
                )
            )
            skip_rest("needs a Graph sign-in")
            return
        items.append(CheckItem("graph_sign_in", "Microsoft Graph sign-in", CheckState.OK, principal.describe()))
        try:
            items.append(read_users_item(await self.entra.can_read_users()))
            if group_source == "entra":
                items.append(await self._check_entra_group(group_name))
            items.extend(attribute_items(await self.entra.check_attribute_set(self.attribute_set), self.attribute_set))
        except EntraError as exc:
            done = {item.key for item in items}
            items.append(CheckItem("graph", "Microsoft Graph", CheckState.FAIL, str(exc), "try again later"))
            rest = [k for k in rest if k not in done]
            skip_rest("Graph failed")
            return
        judged = permission_item(WRITE_ATTRIBUTES, principal)
        items.append(
            attrs.evolve(
                judged,
                detail=f"{judged.detail} (judged from the access token's claims only)",
                hint=judged.hint or "prove it with a write that changes nothing: check --probe-write",
            )
        )
        items.append(permission_item(READ_ATTRIBUTES, principal))

    async def _probe_item(self, group_name: str, group_source: str) -> CheckItem:
        """``check --probe-write``: the write probe on the first group member found in Entra."""
        title = f"permission to write attribute set {self.attribute_set!r} (probed)"
        key = WRITE_ATTRIBUTES.key
        try:
            target = await self._probe_target(group_name, group_source)
            if target is None:
                return CheckItem(key, title, CheckState.SKIP, "no group member was found in Entra to probe with")
            notes: list[str] = []
            await self._probe_write(Member(None, entra=target), notes)
        except PreflightError as exc:
            return CheckItem(
                key, title, CheckState.FAIL, str(exc).split(": grant ")[0], f"grant {WRITE_ATTRIBUTES.needs()}"
            )
        except (DefguardError, EntraError) as exc:
            return CheckItem(key, title, CheckState.WARN, f"not probed: {exc}", None)
        if notes:
            return CheckItem(key, title, CheckState.WARN, notes[0], None)
        return CheckItem(
            key, title, CheckState.OK, f"a write that changes nothing was accepted for {target.user_principal_name}"
        )

    async def _probe_target(self, group_name: str, group_source: str) -> EntraUser | None:
        if group_source == "entra":
            groups = await self.entra.find_groups(group_name)
            members = await self.entra.group_members(groups[0].id) if len(groups) == 1 else []
            return members[0] if members else None
        group = await self._dg(self.defguard.find_group, group_name)
        if group is None:
            return None
        users = await self._dg(self.defguard.users)
        emails = [u.email for name in sorted(set(group.members)) if (u := users.get(name)) and u.email]
        if not emails:
            return None
        match = (await self.entra.find_users(emails[:1]))[emails[0].strip().lower()]
        return match.user

    async def _check_entra_group(self, group_name: str) -> CheckItem:
        title = f"Entra group {group_name!r}"
        try:
            groups = await self.entra.find_groups(group_name)
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
            return CheckItem(
                "group", title, CheckState.FAIL, "no Entra group has this displayName", "check --group-name"
            )
        if len(groups) > 1:
            return CheckItem(
                "group", title, CheckState.FAIL, f"{len(groups)} Entra groups have this displayName", "rename one"
            )
        members = await self.entra.group_members(groups[0].id)
        size = len(members)
        return CheckItem(
            "group", title, CheckState.OK if size else CheckState.WARN, f"{size} user member{'s' if size != 1 else ''}"
        )

    async def _graph_principal(self) -> GraphPrincipal:
        """Who Graph sees: the token's claims when it is a JWT, else ``/me`` (a 400 there means app-only)."""
        principal = principal_from_claims(await self.entra.token_claims()) or GraphPrincipal("unknown")
        if principal.kind == "unknown" or (principal.kind == "delegated" and not principal.user):
            try:
                me = await self.entra.me()
            except EntraAPIError as exc:
                if exc.status == 400:  # "/me request is only valid with delegated authentication flow"
                    principal = attrs.evolve(principal, kind="application")
            else:
                principal = attrs.evolve(
                    principal, kind="delegated", user=str(me.get("userPrincipalName") or "") or None
                )
        if principal.client_id is None:
            graph = self.entra.settings
            client_id = graph.client_id or graph.environment.get("AZURE_CLIENT_ID")
            if client_id is None and graph.resolved_auth() in {AuthMode.INTERACTIVE, AuthMode.DEVICE_CODE}:
                client_id = GRAPH_CLI_CLIENT_ID
            principal = attrs.evolve(principal, client_id=client_id)
        return principal

    # -- export: read back what provision stored, for device-management roll-outs --------------------------------

    def export(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        enrolled: EnrolledPolicy = "auto",
        after: Report | None = None,
    ) -> Report:
        """Sync form of :meth:`aexport`."""
        report: Report = self._run(self.aexport(group_name, group_source=group_source, enrolled=enrolled, after=after))
        return report

    async def aexport(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        enrolled: EnrolledPolicy = "auto",
        after: Report | None = None,
    ) -> Report:
        """Each member's stored enrollment URL and token, read back from Entra; nothing is minted or written.

        Same preflight and member resolution as :meth:`aprovision`. Members whose attribute set holds both values
        end ``set`` and carry them (``enrollment_url``, ``enrollment_token``); ``not_set`` means Graph returned
        nothing (not provisioned, or this sign-in may not read them); an incomplete pair is ``failed``. ``after``
        is the provision report of the same run: members it failed are not read back, because Entra may still
        hold a token Defguard has already cancelled. :func:`defguard_entra._client_config.write_export` turns the
        result into files.

        .. versionadded:: 0.1.0
        """
        from ._client_config import config_from_attributes  # noqa: PLC0415
        from .exceptions import ClientConfigError  # noqa: PLC0415

        self._bind()
        _check_group_args(group_name, group_source)
        _check_enrolled(enrolled)
        started = _now()
        notes: list[str] = []
        audit: dict[str, Any] = {}
        version, members = await self._preflight(group_name, group_source, notes, audit)
        self._classify(members, enrolled, version)
        if group_source == "defguard":
            await self._resolve_in_entra(members)
        detect_shared_entra_users(members)
        if after is not None:
            failed = {
                o.username or o.entra_id: o.error
                for o in after.outcomes
                if o.status in {Status.FAILED, Status.INTERRUPTED}
            }
            for member in members:
                key = member.username or (member.entra.id if member.entra else None)
                if member.status is None and key is not None and key in failed:
                    member.settle(
                        Status.FAILED,
                        f"provision failed for this member in this run ({failed[key]}): no file written",
                    )
        todo = [m for m in members if m.status is None and m.entra is not None]
        ids = [m.entra.id for m in todo if m.entra is not None]
        errors: dict[str, str] = {}
        stored = await self.entra.read_attributes(self.attribute_set, ids, errors=errors) if ids else {}
        for member in todo:
            if member.entra is not None and member.entra.id in errors:
                member.settle(Status.FAILED, f"could not read what is stored: {errors[member.entra.id]}")
        configs: dict[int, ProvisioningConfig] = {}
        for member in todo:
            assert member.entra is not None
            if member.status is not None:  # its read failed
                continue
            try:
                configs[id(member)] = config_from_attributes(stored.get(member.entra.id), self.attribute_set)
            except ClientConfigError as exc:
                if exc.reason == "missing":
                    member.settle(Status.NOT_SET, f"{exc}: not provisioned yet, or not readable by this sign-in")
                else:
                    member.settle(Status.FAILED, f"incomplete: {exc}: run provision again for this member")
            else:
                member.settle(Status.SET)
        if todo and all(m.status is Status.NOT_SET for m in todo):
            notes.append(
                f"none of the {len(todo)} resolved members has readable attributes in set {self.attribute_set!r}: "
                "if provision has run, this sign-in may not read them: it needs CustomSecAttributeAssignment.Read.All "
                "and the Attribute Assignment Reader role (Graph answers 'not assigned' and 'not permitted' the same "
                "way)"
            )
        outcomes = tuple(self._export_outcome(m, configs.get(id(m))) for m in members)
        return Report(
            command="export",
            started_at=started,
            finished_at=_now(),
            group_name=group_name,
            group_source=group_source,
            attribute_set=self.attribute_set,
            outcomes=outcomes,
            defguard_url=self.defguard.url,
            defguard_version=version,
            tool_version=__version__,
            notes=tuple(notes),
            audit=audit,
        )

    @staticmethod
    def _export_outcome(member: Member, config: ProvisioningConfig | None) -> Outcome:
        entra = member.entra
        return Outcome(
            username=member.username,
            email=member.email if member.defguard is not None else (entra.mail if entra else None),
            status=member.status or Status.FAILED,
            matched_by=member.matched_by,
            entra_id=entra.id if entra else None,
            user_principal_name=entra.user_principal_name if entra else None,
            enrollment_url=config.enrollment_url if config is not None else None,
            enrollment_token=config.enrollment_token if config is not None else None,
            error=member.error if member.status is not None else "internal error: member was never settled",
        )


_STALE_REASON = (
    "a token was minted for this member by a run that did not finish, and may not be stored: the token in Entra may "
    "be dead; run provision for the group to give the member a new one"
)


def _settled_safely(member: Member, minted: bool) -> bool:
    """May the journal forget this member? Yes when its new token is stored, or when Defguard surely minted nothing
    (it refused with a 4xx, which changes nothing); not after a write failed, a timeout or a 5xx."""
    if member.status is Status.PROVISIONED or member.refused:
        return True
    if minted:
        return False
    return member.status in {Status.DISABLED, Status.INTERRUPTED} or (
        member.status is Status.FAILED and bool(member.error) and "not attempted" in (member.error or "")
    )


def _guarded_progress(progress: Progress | None) -> Progress | None:
    """``progress`` that cannot end a run: a display problem (a raising callback, a closed pipe) must not leave
    tokens minted and not stored. After the first exception it is logged once and not called again."""
    if progress is None:
        return None
    broken = False

    def call(done: int, total: int) -> None:
        nonlocal broken
        if broken:
            return
        try:
            progress(done, total)
        except Exception:
            broken = True
            log.warning("the progress callback raised; progress reports stop here", exc_info=True)

    return call


def _checked_lifetime(lifetime: object) -> dt.timedelta | None:
    """``lifetime=`` as the CLI checks it: a :class:`datetime.timedelta` or a duration string (``"2d"``), positive,
    at most 366 days; ``None`` for the server's default."""
    from ._durations import MAX_TOKEN_LIFETIME, parse_lifetime  # noqa: PLC0415

    if lifetime is None:
        return None
    if isinstance(lifetime, str):
        return parse_lifetime(lifetime)
    if not isinstance(lifetime, dt.timedelta):
        msg = f"lifetime must be a datetime.timedelta or a duration string such as '2d', not {type(lifetime).__name__}"
        raise TypeError(msg)
    if lifetime <= dt.timedelta(0) or lifetime > MAX_TOKEN_LIFETIME:
        raise ConfigurationError(f"lifetime {lifetime} must be positive and at most {MAX_TOKEN_LIFETIME.days} days")
    return lifetime


def _check_enrolled(enrolled: str) -> None:
    if enrolled not in ENROLLED_POLICIES:
        choices = ", ".join(repr(p) for p in ENROLLED_POLICIES)
        raise ConfigurationError(f"enrolled must be one of {choices}, not {enrolled!r}")


def _check_group_args(group_name: str, group_source: str) -> None:
    if not group_name.strip():
        raise ConfigurationError("group_name is empty: give the name of the group")
    if group_source not in {"defguard", "entra"}:
        raise ConfigurationError(f"group_source must be 'defguard' or 'entra', not {group_source!r}")


def _has_device(user: DefguardUser) -> bool:
    """Has this user enrolled a device? Judged by Defguard's flag only when the device count is unknown."""
    return user.devices > 0 if user.devices is not None else user.enrolled


def _would_mint(member: Member, enrolled: EnrolledPolicy, line: int) -> tuple[TokenKind | None, str | None]:
    """What ``provision`` would mint for a resolved member now, and why in words (``status``'s why column)."""
    if member.defguard is None:
        return None, None
    fate = classify(member.defguard, enrolled, line)
    devices = member.defguard.devices
    if fate is TokenKind.ENROLLMENT:
        return fate, "provision would mint an enrollment token (no device yet)"
    if fate is TokenKind.DESKTOP:
        why = f"{devices} device(s), enrolled=desktop" if devices else "no device, but Defguard counts it activated"
        return fate, f"provision would mint a desktop-activation token ({why})"
    return None, _SKIP_REASONS.get(fate, f"provision would mint nothing ({fate})")


def _stored_status(values: Mapping[str, Any] | None) -> Status:
    pair = EnrollmentAttributes.from_graph(values)
    if pair is None or pair.empty:
        return Status.NOT_SET
    return Status.SET if pair.complete else Status.PARTIAL


def _with_stored(outcome: Outcome, values: Mapping[str, Any] | None) -> Outcome:
    """The outcome with what the attribute set held when read (the token as a :class:`Secret`)."""
    pair = EnrollmentAttributes.from_graph(values)
    if pair is None:
        return outcome
    return attrs.evolve(outcome, enrollment_url=pair.url, enrollment_token=pair.token)


class _Phases:
    """Seconds per phase of a run, recorded in ``audit["timings"]`` (for the report's audit section)."""

    def __init__(self, audit: dict[str, Any]) -> None:
        self._timings: dict[str, float] = audit.setdefault("timings", {})
        self._last = time.monotonic()

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self._timings[f"{phase}_seconds"] = round(self._timings.get(f"{phase}_seconds", 0.0) + now - self._last, 3)
        self._last = now


_SKIP_REASONS = {
    Status.DISABLED: "disabled in Defguard: no token minted",
    Status.NO_EMAIL: "no e-mail address in Defguard, so no way to find the Entra user: add one in Defguard",
    Status.ALREADY_ENROLLED: (
        "has a device in Defguard: already enrolled (--enrolled desktop gives a desktop-activation token)"
    ),
}


def _unusable(reason: str) -> str:
    return (
        f"{reason}; the token minted for this member is unusable (Defguard also cancelled the previous one): "
        "re-run to issue a new token"
    )


def _with_retries(token: IssuedToken, extra: int) -> IssuedToken:
    return attrs.evolve(token, retries=token.retries + extra)
