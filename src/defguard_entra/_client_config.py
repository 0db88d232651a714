"""Transitional: the names ``_client_config`` held before it became :mod:`._desktop_client` (the desktop client's
``provisioning.json``) and :mod:`._export` (one file per member, and the manifest).

Only for the modules still importing the old path while they are redesigned in parallel (``cli``, ``_service``,
``tests/test_cli_reference.py``); delete this module once they import from the two new ones.
"""

from __future__ import annotations

from ._desktop_client import *  # noqa: F403
from ._export import *  # noqa: F403
