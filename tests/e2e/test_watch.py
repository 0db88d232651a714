"""``sync --watch INTERVAL`` in a real subprocess against both emulators: cycles repeat, SIGTERM while waiting exits
at once with the last cycle's code, SIGTERM during a cycle lets it finish, a cycle that cannot run is retried.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from defguard_entra.testing import Faults, environment
from helpers import Org

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be sent to a process on Windows")


class Watch:
    """The watch subprocess, its stderr read line by line (every line must be JSON) on a thread."""

    def __init__(self, org: Org, tmp_path: Path, *args: str) -> None:
        env = {
            **environment(org.defguard, org.graph),
            "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path / "state"),
            "HOME": str(tmp_path),
            "PATH": os.environ["PATH"],
        }
        self.report = tmp_path / "sync.json"
        argv = [
            sys.executable,
            "-m",
            "defguard_entra",
            "sync",
            *args,
            "--log-format",
            "json",
            "--report",
            str(self.report),
        ]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, done: Any, timeout: float = 60) -> None:
        """Collect events until ``done(events)`` holds (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not done(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                pytest.fail(f"timed out; events so far: {self.events}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                break
            try:
                self.events.append(json.loads(line))  # every stderr line is a JSON object
            except ValueError:
                self.proc.wait(timeout=30)
                self._reader.join(timeout=10)
                rest = "".join(iter(lambda: self._lines.get(timeout=1) or "", ""))
                pytest.fail(f"not a JSON line on stderr: {line!r}{rest}")

    def runs(self, events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [e for e in (self.events if events is None else events) if e["event"] == "run"]

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit (bounded), read the rest of stderr to its end, close the pipes; the exit code."""
        code = self.proc.wait(timeout=timeout)
        self.until(lambda _: False, timeout=10)
        self._reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def waiting(self, events: list[dict[str, Any]], cycles: int) -> bool:
        """Whether ``cycles`` cycles have ended and the watch said it waits for the next one."""
        said = [e for e in events if e["event"] == "log" and e["message"].startswith("watch: cycle")]
        return len(self.runs(events)) >= cycles and len(said) >= cycles


def test_watch_runs_cycles_until_sigterm_and_exits_with_the_last_cycles_code(org: Org, tmp_path: Path) -> None:
    watch = Watch(org, tmp_path, "--group-name", org.scenario.group, "--watch", "3s", "--no-progress")
    watch.until(lambda events: watch.waiting(events, 2))
    signalled = time.monotonic()
    code = watch.stop()
    assert time.monotonic() - signalled < 2.5  # at once, not at the end of the wait
    runs = watch.runs()
    assert [r["cycle"] for r in runs][:2] == [1, 2]
    assert all(r["exit_code"] == 1 for r in runs)  # the sample organisation has members that need attention
    assert code == 1  # stopped while waiting: the last cycle's code
    assert any("watch: stopped while waiting" in e.get("message", "") for e in watch.events)
    assert sum(r["statuses"].get("provisioned", 0) for r in runs) == len(org.scenario.provisioned)
    assert runs[1]["statuses"].get("existing") == len(org.scenario.provisioned)  # the second cycle minted nothing
    assert runs[1]["actions"].get("mint", 0) == 0
    assert runs[1]["actions"].get("refresh", 0) == 0
    report = json.loads(watch.report.read_text())  # each cycle replaces the report: the last cycle's
    assert report["summary"] == runs[-1]["statuses"]
    assert not org.scenario.differences(org.defguard, org.graph)


def test_sigterm_during_a_cycle_lets_it_finish_then_the_watch_exits(org: Org, tmp_path: Path) -> None:
    org.graph.faults = Faults(latency=0.15)  # a cycle of some seconds: the signal lands inside it
    watch = Watch(org, tmp_path, "--group-name", org.scenario.group, "--watch", "1h", "--no-progress", "-v")
    watch.until(lambda events: any("preflight passed" in e.get("message", "") for e in events))
    code = watch.stop(timeout=60)
    runs = watch.runs()
    assert len(runs) == 1, runs
    assert runs[0]["interrupted"] is False
    assert "interrupted" not in runs[0]["statuses"]
    assert runs[0]["statuses"]["provisioned"] == len(org.scenario.provisioned)  # the whole cycle was done
    assert code == 1
    assert any(e.get("level") == "warning" and "no further cycle starts" in e["message"] for e in watch.events)


def test_a_cycle_that_cannot_run_is_retried_at_the_next_interval(org: Org, tmp_path: Path) -> None:
    watch = Watch(org, tmp_path, "--group-name", "No Such Group", "--watch", "2s")
    watch.until(lambda events: watch.waiting(events, 2))
    code = watch.stop()
    assert code == 3
    assert all(r["exit_code"] == 3 for r in watch.runs())
    assert any("could not run (exit code 3): trying again" in e.get("message", "") for e in watch.events)


def test_a_usage_error_ends_the_watch_at_once(org: Org, tmp_path: Path) -> None:
    watch = Watch(org, tmp_path, "--group-name", org.scenario.group, "--watch", "1s", "--max-changes", "0")
    code = watch.finish()
    assert code == 2
    assert [e["event"] for e in watch.events] == ["log", "run"]
    assert org.defguard.requests == []
