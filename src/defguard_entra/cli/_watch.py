"""``sync --watch INTERVAL``: run the command every interval until stopped, for a long-running container or service.

Each cycle is a whole run of the command (its own sign-in, lock, report and exit code, presented as it ends;
``--report`` is replaced by each cycle's). Cycles start ``INTERVAL`` apart (at once after a cycle that took longer).
A cycle that cannot run (exit 3: Defguard or Graph down, a refused credential) is logged and tried again at the next
interval; a usage error (2) or an abort (130) ends the watch. The first stop signal lets the cycle in flight finish
and starts no other (while waiting, it ends the wait at once); the watch then exits with the last cycle's code.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._present import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE
from ._render import timespan
from ._settings import sync_values

if TYPE_CHECKING:
    from ._commands import Context
    from ._options import SyncOptions

__all__ = ["SHORT_INTERVAL", "watch"]

#: Intervals below this are allowed (drills, tests) but warned about: every cycle reads the whole group.
SHORT_INTERVAL = dt.timedelta(minutes=1)


def _shown(seconds: float) -> str:
    return timespan(seconds) if seconds else "no time"


def watch(once: Callable[[int], int], options: SyncOptions, finish: threading.Event, ctx: Context) -> int:
    """Run ``once(cycle)`` (one run of the command, presented, returning its exit code) every interval until
    ``finish`` is set; returns the last cycle's exit code."""
    console = ctx.console
    cycle, interval = 0, None
    while True:
        cycle += 1
        started = time.monotonic()
        code = once(cycle)
        if code in {EXIT_USAGE, EXIT_INTERRUPTED} or ctx.stop.is_set():
            return code
        if interval is None:  # the first cycle checked the options (a usage error returned above)
            checked = sync_values(options).watch
            assert checked is not None
            interval = checked.total_seconds()
            if checked < SHORT_INTERVAL:
                console.warn(
                    f"--watch {options.watch}: cycles start every {_shown(interval)}; each reads the whole group from "
                    "Defguard and Graph, so keep the interval to minutes or more outside drills and tests"
                )
        if finish.is_set():
            console.info(f"watch: stopped after cycle {cycle} (exit code {code})")
            return code
        wait = max(0.0, interval - (time.monotonic() - started))
        if code == EXIT_FATAL:
            console.warn(f"watch: cycle {cycle} could not run (exit code 3): trying again in {_shown(wait)}")
        else:
            console.info(f"watch: cycle {cycle} ended with exit code {code}; the next starts in {_shown(wait)}")
        if _wait(finish, wait):
            console.info(f"watch: stopped while waiting for cycle {cycle + 1} (exit code {code}, of cycle {cycle})")
            return code


#: How often the wait between cycles looks at the stop signal (the longest a stop waits while no cycle runs).
_TICK = 0.2


def _wait(finish: threading.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``finish`` is set (``True``). Not ``finish.wait()``: the signal handler sets
    ``finish`` in this same thread, and would deadlock on the event's lock if the signal landed inside ``wait``."""
    deadline = time.monotonic() + seconds
    while not finish.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(_TICK, left))
    return True
