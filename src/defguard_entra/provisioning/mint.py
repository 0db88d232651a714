"""Mint and write: Defguard tokens minted in parallel, stored in Entra in paced ``$batch``es of 20.

The write probe comes first (a write that changes nothing). Then one member at a time until a token is minted, so
that a server failing every token request is found after a few members and the first token's URL is checked; then
batches of 20, with at most 40 tokens minted and not yet stored (:mod:`._window`): that bounds what the journal
can hold open to two batches' worth whatever happens to the run. A watchdog ends a run neither service answers.
The breaker and the abort rules stop minting
when the fault is not one member's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from .._chunks import chunked
from ..config import BATCH_LIMIT
from ..exceptions import (
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    EntraError,
    PreflightError,
)
from ..models import EnrollmentAttributes, IssuedToken, Status, TokenKind
from ._ports import Clients
from ._window import Places, Window
from .checklist import WRITE_ATTRIBUTES
from .journal import Journal
from .plan import Member, enrollment_url_problem, settled_safely
from .report import Progress, log

__all__ = ["mint_and_write", "probe_write"]


T = TypeVar("T")


class _Abort(Exception):  # noqa: N818 - internal: stop minting, settle the rest
    pass


class _NotStarted(Exception):  # noqa: N818 - internal: a token request that was never sent
    pass


#: Server errors (5xx) in a row that stop minting: before the first token was minted, and after.
_FAULTS_BEFORE_FIRST_TOKEN = 3
_FAULTS_IN_A_ROW = 8
#: Tokens minted (or being minted) and not yet stored at any moment: two batches' worth, the most an abnormal end
#: can leave stale. Counted in tokens, not batches: a batch whose last few writes wait out a ``Retry-After`` holds
#: only their places, and the next batch mints meanwhile.
_UNSTORED_TOKENS = 2 * BATCH_LIMIT


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


async def probe_write(clients: Clients, member: Member, notes: list[str], *, write: bool = True) -> None:
    """Prove, before the first token is minted, that this sign-in may write the attribute set, with a write that
    changes nothing: the member's current values written back, or (when nothing is stored or readable) the set
    with no attribute named. A refusal (401/403) stops the run here, nothing minted. ``write=False`` only reads
    (a dry run reads exactly what the real run reads)."""
    assert member.entra is not None
    entra_id, name = member.entra.id, clients.attribute_set
    read_errors: dict[str, str] = {}
    values = await clients.entra.read_attributes(name, [entra_id], errors=read_errors)
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
    result = (await clients.entra.write_attributes(name, {entra_id: same}))[entra_id]
    if result.ok:
        return
    if result.status in {401, 403}:
        raise PreflightError(
            f"Graph refused to write attribute set {name!r} ({result.error}): grant "
            f"{WRITE_ATTRIBUTES.needs()}; no token was minted"
        )
    note = f"write permission could not be proven with a write that changes nothing ({result.error}): not verified"
    log.warning("%s", note)
    notes.append(note)


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
    breaker: _Breaker = attrs.field(factory=_Breaker)
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
            self.settle_stalled(self.stalled)
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

    def settle_stalled(self, why: str) -> None:
        started = {id(m) for m in self.started}
        for member in self.todo:
            if member.status is not None:
                continue
            if id(member) not in started:
                member.settle(Status.FAILED, f"not attempted: {why}")
            elif member.token is not None:
                member.settle(Status.FAILED, _unusable(f"{why}; the token minted was not stored"))
            else:
                # The request may have reached Defguard (which then cancelled the previous token): the journal
                # keeps this member open, so the next run (with a state directory) repairs it first.
                member.settle(
                    Status.FAILED,
                    f"{why}; its token request got no answer: Defguard may have minted a token that was not "
                    "stored, re-run to issue a new one",
                )

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
        window = Window(_UNSTORED_TOKENS)

        async def gated(chunk: Sequence[Member]) -> None:
            await window.take(len(chunk))
            places = Places(window, len(chunk))
            try:
                await self.step(chunk, places)
            finally:
                places.give(places.held)

        await asyncio.gather(*(gated(c) for c in chunked(todo[start:], BATCH_LIMIT)))
        return None, self.stopped

    async def step(self, chunk: Sequence[Member], places: Places | None = None) -> None:
        if self.abort or self.stopped:
            for m in chunk:
                if self.stopped:
                    m.settle(Status.INTERRUPTED, "the run was interrupted before this member")
                else:
                    m.settle(Status.FAILED, f"not attempted: {self.abort[0]}")
            if self.stopped:  # not started: progress counts only the members worked on
                return
        else:
            self.started.extend(chunk)
            try:
                await self.journaled(chunk, places)
            except _Abort as exc:
                self.abort.append(str(exc))
                self.halt = self.halt or str(exc)
        self.progressed = time.monotonic()
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, len(self.todo))

    async def journaled(self, chunk: Sequence[Member], places: Places | None) -> None:
        journal = self.journal
        if journal is not None:
            journal.minting(m.username for m in chunk if m.username)
        try:
            await self.mint_and_store(chunk, places)
        finally:
            if journal is not None:  # what is confirmed stored, or surely not minted; the rest stays stale
                journal.done(m.username for m in chunk if m.username and settled_safely(m))

    def unless_halted(self, fn: Callable[..., T], *args: Any) -> T:
        """On a worker thread: ``fn(*args)``, unless the run was halted while this call waited for a thread (a
        token request queued behind a dead server is then never sent); no retry once it is halted either."""
        if self.halt is not None:
            raise _NotStarted(self.halt)
        return fn(*args, proceed=self.proceeding)

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
            raise _Abort(f"Defguard refused the API token mid-run ({exc.status} {exc.message})") from None
        except DefguardUnreachableError as exc:
            member.settle(Status.FAILED, f"Defguard: {exc}")
            self.halt = self.halt or f"Defguard became unreachable ({exc})"
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

    async def mint_and_store(self, chunk: Sequence[Member], places: Places | None = None) -> None:
        minted = await asyncio.gather(*(self.mint(m) for m in chunk), return_exceptions=True)
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
            member.token = result
            if self.url_problem(result) is not None:
                continue  # settled by the caller (the first token minted) — a URL cannot change between members
            assert member.entra is not None
            to_write[member.entra.id] = EnrollmentAttributes(token=result.token, url=result.url).to_graph()
            owners[member.entra.id] = member
        if to_write:
            refused = await self.write(to_write, owners, places)
            abort = abort or refused
        if abort is not None:
            for member in chunk:
                if member.status is None:
                    member.settle(Status.FAILED, f"not attempted: {abort}")
            raise abort

    async def write(
        self, to_write: Mapping[str, Mapping[str, str | None]], owners: Mapping[str, Member], places: Places | None
    ) -> _Abort | None:
        """Store the minted tokens; a systematic refusal (every write of the batch) is returned as the abort.
        Each write that is final gives its place back at once (a stored one is also done in the journal)."""

        def stored(entra_id: str, ok: bool) -> None:
            if places is not None:
                places.give()
            username = owners[entra_id].username
            if ok and self.journal is not None and username:
                self.journal.done([username])

        try:
            results = await self.clients.entra.write_attributes(self.clients.attribute_set, to_write, on_written=stored)
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
            if written.retries and member.token is not None:
                member.token = attrs.evolve(member.token, retries=member.token.retries + written.retries)
        refused = [r for r in results.values() if not r.ok and r.status in {401, 403}]
        if refused and len(refused) == len(results):  # systematic: the sign-in, not the members
            return _Abort(f"Graph refused every write of a batch ({refused[0].error})")
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
) -> tuple[str | None, bool]:
    """Mint for ``todo`` and store each token; the fatal error (a URL that cannot work), and whether interrupted.
    ``stall_after``: the watchdog's limit in seconds of silence from both services (``None``: no watchdog); when
    it fires, the reason is added to ``notes``."""
    minting = _Minting(clients, todo, lifetime, progress, stop, journal, stall_after)
    result = await minting.run()
    if minting.stalled is not None and notes is not None:
        notes.append(minting.stalled + ": the members in flight and not yet done ended failed")
    return result


def _unusable(reason: str) -> str:
    return (
        f"{reason}; the token minted for this member is unusable (Defguard also cancelled the previous one): "
        "re-run to issue a new token"
    )
