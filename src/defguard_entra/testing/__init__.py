"""Emulators of Defguard, Microsoft Graph and the Microsoft identity platform for tests, demos and your own
automation.

The Defguard and Graph emulators use the standard library only; :class:`IdentityEmulator` (HTTPS, JWTs) also needs
``cryptography``, which azure-identity brings, and is imported on first use. They are real HTTP servers on
``127.0.0.1`` (ephemeral port) that follow the contracts in the project's reference documents: status codes,
bodies, content types, paging, batching and throttling. Use them as context managers::

    from defguard_entra.testing import DefguardEmulator, GraphEmulator

    with DefguardEmulator("2.0") as defguard, GraphEmulator() as graph:
        ...

``python -m defguard_entra.testing serve`` starts both with a sample organisation for trying the CLI by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import Clock
from ._scenarios import SAMPLE_GROUP, Scenario, environment, running_emulators, seed_sample_organisation
from ._server import DROP, Faults, Load, RecordedRequest
from .defguard import DefguardEmulator, RateLimit
from .graph import GraphEmulator, WriteQuota

if TYPE_CHECKING:
    from .identity import AppCertificate, IdentityEmulator, make_certificate

__all__ = [
    "DROP",
    "SAMPLE_GROUP",
    "AppCertificate",
    "Clock",
    "DefguardEmulator",
    "Faults",
    "GraphEmulator",
    "IdentityEmulator",
    "Load",
    "RateLimit",
    "RecordedRequest",
    "Scenario",
    "WriteQuota",
    "environment",
    "make_certificate",
    "running_emulators",
    "seed_sample_organisation",
]

_LAZY = frozenset({"AppCertificate", "IdentityEmulator", "make_certificate"})


def __getattr__(name: str) -> Any:
    """The identity emulator's names, imported on first use (``cryptography`` is not light)."""
    if name in _LAZY:
        from . import identity  # noqa: PLC0415

        return getattr(identity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
