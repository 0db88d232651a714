"""When minting stops: a fault that is not one member's (the breaker), and the signal that says so.

Kept apart from :mod:`.mint`, which raises :class:`Abort` for the other systematic faults (the API token refused,
Defguard unreachable, Graph refusing every write of a batch) and settles the members not minted yet.
"""

from __future__ import annotations

from ..exceptions import DefguardAPIError

__all__ = ["Abort", "Breaker"]

#: Server errors (5xx) in a row that stop minting: before the first token was minted, and after.
_FAULTS_BEFORE_FIRST_TOKEN = 3
_FAULTS_IN_A_ROW = 8


class Abort(Exception):  # noqa: N818 - internal: stop minting, settle the rest
    """Stop minting: a fault that is not one member's; the message says which."""


class Breaker:
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
            raise Abort(f"Defguard answered {exc.status} to {self.streak} token requests in a row ({exc.message})")
