"""defguard-entra: provision Defguard desktop VPN clients for Microsoft Entra ID users.

The public API is what this module exports (``__all__``). The Microsoft SDKs are imported only when a Graph client
is built, so ``import defguard_entra`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._redact import RedactingFilter
from ._retry import RetryPolicy
from .config import AuthMode, Cloud, GraphSettings, Settings
from .exceptions import (
    ClientConfigError,
    ConfigurationError,
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardEntraError,
    DefguardError,
    DefguardNotSentError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    EntraAPIError,
    EntraAuthError,
    EntraError,
    PreflightError,
    ServiceStateError,
    UnexpectedResponseError,
)
from .models import (
    ActivityEvent,
    ActivityKind,
    ActivityLog,
    AttributeSetCheck,
    CheckItem,
    Checklist,
    CheckState,
    DefguardDeployment,
    DefguardGroup,
    DefguardServer,
    DefguardUser,
    EnrolledPolicy,
    EnrollmentAttributes,
    EntraGroup,
    EntraUser,
    GraphPrincipal,
    GroupSource,
    IssuedToken,
    Match,
    MatchedBy,
    Outcome,
    ProvisioningConfig,
    Report,
    Secret,
    Status,
    TokenKind,
    TokenState,
    WriteResult,
)

if TYPE_CHECKING:
    from ._defguard import DefguardClient
    from ._desktop_client import (
        WriteOutcome,
        afetch_provisioning_config,
        deep_link,
        default_provisioning_path,
        fetch_provisioning_config,
        write_provisioning_file,
    )
    from ._entra import AsyncEntraClient
    from ._entra_sync import EntraClient
    from ._export import ExportEntry, ExportManifest, write_export
    from .provisioning import ProvisioningService

__all__ = [
    "ActivityEvent",
    "ActivityKind",
    "ActivityLog",
    "AsyncEntraClient",
    "AttributeSetCheck",
    "AuthMode",
    "CheckItem",
    "CheckState",
    "Checklist",
    "ClientConfigError",
    "Cloud",
    "ConfigurationError",
    "DefguardAPIError",
    "DefguardAlreadyActivatedError",
    "DefguardAuthError",
    "DefguardClient",
    "DefguardDeployment",
    "DefguardEntraError",
    "DefguardError",
    "DefguardGroup",
    "DefguardNotSentError",
    "DefguardServer",
    "DefguardUnreachableError",
    "DefguardUser",
    "DefguardUserDisabledError",
    "EnrolledPolicy",
    "EnrollmentAttributes",
    "EntraAPIError",
    "EntraAuthError",
    "EntraClient",
    "EntraError",
    "EntraGroup",
    "EntraUser",
    "ExportEntry",
    "ExportManifest",
    "GraphPrincipal",
    "GraphSettings",
    "GroupSource",
    "IssuedToken",
    "Match",
    "MatchedBy",
    "Outcome",
    "PreflightError",
    "ProvisioningConfig",
    "ProvisioningService",
    "RedactingFilter",
    "Report",
    "RetryPolicy",
    "Secret",
    "ServiceStateError",
    "Settings",
    "Status",
    "TokenKind",
    "TokenState",
    "UnexpectedResponseError",
    "WriteOutcome",
    "WriteResult",
    "afetch_provisioning_config",
    "deep_link",
    "default_provisioning_path",
    "fetch_provisioning_config",
    "write_export",
    "write_provisioning_file",
]

_LAZY = {
    "DefguardClient": "._defguard",
    "AsyncEntraClient": "._entra",
    "EntraClient": "._entra_sync",
    "ProvisioningService": ".provisioning",
    "ExportEntry": "._export",
    "ExportManifest": "._export",
    "write_export": "._export",
    "WriteOutcome": "._desktop_client",
    "afetch_provisioning_config": "._desktop_client",
    "deep_link": "._desktop_client",
    "default_provisioning_path": "._desktop_client",
    "fetch_provisioning_config": "._desktop_client",
    "write_provisioning_file": "._desktop_client",
}


def __getattr__(name: str) -> Any:
    """Heavy names (requests, msgraph) and ``__version__`` are loaded on first use."""
    if name == "__version__":
        from ._version import __version__  # noqa: PLC0415

        return __version__
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
