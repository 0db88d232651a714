"""Mint and write: Defguard tokens minted in parallel, one member at a time, stored in Entra in ``$batch``es.

The write probe comes first (:mod:`.probe`). Then one member at a time until a token is minted, so that a server
failing every token request is found after a few members and the first token's URL is checked; then every member
takes a place in the window of 60 tokens minted and not yet stored (:mod:`._window`), is journaled, minted, and
queued for its write (:mod:`._writes`), which forms batches of up to 20 from the tokens ready. A member being
retried holds only its own place; the journal holds at most the window open whatever happens to the run. A
watchdog ends a run neither service answers; the breaker and the abort rules stop minting when the fault is not
one member's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from ..config import BATCH_LIMIT
from ..exceptions import (
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardError,
    DefguardNotSentError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    EntraError,
)
from ..models import EnrollmentAttributes, IssuedToken, Status, TokenKind
from ._breaker import Abort, Breaker
from ._ports import Clients
from ._window import Window
from ._writes import WriteQueue
from .journal import Journal
from .plan import Member, enrollment_url_problem, settle_stalled, settled_safely, unusable
from .probe import probe_write
from .report import Progress, log

__all__ = ["mint_and_write", "probe_write"]


T = TypeVar("T")


class _NotStarted(Exception):  # noqa: N818 - internal: a token request that was never sent
    pass


#: Tokens minted (or being minted) and not yet stored at any moment: three batches' worth, the most an abnormal end
#: can leave stale. One place per member, from before its token request until its write is final. Three, because a
#: place is held through three stages of about the same length (its token request, the wait for its batch to fill,
#: the batch's write: 25, 15 and 30 ms at 20 ms of latency): with two batches, one stage always stood idle and the
#: window, not the 16 token workers, set the pace (docs/performance.md, 2026-12-02 morning).
_UNSTORED_TOKENS = 3 * BATCH_LIMIT


@attrs.define
class _Minting:
    """One provision run's minting: the members to mint for, the breaker, the abort reason, the journal."""

    clients: Clients
    todo: Sequence[Member]
    lifetime: dt.timedelta | None
    progress: Progress | None
    stop: threading.Event | None
    journal: Journal | None
    stall_after: float | None = None
    #: Store ``EnrollmentTokenExpiresAt`` with each token (the attribute set defines it).
    expiry: bool = False
    breaker: Breaker = attrs.field(factory=Breaker)
    abort: list[str] = attrs.field(factory=list)
    done: int = 0
    #: Why no token request may be sent any more (set by a worker or the watchdog; read by the workers).
    halt: str | None = None
    stalled: str | None = None
    started: list[Member] = attrs.field(factory=list)
    progressed: float = attrs.field(factory=time.monotonic)

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def url_problem(self, token: IssuedToken) -> str | None:
        defguard = self.clients.defguard
        return enrollment_url_problem(token.url, defguard.url, defguard.server().major)

    async def run(self) -> tuple[str | None, bool]:
        """Mint and store under the watchdog: when neither service answers for :attr:`stall_after` seconds, the
        work is cancelled and every member not settled ends ``failed``, saying that the run stalled."""
        work = asyncio.ensure_future(self.pipeline())
        watch = asyncio.ensure_future(self.watch(work))
        try:
            return await work
        except asyncio.CancelledError:
            if self.stalled is None:  # cancelled from outside: not ours to settle
                raise
            settle_stalled(self.todo, self.started, self.stalled)
            return None, False
        finally:
            watch.cancel()

    async def watch(self, work: asyncio.Future[Any]) -> None:
        limit = self.stall_after
        if limit is None or limit <= 0:
            return
        defguard, entra = self.clients.defguard.activity, self.clients.entra.activity
        while not work.done():
            quiet = time.monotonic() - max(defguard.quiet_since, entra.quiet_since, self.progressed)
            if quiet >= limit:
                self.stalled = self.halt = (
                    f"the run stalled: neither Defguard nor Microsoft Graph answered for {limit:g} s (--stall-timeout)"
                )
                log.error("%s; stopping the run", self.stalled)
                work.cancel()
                return
            await asyncio.sleep(min(1.0, max(0.02, limit - quiet)))

    async def pipeline(self) -> tuple[str | None, bool]:
        todo, total = self.todo, len(self.todo)
        start = 0
        while start < total and not self.breaker.minted and not self.abort and not self.stopped:
            first = todo[start]
            start += 1
            await self.step([first])
            problem = self.url_problem(first.token) if first.token is not None else None
            if problem is not None:
                first.settle(Status.FAILED, problem + "; the token minted for this member was not stored")
                for m in todo[start:]:
                    m.settle(Status.FAILED, "not attempted: Defguard's enrollment URL cannot work (see the error)")
                return problem, False
        await self.stream(todo[start:])
        return None, self.stopped

    async def stream(self, members: Sequence[Member]) -> None:
        """Mint one member at a time within the window and store the tokens through the queue of writes: each
        member holds one place from before its token is requested (and it is in the journal) until its write is
        final, so a member being retried, on either side, holds up only itself."""
        window = Window(_UNSTORED_TOKENS)
        holding: set[int] = set()

        def release(member: Member) -> None:  # the member's place, given back once
            if id(member) in holding:
                holding.discard(id(member))
                window.give()

        queue = WriteQueue(lambda batch: self.store(batch, release))
        mints: list[asyncio.Future[None]] = []
        at = 0
        try:
            while at < len(members) and not self.abort and not self.stopped:
                n = await window.take_some(min(BATCH_LIMIT, len(members) - at))
                if self.abort or self.stopped:
                    window.give(n)
                    break
                group = members[at : at + n]
                at += n
                self.started.extend(group)
                holding.update(id(m) for m in group)
                if self.journal is not None:  # on disk before any of their tokens is requested
                    self.journal.minting(m.username for m in group if m.username)
                for member in group:
                    queue.minting()
                    mints.append(asyncio.ensure_future(self.mint_into(member, queue, release)))
            self.not_started(members[at:])
            await asyncio.gather(*mints)
            await queue.drain()
        finally:
            for mint in mints:
                mint.cancel()
            queue.cancel()

    def not_started(self, rest: Sequence[Member]) -> None:
        for m in rest:
            if self.stopped:
                m.settle(Status.INTERRUPTED, "the run was interrupted before this member")
            else:
                m.settle(Status.FAILED, f"not attempted: {self.abort[0]}")
        if rest and not self.stopped:  # interrupted: progress counts only the members worked on
            self.count(len(rest))

    def values(self, token: IssuedToken) -> dict[str, str | None]:
        """What one member's write stores: token and URL, and with :attr:`expiry` the token's expiry in the same
        PATCH (null when Defguard did not say, so an older expiry never outlives the token it was for)."""
        stored = EnrollmentAttributes(token=token.token, url=token.url, expires_at=token.expires_at)
        return stored.to_graph(expiry=self.expiry)

    async def mint_into(self, member: Member, queue: WriteQueue, release: Callable[[Member], None]) -> None:
        """Mint ``member``'s token and queue it for its write; a member with nothing to store is final here."""
        token = None
        try:
            token = await self.mint(member)
        except Abort as exc:
            self.aborted(exc)
        except BaseException:
            queue.minted(None)
            raise
        if token is not None:
            member.token = token
            problem = self.url_problem(token)
            if problem is None:
                queue.minted(member)
                return
            member.settle(Status.FAILED, problem + "; the token minted for this member was not stored")
        queue.minted(None)
        self.finished([member], release)

    async def store(self, batch: Sequence[Member], release: Callable[[Member], None]) -> None:
        """Write one batch of minted tokens (from the queue of writes) and settle its members."""
        to_write: dict[str, Mapping[str, str | None]] = {}
        owners: dict[str, Member] = {}
        for member in batch:
            assert member.entra is not None
            assert member.token is not None
            to_write[member.entra.id] = self.values(member.token)
            owners[member.entra.id] = member
        try:
            refused = await self.write(to_write, owners, release)
        except Abort as exc:
            refused = exc
        if refused is not None:
            self.aborted(refused)
        self.finished(batch, release)

    def aborted(self, exc: Abort) -> None:
        self.abort.append(str(exc))
        self.halt = self.halt or str(exc)

    def finished(self, members: Sequence[Member], release: Callable[[Member], None]) -> None:
        """``members`` are final: their places back, the journal told what is stored or surely not minted."""
        for member in members:
            if member.status is None:
                member.settle(Status.FAILED, f"not attempted: {self.abort[0] if self.abort else self.halt}")
            release(member)
        if self.journal is not None:  # what is confirmed stored, or surely not minted; the rest stays stale
            self.journal.done(m.username for m in members if m.username and settled_safely(m))
        self.count(len(members))

    def count(self, n: int) -> None:
        self.progressed = time.monotonic()
        self.done += n
        if self.progress is not None:
            self.progress(self.done, len(self.todo))

    async def step(self, chunk: Sequence[Member]) -> None:
        if self.abort or self.stopped:
            self.not_started(chunk)
            return
        self.started.extend(chunk)
        try:
            await self.journaled(chunk)
        except Abort as exc:
            self.aborted(exc)
        self.count(len(chunk))

    async def journaled(self, chunk: Sequence[Member]) -> None:
        journal = self.journal
        if journal is not None:
            journal.minting(m.username for m in chunk if m.username)
        try:
            await self.mint_and_store(chunk)
        finally:
            if journal is not None:  # what is confirmed stored, or surely not minted; the rest stays stale
                journal.done(m.username for m in chunk if m.username and settled_safely(m))

    def unless_halted(self, fn: Callable[..., T], *args: Any) -> T:
        """On a worker thread: ``fn(*args)``, unless the run was halted while this call waited for a thread (a
        token request queued behind a dead server is then never sent); no retry once it is halted either, and no
        send after a wait for its place among the requests in flight."""
        if self.halt is not None:
            raise _NotStarted(self.halt)
        try:
            return fn(*args, proceed=self.proceeding)
        except DefguardNotSentError:
            raise _NotStarted(self.halt or "the run stopped") from None

    def proceeding(self) -> bool:
        return self.halt is None

    async def mint(self, member: Member) -> IssuedToken | None:
        assert member.defguard is not None
        try:
            return await self.mint_once(member)
        except _NotStarted as exc:
            member.settle(Status.FAILED, f"not attempted: {exc}")
            return None

    async def mint_once(self, member: Member) -> IssuedToken | None:
        assert member.defguard is not None
        username, defguard, breaker, dg = member.defguard.username, self.clients.defguard, self.breaker, self.clients.dg
        guarded = self.unless_halted
        try:
            if member.kind is not TokenKind.DESKTOP:
                try:
                    token: IssuedToken = await dg(guarded, defguard.start_enrollment, username, self.lifetime)
                except DefguardAlreadyActivatedError:
                    # The server's answer is final (1.6: the user has a password; 2.x: a race) and changed nothing.
                    member.kind = TokenKind.DESKTOP
                else:
                    breaker.success()
                    return token
            token = await dg(guarded, defguard.start_desktop, username)
        except DefguardUserDisabledError:
            member.settle(Status.DISABLED, "disabled in Defguard since the user list was read: no token minted")
            return None
        except DefguardAuthError as exc:
            member.settle(Status.FAILED, f"Defguard refused the API token: {exc}")
            self.halt = self.halt or "Defguard refused the API token mid-run"
            raise Abort(f"Defguard refused the API token mid-run ({exc.status} {exc.message})") from None
        except DefguardUnreachableError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            self.halt = self.halt or f"Defguard became unreachable ({exc})"
            raise Abort(f"Defguard became unreachable ({exc})") from None
        except DefguardError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            if isinstance(exc, DefguardAPIError) and exc.status >= 500:
                breaker.fault(exc)
            # A 4xx answer (but a timeout's 408) is a refusal that changed nothing: no token to track.
            member.refused = isinstance(exc, DefguardAPIError) and 400 <= exc.status < 500 and exc.status != 408
            return None
        breaker.success()
        return token

    async def mint_and_store(self, chunk: Sequence[Member]) -> None:
        """The first members, one at a time (until a token is minted): mint, then store."""
        minted = await asyncio.gather(*(self.mint(m) for m in chunk), return_exceptions=True)
        to_write: dict[str, Mapping[str, str | None]] = {}
        owners: dict[str, Member] = {}
        abort: BaseException | None = None
        for member, result in zip(chunk, minted, strict=True):
            if isinstance(result, Abort):
                abort = abort or result
                continue
            if isinstance(result, BaseException):
                raise result
            if result is None:
                continue
            member.token = result
            if self.url_problem(result) is not None:
                continue  # settled by the caller (the first token minted) — a URL cannot change between members
            assert member.entra is not None
            to_write[member.entra.id] = self.values(result)
            owners[member.entra.id] = member
        if to_write:
            refused = await self.write(to_write, owners, None)
            abort = abort or refused
        if abort is not None:
            for member in chunk:
                if member.status is None:
                    member.settle(Status.FAILED, f"not attempted: {abort}")
            raise abort

    async def write(
        self,
        to_write: Mapping[str, Mapping[str, str | None]],
        owners: Mapping[str, Member],
        release: Callable[[Member], None] | None,
    ) -> Abort | None:
        """Store the minted tokens; a systematic refusal (every write of the batch) is returned as the abort.
        Each write that is final gives its place back at once (a stored one is also done in the journal)."""

        def stored(entra_id: str, ok: bool) -> None:
            if release is not None:
                release(owners[entra_id])
            username = owners[entra_id].username
            if ok and self.journal is not None and username:
                self.journal.done([username])

        try:
            results = await self.clients.entra.write_attributes(self.clients.attribute_set, to_write, on_written=stored)
        except EntraError as exc:
            for member in owners.values():
                member.settle(Status.FAILED, unusable(f"Graph write failed: {exc}"))
            raise Abort(f"Microsoft Graph failed mid-run ({exc})") from None
        for entra_id, member in owners.items():
            written = results[entra_id]
            if written.ok:
                member.settle(Status.PROVISIONED)
            else:
                member.settle(Status.FAILED, unusable(f"Graph write failed: {written.error}"))
            if written.retries and member.token is not None:
                member.token = attrs.evolve(member.token, retries=member.token.retries + written.retries)
        refused = [r for r in results.values() if not r.ok and r.status in {401, 403}]
        if refused and len(refused) == len(results):  # systematic: the sign-in, not the members
            return Abort(f"Graph refused every write of a batch ({refused[0].error})")
        return None


async def mint_and_write(
    clients: Clients,
    todo: Sequence[Member],
    lifetime: dt.timedelta | None,
    *,
    progress: Progress | None,
    stop: threading.Event | None,
    journal: Journal | None,
    stall_after: float | None = None,
    notes: list[str] | None = None,
    expiry: bool = False,
) -> tuple[str | None, bool]:
    """Mint for ``todo`` and store each token; the fatal error (a URL that cannot work), and whether interrupted.
    ``stall_after``: the watchdog's limit in seconds of silence from both services (``None``: no watchdog); when
    it fires, the reason is added to ``notes``. ``expiry``: the set defines ``EnrollmentTokenExpiresAt``
    (:attr:`Run.expiry_attribute`), written with each token."""
    minting = _Minting(clients, todo, lifetime, progress, stop, journal, stall_after, expiry=expiry)
    result = await minting.run()
    if minting.stalled is not None and notes is not None:
        notes.append(minting.stalled + ": the members in flight and not yet done ended failed")
    return result
