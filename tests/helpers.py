"""Shared test helpers (imported by conftest and the tests)."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from defguard_entra.cli import main
from defguard_entra.testing import DefguardEmulator, GraphEmulator, Scenario, environment


@dataclass
class Org:
    defguard: DefguardEmulator
    graph: GraphEmulator
    scenario: Scenario

    @property
    def env(self) -> dict[str, str]:
        return environment(self.defguard, self.graph)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def report(self, path: Any) -> dict[str, Any]:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123
            return json.load(file)


def run_cli(argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: str = "") -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=dict(env or {}), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def run_in_terminal(
    argv: Sequence[str], env: Mapping[str, str], timeout: float, *, on_output: Any = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a pseudo-terminal as stdin and stderr (a person at a terminal, as a sign-in that may
    prompt requires) and stdout on a pipe; stderr comes back with CRLF made LF. ``on_output(text_so_far, proc)`` is
    called as stderr grows (e.g. to send Ctrl-C once a prompt shows). POSIX only."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        list(argv), env=dict(env), stdin=slave, stdout=subprocess.PIPE, stderr=slave, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                said = b"".join(chunks).decode("utf-8", "replace")[-2000:]
                raise subprocess.TimeoutExpired(list(argv), timeout, stderr=said)
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    data = b""
                if data:
                    chunks.append(data)
                    if on_output is not None:
                        on_output(b"".join(chunks).decode("utf-8", "replace"), proc)
                    continue
                if proc.poll() is not None:  # end of output (EIO once the child closed the terminal)
                    break
                time.sleep(0.05)
            elif proc.poll() is not None:
                break
        stdout = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
    finally:
        os.close(master)
        if proc.stdout:
            proc.stdout.close()
        proc.wait(timeout=10)
    stderr = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
