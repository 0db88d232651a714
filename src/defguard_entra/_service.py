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
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs

from ._entra import BATCH_LIMIT, chunked
from ._loop import LoopThread
from ._plan import EnrolledPolicy, Member, classify, detect_shared_entra_users, map_entra_members
from ._version import __version__
from .config import ATTRIBUTE_TOKEN, ATTRIBUTE_URL, ATTRIBUTE_VALUE_LIMIT, DEFAULT_ATTRIBUTE_SET, Settings
from .exceptions import (
    ConfigurationError,
    DefguardAuthError,
    DefguardError,
    DefguardUnreachableError,
    EntraError,
    PreflightError,
)
from .models import IssuedToken, Outcome, Report, Status, TokenKind

if TYPE_CHECKING:
    from ._defguard import DefguardClient
    from ._entra import AsyncEntraClient

__all__ = ["Progress", "ProvisioningService"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while members are processed."""

#: Delegated scopes ``provision`` asks for in interactive sign-in (least privilege; ``graph-api.md`` section 8).
PROVISION_SCOPES = (
    "User.Read.All",
    "CustomSecAttributeAssignment.ReadWrite.All",
    "CustomSecAttributeDefinition.Read.All",
)
GROUP_SCOPES = ("GroupMember.Read.All",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Abort(Exception):  # noqa: N818 - internal: stop minting, settle the rest
    pass


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
    ) -> None:
        self.defguard = defguard
        self.entra = entra
        self.attribute_set = attribute_set
        self.concurrency = max(1, concurrency)
        self._owns = owns_clients
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="defguard")
        self._runner: LoopThread | None = None
        self._runner_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: Any = None,
        prompt: Callable[[str], None] | None = None,
        delegated_scopes: Sequence[str] = PROVISION_SCOPES,
    ) -> Self:
        """Wire real clients from :class:`Settings` (the only place that does). ``credential`` overrides sign-in."""
        from ._credentials import build_credential, graph_scopes  # noqa: PLC0415 - heavy, only when used
        from ._defguard import DefguardClient  # noqa: PLC0415
        from ._entra import AsyncEntraClient  # noqa: PLC0415

        settings.validate()
        url, token = settings.require_defguard()
        cred = credential if credential is not None else build_credential(settings.graph, prompt=prompt)
        defguard = DefguardClient(
            url,
            token,
            timeout=settings.timeout,
            ca_bundle=settings.ca_bundle,
            retry=settings.retry,
            pool_size=settings.concurrency,
        )
        entra = AsyncEntraClient(
            settings.graph,
            cred,
            scopes=graph_scopes(settings.graph, delegated_scopes),
            retry=settings.retry,
            write_rate=settings.graph_write_rate,
            timeout=max(settings.timeout, 30.0),
        )
        return cls(
            defguard, entra, attribute_set=settings.attribute_set, concurrency=settings.concurrency, owns_clients=True
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        with self._runner_lock:
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

    async def _dg(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking Defguard call on the pooled worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- provision -------------------------------------------------------------------------------------------

    def provision(
        self,
        group_name: str,
        *,
        group_source: str = "defguard",
        lifetime: dt.timedelta | None = None,
        enrolled: EnrolledPolicy = "skip",
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
        enrolled: EnrolledPolicy = "skip",
        dry_run: bool = False,
        only_missing: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Report:
        """Provision every member of ``group_name``; returns a :class:`Report` with each member exactly once.

        Raises (before any token is minted) :class:`PreflightError`, :class:`DefguardError` or
        :class:`EntraError` when the run cannot start. Per-member problems are outcomes, not exceptions.
        """
        if not group_name.strip():
            raise ConfigurationError("--group-name is empty: give the name of the group to provision")
        if group_source not in {"defguard", "entra"}:
            raise ConfigurationError("--group-source must be 'defguard' or 'entra'")
        if enrolled not in {"skip", "desktop"}:
            raise ConfigurationError("--enrolled must be 'skip' or 'desktop'")
        started = _now()
        notes: list[str] = []
        audit: dict[str, Any] = {}
        version, members = await self._preflight(group_name, group_source, notes, audit)
        self._classify(members, enrolled)
        if group_source == "defguard":
            await self._resolve_in_entra(members)
        detect_shared_entra_users(members)
        todo = [m for m in members if m.status is None]
        if todo and only_missing:
            await self._skip_existing(todo)
            todo = [m for m in todo if m.status is None]
        tokens: dict[int, IssuedToken] = {}
        fatal: str | None = None
        interrupted = False
        if dry_run:
            for m in todo:
                m.settle(Status.PLANNED)
        elif todo:
            fatal, interrupted = await self._mint_and_write(todo, lifetime, tokens, progress, stop)
        if enrolled == "desktop" and any(m.kind is TokenKind.DESKTOP for m in members):
            notes.append("desktop-configuration tokens use the Defguard server's default lifetime")
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
        self, group_name: str, group_source: str, notes: list[str], audit: dict[str, Any]
    ) -> tuple[str, list[Member]]:
        server = await self._dg(self.defguard.server)
        me = await self._dg(self.defguard.me)
        audit["defguard_user"] = me.username
        if not me.is_admin:
            raise PreflightError(f"the Defguard API token belongs to {me.username!r}, who is not an admin")
        await self.entra.sign_in()
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
            ids = ", ".join(str(g.get("id")) for g in groups)
            raise PreflightError(f"{len(groups)} Entra groups are named {group_name!r} ({ids}): rename one")
        entra_members = await self.entra.group_members(str(groups[0]["id"]))
        users = await self._dg(self.defguard.users)
        entra_members.sort(key=lambda u: (u.user_principal_name.lower(), u.id))
        return server.version, map_entra_members(entra_members, users.values())

    @staticmethod
    def _classify(members: Sequence[Member], enrolled: EnrolledPolicy) -> None:
        for member in members:
            if member.status is not None or member.defguard is None:
                continue
            fate = classify(member.defguard, enrolled)
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
                    Status.NOT_FOUND, f"no Entra user has mail, userPrincipalName or otherMails {member.email!r}"
                )

    async def _skip_existing(self, todo: Sequence[Member]) -> None:
        ids = [m.entra.id for m in todo if m.entra is not None]
        stored = await self.entra.read_attributes(self.attribute_set, ids)
        for member in todo:
            values = stored.get(member.entra.id) if member.entra else None
            if values and values.get(ATTRIBUTE_TOKEN) and values.get(ATTRIBUTE_URL):
                member.settle(Status.EXISTING)

    async def _mint_and_write(
        self,
        todo: list[Member],
        lifetime: dt.timedelta | None,
        tokens: dict[int, IssuedToken],
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> tuple[str | None, bool]:
        total = len(todo)
        done = 0
        abort: list[str] = []

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
                    await self._chunk(chunk, lifetime, tokens)
                except _Abort as exc:
                    abort.append(str(exc))
            done += len(chunk)
            if progress is not None:
                progress(done, total)

        # The first member alone: its answer tells whether Defguard's EnrollmentUrl fits in Graph at all.
        await run(todo[:1])
        first = todo[0]
        token = tokens.get(id(first))
        if token is not None and len(token.url) > ATTRIBUTE_VALUE_LIMIT:
            message = (
                f"Defguard's enrollment URL {token.url!r} has {len(token.url)} characters, more than Graph's "
                f"{ATTRIBUTE_VALUE_LIMIT}-character limit for an attribute value: shorten Defguard's public "
                "enrollment URL (1.6: DEFGUARD_ENROLLMENT_URL; 2.x: the public proxy URL setting)"
            )
            first.settle(Status.FAILED, message + "; the token minted for this member was not stored")
            for m in todo[1:]:
                m.settle(Status.FAILED, "not attempted: the enrollment URL is too long for Entra")
            return message, False
        parallel = max(1, min(8, self.concurrency // BATCH_LIMIT + 2))
        gate = asyncio.Semaphore(parallel)

        async def gated(chunk: Sequence[Member]) -> None:
            async with gate:
                await run(chunk)

        await asyncio.gather(*(gated(c) for c in chunked(todo[1:], BATCH_LIMIT)))
        interrupted = stop is not None and stop.is_set()
        return None, interrupted

    async def _mint(self, member: Member, lifetime: dt.timedelta | None) -> IssuedToken | None:
        assert member.defguard is not None
        username = member.defguard.username
        try:
            if member.kind is TokenKind.DESKTOP:
                return await self._dg(self.defguard.start_desktop, username)
            return await self._dg(self.defguard.start_enrollment, username, lifetime)
        except DefguardAuthError as exc:
            member.settle(Status.FAILED, f"Defguard refused the API token: {exc}")
            raise _Abort(f"Defguard refused the API token mid-run ({exc.status} {exc.message})") from None
        except DefguardUnreachableError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            raise _Abort(f"Defguard became unreachable ({exc})") from None
        except DefguardError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            return None

    async def _chunk(
        self, chunk: Sequence[Member], lifetime: dt.timedelta | None, tokens: dict[int, IssuedToken]
    ) -> None:
        minted = await asyncio.gather(*(self._mint(m, lifetime) for m in chunk), return_exceptions=True)
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
            if len(result.url) > ATTRIBUTE_VALUE_LIMIT:
                continue  # settled by the caller (first member) — a URL cannot change between members
            assert member.entra is not None
            to_write[member.entra.id] = {ATTRIBUTE_TOKEN: result.token.value, ATTRIBUTE_URL: result.url}
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
        if abort is not None:
            for member in chunk:
                if member.status is None:
                    member.settle(Status.FAILED, f"not attempted: {abort}")
            raise abort

    def _outcome(self, member: Member, token: IssuedToken | None) -> Outcome:
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
        )


_SKIP_REASONS = {
    Status.DISABLED: "disabled in Defguard: no token minted",
    Status.NO_EMAIL: "no e-mail address in Defguard, so no way to find the Entra user: add one in Defguard",
    Status.ALREADY_ENROLLED: "already enrolled in Defguard (--enrolled desktop gives a desktop-configuration token)",
}


def _unusable(reason: str) -> str:
    return (
        f"{reason}; the token minted for this member is unusable (Defguard also cancelled the previous one): "
        "re-run to issue a new token"
    )


def _with_retries(token: IssuedToken, extra: int) -> IssuedToken:
    return attrs.evolve(token, retries=token.retries + extra)
