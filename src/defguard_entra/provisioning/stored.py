"""What the attribute set holds: read for ``status``, ``clear`` and ``export``, and nulled by ``clear``."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .._chunks import chunked
from ..config import BATCH_LIMIT
from ..exceptions import ClientConfigError, EntraError
from ..models import EnrollmentAttributes, Report, Status, TokenState
from ._ports import Clients
from .plan import Member
from .report import Progress, Run
from .tokens import Judge

#: The stored tokens ``--only-missing`` replaces: surely dead (an ``expiring`` one still works).
_DEAD = frozenset({TokenState.EXPIRED, TokenState.SUPERSEDED, TokenState.USED})

__all__ = ["clear_values", "read_configs", "read_values", "skip_existing", "skip_failed_in"]


async def read_values(clients: Clients, run: Run, members: Sequence[Member], stop: threading.Event | None) -> None:
    """The stored values of every resolved member (``status``, ``clear``): :attr:`Member.values`; a member whose
    read fails is failed (one user deleted since the lookup must not stop the run for everyone)."""
    readable = [m for m in members if m.entra is not None and m.status in {None, Status.NOT_IN_DEFGUARD}]
    if stop is not None and stop.is_set():
        for member in readable:  # attributes not read: say so rather than "nothing stored"
            member.settle(Status.INTERRUPTED, "the run was interrupted before this member")
        return
    errors: dict[str, str] = {}
    ids = [m.entra.id for m in readable if m.entra]
    values = await clients.entra.read_attributes(clients.attribute_set, ids, errors=errors)
    for member in readable:
        assert member.entra is not None
        member.read, member.values = True, values.get(member.entra.id)
        if member.entra.id in errors:
            member.settle(Status.FAILED, f"could not read what is stored: {errors[member.entra.id]}")
    run.mark("read")
    read = [m for m in readable if m.read]
    if read and not any(m.values for m in read):
        run.note(
            f"Graph returned no attribute values for any of the {len(read)} members looked up: nothing is "
            "stored, or this sign-in may not read them (needs CustomSecAttributeAssignment.Read.All and the "
            "Attribute Assignment Reader role; Graph answers both the same way)"
        )


async def skip_existing(clients: Clients, todo: Sequence[Member], judge: Judge | None = None) -> None:
    """``provision --only-missing``: members that hold a complete pair are ``existing``, unless ``judge`` (the
    token judgement of :mod:`.tokens`) finds the stored token ``expired``, ``superseded`` or ``used``: those get
    a new one. A failed read is failed (never mint blind)."""
    ids = [m.entra.id for m in todo if m.entra is not None]
    errors: dict[str, str] = {}
    stored = await clients.entra.read_attributes(clients.attribute_set, ids, errors=errors)
    for member in todo:
        pair = EnrollmentAttributes.from_graph(stored.get(member.entra.id)) if member.entra else None
        if member.entra is not None and member.entra.id in errors:  # never mint blind: the read failed
            member.settle(Status.FAILED, f"could not read what is stored ({errors[member.entra.id]}): not minted")
        elif pair is not None and pair.complete:
            if judge is None:
                member.settle(Status.EXISTING)
                continue
            member.state, why = judge(pair, member.username)
            if member.state not in _DEAD:
                member.settle(Status.EXISTING, why)


async def clear_values(
    clients: Clients,
    todo: Sequence[Member],
    progress: Progress | None,
    stop: threading.Event | None,
    *,
    expiry: bool = False,
) -> None:
    """Null both attributes (``expiry``: and ``EnrollmentTokenExpiresAt``, for a set that defines it), a few
    batches at a time; stop between slices when asked (in-flight ones finish)."""
    total, done = len(todo), 0
    abort: str | None = None
    for chunk in chunked(todo, BATCH_LIMIT * 4):
        if stop is not None and stop.is_set():
            for member in chunk:
                member.settle(Status.INTERRUPTED, "the run was interrupted before this member")
            continue  # not started: progress counts only the members worked on
        if abort is not None:
            for member in chunk:
                member.settle(Status.FAILED, f"not attempted: {abort}")
        else:
            values = {m.entra.id: EnrollmentAttributes().to_graph(expiry=expiry) for m in chunk if m.entra}
            try:
                results = await clients.entra.write_attributes(clients.attribute_set, values)
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


def skip_failed_in(members: Sequence[Member], after: Report) -> None:
    """``export`` after ``provision`` in one run: members that run failed are not read back (Entra may still hold
    a token Defguard has already cancelled)."""
    failed = {
        o.username or o.entra_id: o.error for o in after.outcomes if o.status in {Status.FAILED, Status.INTERRUPTED}
    }
    for member in members:
        key = member.username or (member.entra.id if member.entra else None)
        if member.status is None and key is not None and key in failed:
            member.settle(
                Status.FAILED, f"provision failed for this member in this run ({failed[key]}): no file written"
            )


async def read_configs(clients: Clients, run: Run, members: Sequence[Member]) -> None:
    """``export``: each resolved member's stored pair as its :attr:`Member.config` (``set``), or why not."""
    from .._desktop_client import config_from_attributes  # noqa: PLC0415

    todo = [m for m in members if m.status is None and m.entra is not None]
    ids = [m.entra.id for m in todo if m.entra is not None]
    errors: dict[str, str] = {}
    stored = await clients.entra.read_attributes(clients.attribute_set, ids, errors=errors) if ids else {}
    for member in todo:
        assert member.entra is not None
        if member.entra.id in errors:
            member.settle(Status.FAILED, f"could not read what is stored: {errors[member.entra.id]}")
            continue
        try:
            member.config = config_from_attributes(stored.get(member.entra.id), clients.attribute_set)
        except ClientConfigError as exc:
            if exc.reason == "missing":
                member.settle(Status.NOT_SET, f"{exc}: not provisioned yet, or not readable by this sign-in")
            else:
                member.settle(Status.FAILED, f"incomplete: {exc}: run provision again for this member")
        else:
            member.settle(Status.SET)
    if todo and all(m.status is Status.NOT_SET for m in todo):
        run.note(
            f"none of the {len(todo)} resolved members has readable attributes in set {clients.attribute_set!r}: "
            "if provision has run, this sign-in may not read them: it needs CustomSecAttributeAssignment.Read.All "
            "and the Attribute Assignment Reader role (Graph answers 'not assigned' and 'not permitted' the same "
            "way)"
        )
