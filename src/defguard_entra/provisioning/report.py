"""The one place a command's :class:`Report` and its :class:`Outcome`\\ s are built, with what the run gathered on
the way: its start, its notes, its audit (timings per phase, the options the service knows) and progress."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .._version import __version__
from ..models import GroupSource, Outcome, Report, Status, TokenKind
from .plan import Member

__all__ = ["Progress", "Run", "desktop_note", "guarded_progress", "log", "outcome"]

#: The orchestrator's one logger, under the name its lines have always carried (the CLI prints ``%(name)s``).
log = logging.getLogger("defguard_entra.provisioning")

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while members are processed."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.define
class Run:
    """One command's run as its report will tell it: built when the command starts, :meth:`report` at its end.

    ``timed`` runs record seconds per phase in ``audit["timings"]`` (:meth:`mark`); ``options`` (what the service
    knows of its set-up: URLs, sign-in, attribute set) are added to ``audit["options"]`` when the report is built.
    """

    command: str
    group_name: str
    group_source: GroupSource
    attribute_set: str
    defguard_url: str | None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    audit: dict[str, Any] = attrs.field(factory=dict)
    timed: bool = True
    #: The run's "now" (the service's clock): the start, the end, and every judgement of time.
    clock: Callable[[], dt.datetime] = _now
    started: dt.datetime = attrs.field(default=attrs.Factory(lambda self: self.clock(), takes_self=True))
    notes: list[str] = attrs.field(factory=list)
    version: str | None = None
    #: The group's id when the command was given one (``group_id=``): the group it names, whatever its name.
    group_id: str | None = None
    #: Whether the attribute set defines ``EnrollmentTokenExpiresAt`` (set by the preflight; ``None``: the
    #: definitions could not be read). Only ``True`` makes the writes include it.
    expiry_attribute: bool | None = None
    _last: float = attrs.field(factory=time.monotonic, init=False)

    def __attrs_post_init__(self) -> None:
        if self.timed:
            self.audit.setdefault("timings", {})

    @property
    def seconds(self) -> float:
        """Seconds since the run started (for the log)."""
        return (self.clock() - self.started).total_seconds()

    def mark(self, phase: str) -> None:
        """Add the time since the last mark (or the start) to ``phase`` (nothing for a run that is not timed)."""
        if not self.timed:
            return
        now = time.monotonic()
        timings: dict[str, float] = self.audit["timings"]
        timings[f"{phase}_seconds"] = round(timings.get(f"{phase}_seconds", 0.0) + now - self._last, 3)
        self._last = now

    def note(self, text: str, *, warn: bool = False) -> None:
        """A note for the report (also logged as a warning with ``warn``)."""
        if warn:
            log.warning("%s", text)
        self.notes.append(text)

    def report(
        self,
        members: Iterable[Member],
        *,
        dry_run: bool = False,
        interrupted: bool = False,
        fatal: str | None = None,
        held: str | None = None,
        plan: Mapping[str, int] | None = None,
    ) -> Report:
        """The report: one outcome per member, in order (``held`` and ``plan``: ``sync``'s)."""
        audit = self.audit
        if self.options:
            audit["options"] = {**audit.get("options", {}), **self.options}
        return Report(
            command=self.command,
            started_at=self.started,
            finished_at=self.clock(),
            group_name=self.group_name,
            group_source=self.group_source,
            attribute_set=self.attribute_set,
            outcomes=tuple(outcome(m, self.command) for m in members),
            defguard_url=self.defguard_url,
            defguard_version=self.version,
            tool_version=__version__,
            dry_run=dry_run,
            interrupted=interrupted,
            notes=tuple(self.notes),
            audit=audit,
            fatal_error=fatal,
            held=held,
            plan=dict(plan or {}),
        )


def outcome(member: Member, command: str) -> Outcome:
    """One member's outcome in ``command``'s report: ``provision`` shows the token it minted, ``status`` and
    ``clear`` what the attribute set held (the token as a :class:`Secret`), ``export`` the complete stored pair."""
    entra, user = member.entra, member.defguard
    status = member.status or Status.FAILED
    base = Outcome(
        username=member.username,
        email=member.email if user is not None else (entra.mail if entra else None),
        status=status,
        matched_by=member.matched_by,
        entra_id=entra.id if entra else None,
        user_principal_name=entra.user_principal_name if entra else None,
        error=member.error if member.status is not None else "internal error: member was never settled",
        token_state=member.state,
        action=member.action,
    )
    if command == "export":
        config = member.config
        if config is None:
            return base
        return attrs.evolve(base, enrollment_url=config.enrollment_url, enrollment_token=config.enrollment_token)
    token = member.token
    keep = token is not None and status in {Status.PROVISIONED, Status.REFRESHED}
    result = attrs.evolve(
        base,
        enrollment_url=token.url if token is not None else None,
        enrollment_token=token.token if keep and token is not None else None,
        token_kind=token.kind if token is not None else member.kind if status is Status.PLANNED else None,
        token_expires_at=token.expires_at if keep and token is not None else None,
        retries=token.retries if token is not None else 0,
        defguard_active=user.active if user is not None else None,
        defguard_enrolled=user.enrolled if user is not None else None,
        devices=user.devices if user is not None else None,
        would_mint=member.kind if command == "status" else None,
    )
    pair = member.stored if command in {"status", "clear"} or (command == "sync" and token is None) else None
    if pair is None:
        return result
    stored = attrs.evolve(result, enrollment_url=pair.url, enrollment_token=pair.token)
    # status: when the stored token expires, as EnrollmentTokenExpiresAt says (None: not stored, or not a date)
    return attrs.evolve(stored, token_expires_at=pair.expires_at) if command == "status" else stored


def desktop_note(members: Iterable[Member], audit: Mapping[str, Any]) -> str | None:
    """Provision's note on desktop-activation tokens: they always get the server's default lifetime."""
    desktop = sum(1 for m in members if m.kind is TokenKind.DESKTOP and m.token is not None)
    if not desktop:
        return None
    lifetime = audit.get("defguard_token_lifetime_hours")
    told = f"{lifetime:g} h" if lifetime is not None else "not readable on this Defguard line"
    return (
        f"{desktop} member{'s' if desktop != 1 else ''} got a desktop-activation token (Defguard counts "
        "them as activated: directory sync, SSO sign-in or a password, but no device yet): such tokens "
        f"always get the server's default lifetime ({told}), whatever lifetime was asked for"
    )


def guarded_progress(progress: Progress | None) -> Progress | None:
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
