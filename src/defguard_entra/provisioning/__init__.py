"""The orchestrator: :class:`ProvisioningService` and the phases its commands compose."""

from __future__ import annotations

from .report import Progress
from .service import ProvisioningService

__all__ = ["Progress", "ProvisioningService"]
