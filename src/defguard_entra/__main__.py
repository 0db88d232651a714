"""``python -m defguard_entra``: run the CLI, then end the process without the interpreter's teardown.

By the time :func:`~defguard_entra.cli.main` returns, everything the command wrote is closed: the journal (synced
and renamed in place), the lock, reports and exports, and the log handler. What the interpreter would still do is
free every object and module one by one (the Graph SDK, MSAL, cryptography, ...): about 0.1 s of every run
(docs/performance.md, "Client CPU"). mypy ends its runs the same way (``mypy.util.hard_exit``).

Only this entry point does it; ``main()`` called from Python (tests, notebooks, automation) returns as usual.
"""

import os
import sys

from defguard_entra.cli import main

code = main()
try:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
except (OSError, ValueError):  # a closed or broken stream: the interpreter's own exit reports it as it always did
    raise SystemExit(code) from None
os._exit(code)
