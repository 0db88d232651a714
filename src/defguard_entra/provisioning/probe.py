"""The write probe: before the first token is minted, a write that changes nothing proves the write permission."""

from __future__ import annotations

from ..exceptions import PreflightError
from ..models import EnrollmentAttributes
from ._ports import Clients
from .checklist import WRITE_ATTRIBUTES
from .plan import Member
from .report import log

__all__ = ["probe_write"]


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
