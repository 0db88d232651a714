"""Benchmark: how fast a dead or silent Defguard is declared dead (targets: ≤ 5 s refused, ≤ 15 s silent).

Runs ``python -m defguard_entra provision`` as a separate process against (a) a port where nothing listens
(connection refused) and (b) a socket on 127.0.0.1 that accepts connections and never answers, with
``--timeout 5``, and prints the wall time, exit code and the one-line error of each.

    python benchmarks/dead_server.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

TOKEN = "dg-" + "a" * 32  # a placeholder: the server never sees it


def run(url: str, *extra: str) -> tuple[float, int, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DEFGUARD_API_TOKEN": TOKEN,
        "DEFGUARD_ENTRA_GRAPH_TOKEN": "placeholder",
        "DEFGUARD_ENTRA_GRAPH_URL": "http://127.0.0.1:9/v1.0",
    }
    command = [sys.executable, "-m", "defguard_entra", "provision", "--url", url, "--group-name", "G", *extra]
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return time.monotonic() - started, proc.returncode, lines[-1] if lines else proc.stderr.strip()[-200:]


def silent_server() -> tuple[int, threading.Event]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1], stop


def main() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    seconds, code, line = run(f"http://127.0.0.1:{closed_port}")
    print(f"(a) connection refused: exit {code} in {seconds:.1f} s (target: exit 3 in <= 5 s): {line}")
    port, stop = silent_server()
    try:
        seconds, code, line = run(f"http://127.0.0.1:{port}", "--timeout", "5")
    finally:
        stop.set()
    print(f"(b) silent server, --timeout 5: exit {code} in {seconds:.1f} s (target: exit 3 in <= 15 s): {line}")


if __name__ == "__main__":
    main()
