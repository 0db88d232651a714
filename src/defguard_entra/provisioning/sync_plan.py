"""Pure: the plan ``sync`` applies, one action per member, and the threshold on destructive changes. No I/O.

Per member (the group's, resolved in Entra, with what the attribute set holds and the token judged by
:mod:`.tokens`):

- ``mint``: needs a token (as ``provision`` decides, same ``enrolled`` rules, :func:`.plan.classify`) and nothing is
  stored: a first token, which destroys nothing;
- ``refresh``: needs a token and the stored one is ``expiring``, ``expired``, ``superseded`` or ``used``, or only
  half a pair is stored, or an unfinished run may have left it dead (stale);
- ``clear``: needs no token any more and something is stored: it has a device (the token did its job), it is
  disabled in Defguard, or its Entra account is disabled; and every **outsider**, a user outside the group who holds
  this instance's attributes;
- ``keep``: the stored token is ``usable`` or ``unknown`` (never replaced on a guess);
- ``none``: nothing stored and nothing to mint, or the member was settled before the plan (not found, ambiguous…).

The threshold (:class:`ChangeLimit`) counts destructive changes: clears, and refreshes that replace a stored token.
A plan above it is held: nothing changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Literal, get_args

import attrs

from ..exceptions import ConfigurationError
from ..models import EnrolledPolicy, Status, TokenKind, TokenState
from .plan import Member, classify
from .tokens import Judge

__all__ = ["ACTIONS", "Action", "ChangeLimit", "SyncPlan", "plan_sync"]

Action = Literal["mint", "refresh", "clear", "keep", "none"]
ACTIONS: tuple[Action, ...] = get_args(Action)

#: The default threshold: 10 % of the group, or this many members, whichever is larger.
DEFAULT_MIN_CHANGES = 25
DEFAULT_PERCENT = Decimal(10)
_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")
_COUNT = re.compile(r"\s*([0-9]+)\s*")
_FIX = "give a number of members (e.g. 50) or a share of the group (e.g. 20%)"

_DEAD = frozenset({TokenState.EXPIRING, TokenState.EXPIRED, TokenState.SUPERSEDED, TokenState.USED})


@attrs.frozen
class ChangeLimit:
    """``max_changes``: at most :attr:`count` destructive changes, or :attr:`percent` of the group's members;
    neither: the default (10 % of the group, at least 25)."""

    count: int | None = None
    percent: Decimal | None = None

    @classmethod
    def parse(cls, value: object) -> ChangeLimit:
        """``max_changes=`` checked: an ``int`` ≥ 0, ``"N"`` or ``"P%"`` (0 to 100), ``None`` for the default;
        anything else raises :class:`ConfigurationError` naming the option and the fix."""
        if value is None:
            return cls()
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ConfigurationError(f"max_changes {value} is negative: {_FIX}")
            return cls(count=value)
        if isinstance(value, str):
            if (match := _COUNT.fullmatch(value)) is not None:
                return cls(count=int(match.group(1)))
            if (match := _PERCENT.fullmatch(value)) is not None:
                percent = Decimal(match.group(1))
                if percent > 100:
                    raise ConfigurationError(f"max_changes {value!r} is more than 100%: {_FIX}")
                return cls(percent=percent)
        raise ConfigurationError(f"max_changes {value!r} is not a number of members or a percentage: {_FIX}")

    def of(self, group_size: int) -> int:
        """The number of destructive changes allowed for a group of ``group_size`` members."""
        if self.count is not None:
            return self.count
        if self.percent is not None:
            return math.ceil(self.percent * group_size / 100)
        return max(DEFAULT_MIN_CHANGES, math.ceil(DEFAULT_PERCENT * group_size / 100))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        if self.percent is not None:
            return f"{self.percent}%"
        return f"the default ({DEFAULT_PERCENT}% of the group, at least {DEFAULT_MIN_CHANGES})"


@attrs.frozen
class SyncPlan:
    """What ``sync`` will do: the members to mint for (first tokens), to refresh, to clear (outsiders last), to
    keep; :attr:`reasons` per member (by identity); :attr:`destructive` changes against :attr:`limit`."""

    mint: tuple[Member, ...]
    refresh: tuple[Member, ...]
    clear: tuple[Member, ...]
    keep: tuple[Member, ...]
    none: tuple[Member, ...]
    destructive: int
    limit: int
    limit_text: str
    reasons: Mapping[int, str]

    @property
    def counts(self) -> dict[str, int]:
        """Members per action (the report's ``plan``), every action named."""
        return {action: len(getattr(self, action)) for action in ACTIONS}

    @property
    def held(self) -> str | None:
        """Why the plan is held (more destructive changes than the limit), or ``None`` when it may go on."""
        if self.destructive <= self.limit:
            return None
        return (
            f"the plan has {self.destructive} destructive changes (stored tokens cleared or replaced), more than "
            f"--max-changes allows ({self.limit}, from {self.limit_text}): nothing was changed. Check the group "
            f"and the directories, then re-run with --max-changes {self.destructive} to apply it, or --dry-run "
            "to see it"
        )

    def reason(self, member: Member) -> str | None:
        return self.reasons.get(id(member))

    def settle_planned(self) -> None:
        """A dry run's or a held plan's end: every member with a change ``planned``, with its reason."""
        for member in (*self.mint, *self.refresh, *self.clear):
            member.settle(Status.PLANNED, self.reason(member))

    def settle_unchanged(self) -> None:
        """The members the plan leaves alone: ``existing`` (kept, the token's state as the reason) and
        ``not_set`` (nothing stored, nothing to mint); members settled before the plan keep their status."""
        for member in self.keep:
            member.settle(Status.EXISTING, self.reason(member))
        for member in self.none:
            if member.status is None:
                member.settle(Status.NOT_SET, self.reason(member))

    def settle_refreshed(self) -> None:
        """After the mint: a refreshed member's new token is stored (``provisioned`` → ``refreshed``)."""
        for member in self.refresh:
            if member.status is Status.PROVISIONED:
                member.settle(Status.REFRESHED, self.reason(member))


def _no_token_needed(member: Member, enrolled: EnrolledPolicy, line: int) -> str | None:
    """Why ``member`` needs no token now, or ``None`` (then :attr:`Member.kind` is the kind to mint)."""
    assert member.defguard is not None
    if member.entra is not None and member.entra.account_enabled is False:
        return "the Entra account is disabled (accountEnabled false)"
    fate = classify(member.defguard, enrolled, line)
    if isinstance(fate, TokenKind):
        member.kind = fate
        return None
    if fate is Status.DISABLED:
        return "disabled in Defguard"
    return "has a device in Defguard (enrolled)"


def _decide(
    member: Member, enrolled: EnrolledPolicy, line: int, judge: Judge, stale: frozenset[str]
) -> tuple[Action, str]:
    done = _no_token_needed(member, enrolled, line)
    pair = member.stored
    if done is not None:
        if not member.values:
            return "none", f"{done}: no token needed, nothing stored"
        job = ": the token did its job" if "device" in done else ""
        return "clear", f"{done}{job}; what is stored is cleared"
    if pair is None or (pair.empty and not pair.not_text):
        return "mint", "nothing stored: a first token"
    if not pair.complete:
        return "refresh", "only part of the pair is stored (or a value is not text): a new token replaces it"
    member.state, why = judge(pair, member.username)
    if member.username in stale:
        return "refresh", (
            "a token was minted for this member by a run that did not finish and may not be stored, so the stored "
            "one may be dead: a new token replaces it"
        )
    if member.state in _DEAD:
        return "refresh", why
    return "keep", why


def plan_sync(
    members: Sequence[Member],
    outsiders: Iterable[Member],
    *,
    enrolled: EnrolledPolicy,
    line: int,
    judge: Judge,
    stale: frozenset[str],
    limit: ChangeLimit,
) -> SyncPlan:
    """The plan for the group's ``members`` (each with :attr:`Member.values` read) and the ``outsiders`` (each
    with its reason in :attr:`Member.error`); sets each one's :attr:`Member.action` and, for a complete stored
    pair, :attr:`Member.state`. Stale members come first among the mints and refreshes."""
    buckets: dict[Action, list[Member]] = {action: [] for action in ACTIONS}
    reasons: dict[int, str] = {}
    destructive = 0
    for member in members:
        if member.status is not None or member.defguard is None:
            action: Action = "none"
        else:
            action, reasons[id(member)] = _decide(member, enrolled, line, judge, stale)
            stored = member.stored
            destructive += action == "clear" or (action == "refresh" and stored is not None and bool(stored.token))
        member.action = action
        buckets[action].append(member)
    for outsider in outsiders:
        outsider.action = "clear"
        reasons[id(outsider)] = outsider.error or "not a member of the group"
        buckets["clear"].append(outsider)
        destructive += 1
    for action in ("mint", "refresh"):
        buckets[action].sort(key=lambda m: m.username not in stale)
    return SyncPlan(
        mint=tuple(buckets["mint"]),
        refresh=tuple(buckets["refresh"]),
        clear=tuple(buckets["clear"]),
        keep=tuple(buckets["keep"]),
        none=tuple(buckets["none"]),
        destructive=destructive,
        limit=limit.of(len(members)),
        limit_text=str(limit),
        reasons=reasons,
    )
