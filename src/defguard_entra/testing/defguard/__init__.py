"""A Defguard core emulator (1.6.x and 2.x) on top of :class:`~defguard_entra.testing._server.EmulatorServer`.

It reproduces the REST API of Defguard core v1.6.6 and v2.0.1 as defguard-entra uses it (DefGuard/defguard,
``crates/defguard_core/src/auth/mod.rs`` and ``crates/defguard_core/src/handlers/``; each module names its sources):
the license gate and the authentication order, the user and group endpoints in both version shapes,
``start_enrollment`` and ``start_desktop`` with their check order, humantime parsing and token bookkeeping, the axum
routing quirks (the web UI answering every unknown ``GET``), the ``text/plain`` extractor rejections, and seeded
faults. The deployment states are described in ``docs/reference/defguard-deployments.md``.

Standard library only. The modules, in the order they build on each other: :mod:`._wire` (responses, errors,
version and URL parsing), :mod:`._humantime` (durations and the expiry's bounds), :mod:`._body` (the JSON body of
the token endpoints), :mod:`._state` (records, settings and internals), :mod:`._seeding` (the seeding API),
:mod:`._handlers` and :mod:`._enrollment` (the endpoints), :mod:`._emulator` (:class:`DefguardEmulator`: construction,
routing, the rate limiter, faults).
"""

from __future__ import annotations

from ._emulator import DefguardEmulator, RateLimit
from ._humantime import HumantimeError, parse_humantime
from ._state import Device, EnrollmentToken

__all__ = ["DefguardEmulator", "Device", "EnrollmentToken", "HumantimeError", "RateLimit", "parse_humantime"]
