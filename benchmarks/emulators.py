"""Benchmark: how many requests per second the emulators serve on loopback with latency off.

The emulators run in this process; the load comes from separate client processes using ``http.client`` with
keep-alive (a light client, so that the figure is the server's and not the client library's). Prints requests per
second for Defguard ``start_enrollment``, Graph ``GET /users?$filter=mail eq …`` and Graph ``$batch`` of 20 PATCHes.

    python benchmarks/emulators.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import time
from urllib.parse import quote, urlsplit

from defguard_entra.testing import DefguardEmulator, GraphEmulator

USERS = 5000


def _client(kind: str, url: str, token: str, ids: list[str], seconds: float, out: mp.Queue) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "bench", "Content-Type": "application/json"}
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        i = done % len(ids)
        if kind == "start_enrollment":
            conn.request("POST", f"/api/v1/user/{ids[i]}/start_enrollment", body=b"{}", headers=headers)
        elif kind == "graph_filter":
            flt = quote(f"mail eq '{ids[i]}@example.com'")
            conn.request("GET", f"{parts.path}/users?$filter={flt}&$select=id,mail", headers=headers)
        else:
            body = {
                "requests": [
                    {
                        "id": str(n),
                        "method": "PATCH",
                        "url": f"/users/{ids[(i + n) % len(ids)]}",
                        "headers": {"Content-Type": "application/json"},
                        "body": {
                            "customSecurityAttributes": {
                                "Defguard": {
                                    "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
                                    "EnrollmentToken": "x" * 32,
                                    "EnrollmentUrl": "https://enroll.example.com/",
                                }
                            }
                        },
                    }
                    for n in range(20)
                ]
            }
            conn.request("POST", f"{parts.path}/$batch", body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status >= 400:
            raise SystemExit(f"{kind}: HTTP {response.status}")
        done += 1
    conn.close()
    out.put(done)


def _measure(kind: str, url: str, token: str, ids: list[str], seconds: float, clients: int) -> float:
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(kind, url, token, ids, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    args = parser.parse_args()
    with DefguardEmulator("2.0") as defguard, GraphEmulator() as graph:
        graph.define_attribute_set("Defguard")
        names = [f"user{n:05}" for n in range(USERS)]
        graph_ids = []
        for name in names:
            defguard.add_user(name, email=f"{name}@example.com")
            graph_ids.append(graph.add_user(f"{name}@example.com", mail=f"{name}@example.com"))
        for kind, url, token, ids in (
            ("start_enrollment", defguard.url, defguard.admin_token, names),
            ("graph_filter", graph.url, graph.admin_token, names),
            ("graph_batch20", graph.url, graph.admin_token, graph_ids),
        ):
            defguard.reset_log()
            graph.reset_log()
            rate = _measure(kind, url, token, ids, args.seconds, args.clients)
            extra = f" ({rate * 20:.0f} PATCH/s)" if kind == "graph_batch20" else ""
            print(f"{kind:18} {rate:8.0f} requests/s{extra}  [{args.clients} client processes, {args.seconds}s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
