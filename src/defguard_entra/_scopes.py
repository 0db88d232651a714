"""The delegated Microsoft Graph permissions each command signs in with: the one table of them.

Least privilege, as ``docs/entra-setup.md`` explains each one. They matter only for delegated sign-in
(interactive, device code); app-only sign-in always asks for ``<Graph root>/.default`` and gets what the app was
granted.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from .models import GroupSource

__all__ = ["COMMAND_SCOPES", "GROUP_SCOPES", "OPTIONAL_SCOPES", "Command", "scopes_for"]

Command = Literal["provision", "sync", "status", "clear", "check", "export", "fetch-config"]

_READ_ATTRIBUTES = ("User.Read.All", "CustomSecAttributeAssignment.Read.All")
_WRITE_ATTRIBUTES = ("User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All")
#: Optional, never asked for: with it (consented, and the Attribute Definition Reader role) the attribute set's
#: definitions are checked; without, the run goes on with a note. Entra puts every scope of the resource that was
#: consented into the token whatever the request names (docs/entra-setup.md), so a tenant that consented it still
#: gets the check.
OPTIONAL_SCOPES = ("CustomSecAttributeDefinition.Read.All",)

#: Per command: ``provision`` finds users, checks the attribute set, writes and reads the pair; ``sync`` does what
#: ``provision`` does and also finds the users outside the group who hold the attributes (a filter on their value,
#: which reading the assignments covers) and writes nulls; ``clear`` writes nulls; ``check`` asks for what
#: ``provision`` will need so that it tests the same sign-in; ``status`` and ``export`` only read; ``fetch-config``
#: reads the signed-in user's own pair.
COMMAND_SCOPES: Mapping[Command, tuple[str, ...]] = MappingProxyType(
    {
        "provision": _WRITE_ATTRIBUTES,
        "sync": _WRITE_ATTRIBUTES,
        "clear": _WRITE_ATTRIBUTES,
        "check": _WRITE_ATTRIBUTES,
        "status": _READ_ATTRIBUTES,
        "export": _READ_ATTRIBUTES,
        "fetch-config": ("User.Read", "CustomSecAttributeAssignment.Read.All"),
    }
)
#: Added when the group is an Entra group (its members are read from Graph).
GROUP_SCOPES = ("GroupMember.Read.All",)


def scopes_for(command: Command, group_source: GroupSource = "defguard") -> tuple[str, ...]:
    """The delegated scopes ``command`` needs with this group source (``export --provision`` is ``provision``)."""
    return COMMAND_SCOPES[command] + (GROUP_SCOPES if group_source == "entra" else ())
