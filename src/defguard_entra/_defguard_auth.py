"""What each of Defguard's refusals of an API token means: one table for the client's errors and for ``check``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["DEFGUARD_AUTH_HINTS"]

#: What each of Defguard's refusals of an API token means (the server's exact ``msg``, v1.6.6 and v2.0.1
#: ``crates/defguard_core/src/auth/mod.rs``), for the client's errors and for ``check``.
DEFGUARD_AUTH_HINTS: Final[Mapping[str, str]] = {
    "Session is required": (
        "the API token was ignored: Defguard honours API tokens only with an active Business (or higher) license "
        "that is within its user and location limits and, on 2.x, not more than 14 days past its end (1.6.x: or "
        "under the free limits), so the server fell back to asking for a browser session"
    ),
    "Invalid API token": (
        "the token is unknown, revoked, or its owner is disabled: create a new API token for an admin user in "
        "Defguard (disabling the "
        "owner in the UI or API deletes their API tokens for good: re-enabling the user does not bring them back)"
    ),
    "Invalid auth header": "the token is malformed: it should look like dg-<32 letters and digits>",
    "Token authentication is not allowed for normal users": (
        "the token's owner is no longer a Defguard admin: use a token of an admin user"
    ),
}
