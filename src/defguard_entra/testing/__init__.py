"""Emulators of Defguard and Microsoft Graph for tests, demos and your own automation (standard library only).

Both are real HTTP servers on ``127.0.0.1`` (ephemeral port) that follow the contracts in the project's reference
documents: status codes, bodies, content types, paging, batching and throttling. Use them as context managers::

    from defguard_entra.testing import DefguardEmulator, GraphEmulator

    with DefguardEmulator("2.0") as defguard, GraphEmulator() as graph:
        ...

``python -m defguard_entra.testing serve`` starts both with a sample organisation for trying the CLI by hand.
"""

from __future__ import annotations

from ._scenarios import SAMPLE_GROUP, Scenario, environment, running_emulators, seed_sample_organisation
from ._server import DROP, Faults, RecordedRequest
from .defguard import DefguardEmulator, RateLimit
from .graph import GraphEmulator, WriteQuota

__all__ = [
    "DROP",
    "SAMPLE_GROUP",
    "DefguardEmulator",
    "Faults",
    "GraphEmulator",
    "RateLimit",
    "RecordedRequest",
    "Scenario",
    "WriteQuota",
    "environment",
    "running_emulators",
    "seed_sample_organisation",
]
