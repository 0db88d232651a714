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
    ConfigurationError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardEntraError,
    DefguardError,
    DefguardUnreachableError,
    EntraAPIError,
    EntraAuthError,
    EntraError,
    PreflightError,
    UnexpectedResponseError,
)
from .models import (
    DefguardGroup,
    DefguardServer,
    DefguardUser,
    EntraUser,
    IssuedToken,
    MatchedBy,
    Outcome,
    ProvisioningConfig,
    Report,
    Secret,
    Status,
    TokenKind,
)

if TYPE_CHECKING:
    from ._defguard import DefguardClient
    from ._entra import AsyncEntraClient
    from ._service import ProvisioningService

__all__ = [
    "AsyncEntraClient",
    "AuthMode",
    "Cloud",
    "ConfigurationError",
    "DefguardAPIError",
    "DefguardAuthError",
    "DefguardClient",
    "DefguardEntraError",
    "DefguardError",
    "DefguardGroup",
    "DefguardServer",
    "DefguardUnreachableError",
    "DefguardUser",
    "EntraAPIError",
    "EntraAuthError",
    "EntraError",
    "EntraUser",
    "GraphSettings",
    "IssuedToken",
    "MatchedBy",
    "Outcome",
    "PreflightError",
    "ProvisioningConfig",
    "ProvisioningService",
    "RedactingFilter",
    "Report",
    "RetryPolicy",
    "Secret",
    "Settings",
    "Status",
    "TokenKind",
    "UnexpectedResponseError",
]

_LAZY = {
    "DefguardClient": "._defguard",
    "AsyncEntraClient": "._entra",
    "ProvisioningService": "._service",
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
