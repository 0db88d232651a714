"""The command line: parse, call the library, present. The only part of the package that reads ``os.environ`` or
writes to stdout.

``python -m defguard_entra [provision] -Url … -ApiToken … -GroupName …`` works as the PowerShell script's example
does; ``demo`` runs the whole flow against the built-in emulators.

The modules: :mod:`._main` (``main`` and the exception → exit-code map), :mod:`._parser` (argparse) and
:mod:`._argv` (PowerShell spellings), :mod:`._options` (typed options per command), :mod:`._settings` (flags +
environment → ``Settings``), :mod:`._commands` and :mod:`._demo` (handlers that return data), :mod:`._present`
and :mod:`._render` (that data as text, files and exit codes), :mod:`._console` (streams, logging) and :mod:`._signals`
(stop signals), :mod:`._watch` (``sync --watch``).
"""

from __future__ import annotations

from ._main import as_flags as _as_flags  # noqa: F401 - tests/e2e/test_nothing_lost.py checks the message rewriting
from ._main import main
from ._parser import COMMANDS as COMMANDS
from ._parser import build_parser as build_parser
from ._present import EXIT_FAILED, EXIT_FATAL, EXIT_HELD, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._settings import load_settings as load_settings

__all__ = ["EXIT_FAILED", "EXIT_FATAL", "EXIT_HELD", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]
