"""The results a command returns: one :class:`Outcome` per member in a :class:`Report`, and ``check``'s
:class:`Checklist`."""

from __future__ import annotations

import datetime as dt
import enum
import html
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._values import GroupSource, MatchedBy, Secret, Status, TokenKind

__all__ = ["OUTCOME_FIELDS", "CheckItem", "CheckState", "Checklist", "Outcome", "Report", "summarize"]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


#: A group name longer than this is shortened with an ellipsis in a repr (the full name is in ``to_dict``).
_REPR_NAME = 60


def _short(text: str, limit: int = _REPR_NAME) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _group_of(name: str, source: str) -> str:
    return f"group {_short(name)!r} ({source})"


@attrs.frozen
class Outcome:
    """One group member's result. ``enrollment_token`` is masked in ``repr`` and in :meth:`to_dict` by default."""

    username: str | None
    email: str | None
    status: Status
    matched_by: MatchedBy | None = None
    entra_id: str | None = None
    user_principal_name: str | None = None
    enrollment_url: str | None = None
    enrollment_token: Secret | None = None
    token_kind: TokenKind | None = None
    token_expires_at: dt.datetime | None = None
    error: str | None = None
    retries: int = 0
    defguard_active: bool | None = None  # the Defguard user's state when the run read it (None: no Defguard user)
    defguard_enrolled: bool | None = None
    devices: int | None = None  # the Defguard user's devices when the run read them
    would_mint: TokenKind | None = None  # status: the token provision would mint now (None: nothing)

    def to_dict(self, *, reveal_tokens: bool = False) -> dict[str, Any]:
        token = self.enrollment_token
        if token is None or not token:
            shown: str | None = None
        else:
            shown = token.value if reveal_tokens else token.masked()
        return {
            "username": self.username,
            "email": self.email,
            "status": self.status.value,
            "matched_by": self.matched_by.value if self.matched_by else None,
            "entra_id": self.entra_id,
            "user_principal_name": self.user_principal_name,
            "enrollment_url": self.enrollment_url,
            "enrollment_token": shown,
            "token_kind": self.token_kind.value if self.token_kind else None,
            "token_expires_at": _iso(self.token_expires_at),
            "error": self.error,
            "retries": self.retries,
            "defguard_active": self.defguard_active,
            "defguard_enrolled": self.defguard_enrolled,
            "devices": self.devices,
            "would_mint": self.would_mint.value if self.would_mint else None,
        }

    def _repr_html_(self) -> str:
        """Jupyter's rendering: one row per field, the token masked (as in :meth:`to_dict`)."""
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(key)}</th>"
            f"<td>{html.escape('' if value is None else str(value))}</td></tr>"
            for key, value in self.to_dict().items()
        )
        return f"<table>{rows}</table>"


OUTCOME_FIELDS: tuple[str, ...] = tuple(Outcome(None, None, Status.PLANNED).to_dict())


