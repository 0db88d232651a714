"""The benchmark scripts still run (tiny sizes; their figures are not checked here: see docs/performance.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ["--members", "30", "--latency-ms", "0"],
        ["--members", "30", "--latency-ms", "0", "--faults", "--skip-replay"],
        ["--members", "30", "--latency-ms", "0", "--quota", "100/5", "--skip-replay", "--defguard-version", "1.6"],
        ["--members", "30", "--latency-ms", "0", "--defguard-workers", "5/0.001", "--limit-conn", "8", "--skip-replay"],
    ],
)
def test_provision_benchmark_smoke(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "provision.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(b) provision:" in proc.stdout
    assert "members not consistent with Defguard: 0" in proc.stdout
    assert re.search(r"host: 3,000,000 pure-Python additions take \d+\.\d{3}s", proc.stdout)
    assert re.search(r"CPU: \d+\.\d\ds in the provision process", proc.stdout)
    if "--skip-replay" not in args:
        assert "ratio (a)/(b):" in proc.stdout
    if "--limit-conn" in args:
        assert "Defguard load: at most" in proc.stdout


def test_emulator_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "emulators.py"), "--seconds", "0.5", "--clients", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind in ("start_enrollment", "graph_filter", "graph_batch20"):
        assert kind in proc.stdout


def test_dead_server_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dead_server.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(a) connection refused: exit 3 in" in proc.stdout
    assert "(b) silent server, --timeout 5: exit 3 in" in proc.stdout
