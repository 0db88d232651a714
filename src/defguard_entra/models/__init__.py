"""Plain data: frozen attrs value objects shared by the clients, the service and the renderers.

Wire shapes are turned into these by the adapters (``from_api``, ``from_graph``); nothing past the adapters sees a
raw payload. Tokens are :class:`Secret` so that ``repr``, logs and reports never show them by accident.
"""

from __future__ import annotations

from ._defguard import (
    ActivityEvent,
    ActivityLog,
    DefguardDeployment,
    DefguardGroup,
    DefguardServer,
    DefguardUser,
    IssuedToken,
)
from ._entra import (
    ATTRIBUTE_EXPIRES as ATTRIBUTE_EXPIRES,
)
from ._entra import (
    ATTRIBUTE_TOKEN as ATTRIBUTE_TOKEN,
)
from ._entra import (
    ATTRIBUTE_URL as ATTRIBUTE_URL,
)
from ._entra import (
    AttributeSetCheck,
    EnrollmentAttributes,
    EntraGroup,
    EntraUser,
    GraphPrincipal,
    Match,
    ProvisioningConfig,
    WriteResult,
)
from ._entra import format_expiry as format_expiry
from ._entra import parse_expiry as parse_expiry
from ._report import OUTCOME_FIELDS as OUTCOME_FIELDS
from ._report import CheckItem, Checklist, CheckState, Outcome, Report
from ._report import summarize as summarize
from ._values import (
    ENROLLED_POLICIES as ENROLLED_POLICIES,
)
from ._values import (
    GROUP_SOURCES as GROUP_SOURCES,
)
from ._values import (
    ActivityKind,
    EnrolledPolicy,
    GroupSource,
    MatchedBy,
    Secret,
    Status,
    TokenKind,
    TokenState,
)
from ._values import live_secret_values as live_secret_values

#: The public types (all exported by the package too); the constants above are re-exported for the library's own
#: modules only.
__all__ = [
    "ActivityEvent",
    "ActivityKind",
    "ActivityLog",
    "AttributeSetCheck",
    "CheckItem",
    "CheckState",
    "Checklist",
    "DefguardDeployment",
    "DefguardGroup",
    "DefguardServer",
    "DefguardUser",
    "EnrolledPolicy",
    "EnrollmentAttributes",
    "EntraGroup",
    "EntraUser",
    "GraphPrincipal",
    "GroupSource",
    "IssuedToken",
    "Match",
    "MatchedBy",
    "Outcome",
    "ProvisioningConfig",
    "Report",
    "Secret",
    "Status",
    "TokenKind",
    "TokenState",
    "WriteResult",
]