@attrs.frozen
class Report:
    """The result of a run: every member exactly once, plus what is needed to audit it."""

    command: str
    started_at: dt.datetime
    finished_at: dt.datetime
    group_name: str
    group_source: GroupSource
    attribute_set: str
    outcomes: tuple[Outcome, ...]
    defguard_url: str | None = None
    defguard_version: str | None = None
    tool_version: str = ""
    dry_run: bool = False
    interrupted: bool = False
    notes: tuple[str, ...] = ()
    audit: Mapping[str, Any] = attrs.field(factory=dict)
    fatal_error: str | None = None
    #: ``sync``: why the plan was held by ``max_changes`` (nothing changed); ``None``: it was not.
    held: str | None = None
    #: ``sync``: members per plan action (``mint``, ``refresh``, ``clear``, ``keep``, ``none``).
    plan: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        """Members per status, in a stable order (the order of :class:`Status`)."""
        return summarize(self.outcomes)

    @property
    def ok(self) -> bool:
        """True when no member ended with a problem status (exit code 0)."""
        return not any(o.status.is_problem for o in self.outcomes)

    def outcome(self, username: str) -> Outcome:
        """The outcome of one Defguard username (``KeyError`` if it is not in the report)."""
        for o in self.outcomes:
            if o.username == username:
                return o
        raise KeyError(username)

    def by_status(self, status: Status | str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def to_dict(self, *, reveal_tokens: bool = False, include_users: bool = True) -> dict[str, Any]:
        """The report as JSON-ready data (``users`` last; left out with ``include_users=False``)."""
        from .._version import __version__  # noqa: PLC0415

        data: dict[str, Any] = {
            "tool_version": self.tool_version or __version__,
            "command": self.command,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "defguard": {"url": self.defguard_url, "version": self.defguard_version},
            "group": {"name": self.group_name, "source": self.group_source},
            "attribute_set": self.attribute_set,
            "audit": dict(self.audit),
            "notes": list(self.notes),
            "fatal_error": self.fatal_error,
            "summary": self.summary,
        }
        if include_users:
            data["users"] = [o.to_dict(reveal_tokens=reveal_tokens) for o in self.outcomes]
        return data

    def __repr__(self) -> str:
        """What matters at a glance: the command, the group, members per status, how the run ended."""
        counts = ", ".join(f"{k} {v}" for k, v in self.summary.items())
        members = f"{len(self.outcomes)} member{'' if len(self.outcomes) == 1 else 's'}"
        flags = [
            text
            for text, on in (("dry run", self.dry_run), ("interrupted", self.interrupted), ("not ok", not self.ok))
            if on
        ]
        if self.fatal_error:
            flags.append(f"fatal: {_short(self.fatal_error, 80)}")
        tail = f"; {', '.join(flags)}" if flags else ""
        return (
            f"<Report {self.command} of {_group_of(self.group_name, self.group_source)}: "
            f"{members}{': ' + counts if counts else ''}{tail}>"
        )

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th>{html.escape(k)}</th>"
            for k in ("username", "email", "status", "matched_by", "user_principal_name", "enrollment_token", "error")
        )
        rows = []
        for o in self.outcomes:
            d = o.to_dict()
            cells = "".join(
                f"<td>{html.escape(str(d[k]) if d[k] is not None else '')}</td>"
                for k in (
                    "username",
                    "email",
                    "status",
                    "matched_by",
                    "user_principal_name",
                    "enrollment_token",
                    "error",
                )
            )
            rows.append(f"<tr>{cells}</tr>")
        summary = ", ".join(f"{k}: {v}" for k, v in self.summary.items()) or "no members"
        return (
            f"<p><b>{html.escape(self.command)}</b> of group <code>{html.escape(self.group_name)}</code> "
            f"({html.escape(summary)})</p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )


def summarize(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Members per status for a list of outcomes (same order as :attr:`Report.summary`)."""
    counts = Counter(o.status for o in outcomes)
    return {s.value: counts[s] for s in Status if counts[s]}


# -- check ----------------------------------------------------------------------------------------------------------


class CheckState(enum.StrEnum):
    """One checklist line's verdict: ``fail`` makes the setup not ready; ``warn`` could not be verified."""

    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@attrs.frozen
class CheckItem:
    """One line of the ``check`` checklist: what was checked, the verdict, what was seen and how to fix it."""

    key: str
    title: str
    state: CheckState
    detail: str = ""
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "state": self.state.value,
            "detail": self.detail,
            "hint": self.hint,
        }


@attrs.frozen
class Checklist:
    """What ``check`` found; :attr:`ready` when no item failed (``warn`` and ``skip`` do not count)."""

    items: tuple[CheckItem, ...]
    group_name: str
    group_source: GroupSource = "defguard"
    attribute_set: str = "Defguard"
    defguard_url: str | None = None
    defguard_version: str | None = None
    graph_url: str | None = None

    @property
    def ready(self) -> bool:
        return not any(item.state is CheckState.FAIL for item in self.items)

    @property
    def failures(self) -> list[CheckItem]:
        return [item for item in self.items if item.state is CheckState.FAIL]

    def item(self, key: str) -> CheckItem:
        """The item with this key (``KeyError`` if the check did not produce it)."""
        for item in self.items:
            if item.key == key:
                return item
        raise KeyError(key)

    def __repr__(self) -> str:
        """What matters at a glance: the group, ready or not (and which items failed), items per state."""
        counts = Counter(item.state for item in self.items)
        states = ", ".join(f"{counts[state]} {state.value}" for state in CheckState if counts[state])
        failed = self.failures
        verdict = "ready" if not failed else f"not ready, failed: {', '.join(item.key for item in failed)}"
        return f"<Checklist of {_group_of(self.group_name, self.group_source)}: {verdict}; {states or 'no items'}>"

    def _repr_html_(self) -> str:
        """Jupyter's rendering: the verdict, then one row per item (state, what was checked, what was seen, the
        fix), as :meth:`Report._repr_html_` renders a run."""
        columns = ("state", "title", "detail", "hint")
        head = "".join(f"<th>{html.escape(k)}</th>" for k in columns)
        rows = []
        for item in self.items:
            d = item.to_dict()
            cells = "".join(f"<td>{html.escape(str(d[k]) if d[k] is not None else '')}</td>" for k in columns)
            rows.append(f"<tr>{cells}</tr>")
        failed = len(self.failures)
        verdict = "ready" if not failed else f"not ready: {failed} failed"
        return (
            f"<p><b>check</b> of group <code>{html.escape(self.group_name)}</code> "
            f"({html.escape(self.group_source)}): {html.escape(verdict)}</p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "group": {"name": self.group_name, "source": self.group_source},
            "attribute_set": self.attribute_set,
            "defguard": {"url": self.defguard_url, "version": self.defguard_version},
            "graph": {"url": self.graph_url},
            "items": [item.to_dict() for item in self.items],
        }
