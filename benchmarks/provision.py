"""Benchmark: the PowerShell scripts' call pattern vs. ``provision``, against the emulators on 127.0.0.1.

Seeds both emulators with N members and a per-request latency L, then in the same run

  (a) replays the scripts' pattern with plain sequential requests — per member: GET user, POST start_enrollment,
      Graph lookup by mail (then UPN, then otherMails when not found), PATCH — and
  (b) runs ``python -m defguard_entra provision`` as a separate process (start-up included),

and prints wall time, requests per service, 429s seen, peak RSS and the ratio (a)/(b). See docs/performance.md for
the commands and the figures measured on the project's 2-core machine.

    python benchmarks/provision.py --members 2000 --latency-ms 20
    python benchmarks/provision.py --members 1000 --quota 100/5 --skip-replay
    python benchmarks/provision.py --members 2000 --faults --skip-replay
    python benchmarks/provision.py --members 50000 --latency-ms 0 --skip-replay
    python benchmarks/provision.py --members 1000 --defguard-workers 5/0.005 --skip-replay
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

import defguard_entra
from defguard_entra.testing import (
    DROP,
    DefguardEmulator,
    Faults,
    GraphEmulator,
    Load,
    RateLimit,
    WriteQuota,
    environment,
)

GROUP = "Bench Users"


def seed(defguard: DefguardEmulator, graph: GraphEmulator, members: int) -> list[str]:
    graph.define_attribute_set("Defguard")
    names = []
    for n in range(members):
        name = f"user{n:06}"
        email = f"{name}@bench.example.com"
        defguard.add_user(name, email=email)
        # every 10th member is found only by UPN, every 25th only by otherMails: the replay then needs its
        # second and third lookups, as the script does
        if n % 25 == 7:
            graph.add_user(f"{name}@corp.example.com", mail=f"{name}@corp.example.com", other_mails=[email])
        elif n % 10 == 3:
            graph.add_user(email, mail=None)
        else:
            graph.add_user(email, mail=email)
        names.append(name)
    defguard.add_group(GROUP, names)
    return names


def replay(defguard: DefguardEmulator, graph: GraphEmulator, names: list[str]) -> float:
    """The scripts' pattern: sequential, no batching, no retries (GenerateEnrollmentTokensEntraID.ps1 L256-342)."""
    dg, ms = requests.Session(), requests.Session()
    dg.headers["Authorization"] = f"Bearer {defguard.admin_token}"
    ms.headers["Authorization"] = f"Bearer {graph.admin_token}"
    started = time.perf_counter()
    try:
        for name in names:
            user = dg.get(f"{defguard.url}/api/v1/user/{name}", timeout=30).json()["user"]
            issued = dg.post(
                f"{defguard.url}/api/v1/user/{name}/start_enrollment",
                json={"email": None, "send_enrollment_notification": False},
                timeout=30,
            ).json()
            email = user["email"].replace("'", "''")
            entra = None
            for flt in (f"mail eq '{email}'", f"userPrincipalName eq '{email}'", f"otherMails/any(m:m eq '{email}')"):
                found = ms.get(f"{graph.url}/users", params={"$filter": flt}, timeout=30).json()["value"]
                if found:
                    entra = found[0]
                    break
            if entra is None:
                ms.get(f"{graph.url}/users", params={"$top": "1"}, timeout=30)  # the script's permission probe
                continue
            body = {
                "customSecurityAttributes": {
                    "Defguard": {
                        "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
                        "EnrollmentToken": issued["enrollment_token"],
                        "EnrollmentUrl": issued["enrollment_url"],
                    }
                }
            }
            ms.patch(f"{graph.url}/users/{entra['id']}", json=body, timeout=30).raise_for_status()
    finally:
        dg.close()
        ms.close()
    return time.perf_counter() - started


def counts(defguard: DefguardEmulator, graph: GraphEmulator) -> dict[str, Any]:
    graph_http = sum(v for k, v in graph.request_counts.items() if not k.startswith("batch-item:"))
    return {
        "defguard_requests": sum(defguard.request_counts.values()),
        "graph_requests": graph_http,
        "graph_batch_items": sum(v for k, v in graph.request_counts.items() if k.startswith("batch-item:")),
        "graph_429": graph.throttled_count,
        "defguard_faults": sum(1 for r in defguard.requests if r.status is None or r.status >= 500),
    }


def host_speed() -> float:
    """Seconds for a fixed pure-Python workload (best of 3): the host's speed at the time of the run. The client is
    CPU-bound, so its figures move with this one (docs/performance.md)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat (Linux); ``None`` elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def run_provision(
    defguard: DefguardEmulator, graph: GraphEmulator, extra: list[str]
) -> tuple[float, int, dict, float, float | None]:
    """Wall seconds, peak RSS (KiB), the report, the process's CPU seconds and the share of CPU time the hypervisor
    stole meanwhile (percent; ``None`` when unknown)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DEFGUARD_", "AZURE_"))},
        **environment(defguard, graph),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "defguard_entra",
            "provision",
            "--group-name",
            GROUP,
            "--no-progress",
            "--quiet",
            "--report",
            str(report_path),
            *extra,
        ]
        before, ticks = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_ticks()
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        after, ticks_after = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_ticks()
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    stolen = None
    if ticks is not None and ticks_after is not None and ticks_after[1] > ticks[1]:
        stolen = 100 * (ticks_after[0] - ticks[0]) / (ticks_after[1] - ticks[1])
    return elapsed, after.ru_maxrss, report | {"exit_code": proc.returncode}, cpu, stolen


def check_consistent(defguard: DefguardEmulator, graph: GraphEmulator, report: dict) -> int:
    """Members whose Entra attributes do not hold the token Defguard considers valid."""
    bad = 0
    for user in report.get("users", []):
        if user["status"] != "provisioned":
            bad += 1
            continue
        stored = graph.attributes(user["entra_id"]).get("Defguard", {})
        if stored.get("EnrollmentToken") != defguard.current_token(user["username"]):
            bad += 1
    return bad


def compile_bytecode() -> None:
    """Write the package's bytecode, as installing its wheel does: with ``PYTHONDONTWRITEBYTECODE`` set (as on the
    project's machine) an editable install would otherwise compile its ~70 modules again in every ``provision``
    process, ~0.1 s that no installed copy spends."""
    compileall.compile_dir(Path(defguard_entra.__file__).parent, quiet=1)


def startup_time() -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "defguard_entra", "--help"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--defguard-version", default="2.0", choices=["1.6", "2.0"])
    parser.add_argument("--quota", metavar="WRITES/SECONDS", help="Graph write quota, e.g. 100/5 (default: off)")
    parser.add_argument(
        "--defguard-rate-limit",
        metavar="PERIOD/BURST",
        help="Defguard 2.x's rate limiter: one request per PERIOD seconds after a burst, e.g. 0.05/10 (default: off)",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="10%% Graph 429 (decimal Retry-After), 3%% 503; 3%% Defguard token 502 or dropped",
    )
    parser.add_argument(
        "--defguard-workers",
        metavar="N/SECONDS",
        help="Defguard works on at most N requests at once, SECONDS each, the rest wait (its database pool: 2.0.1 "
        "has 5), e.g. 5/0.005 (default: off)",
    )
    parser.add_argument(
        "--limit-conn", type=int, metavar="N", help="a proxy in front of Defguard answers 503 beyond N in flight"
    )
    parser.add_argument("--skip-replay", action="store_true", help="only run provision")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument(
        "--no-bytecode", action="store_true", help="do not write the package's bytecode first (see compile_bytecode)"
    )
    args = parser.parse_args()

    latency = args.latency_ms / 1000
    quota = None
    if args.quota:
        writes, seconds = args.quota.split("/")
        quota = WriteQuota(int(writes), float(seconds))
    dg_faults = Faults(latency=latency)
    graph_faults = Faults(latency=latency)
    with (
        DefguardEmulator(
            args.defguard_version, enrollment_url="https://enroll.example.com", faults=dg_faults
        ) as defguard,
        GraphEmulator(faults=graph_faults) as graph,
    ):
        started = time.perf_counter()
        names = seed(defguard, graph, args.members)
        print(
            f"seeded {args.members} members in {time.perf_counter() - started:.1f}s; latency {args.latency_ms} ms "
            f"per request; Defguard {defguard.version}; quota {args.quota or 'off'}; faults {args.faults}"
        )
        if not args.no_bytecode:
            compile_bytecode()
        print(f"start-up: python -m defguard_entra --help answers in {startup_time():.3f}s (best of 5)")
        print(f"host: 3,000,000 pure-Python additions take {host_speed():.3f}s (best of 3)")

        replay_time = None
        if not args.skip_replay:
            replay_time = replay(defguard, graph, names)
            c = counts(defguard, graph)
            print(
                f"(a) script pattern: {replay_time:.1f}s, Defguard {c['defguard_requests']} requests, "
                f"Graph {c['graph_requests']} requests, 429s {c['graph_429']}"
            )
            defguard.reset_log()
            graph.reset_log()

        graph.write_quota = quota
        limiter = None
        if args.defguard_rate_limit:
            period, burst = args.defguard_rate_limit.split("/")
            limiter = RateLimit(float(period), int(burst))
            defguard.rate_limit = limiter
        if args.faults:
            defguard.faults = Faults(
                latency=latency,
                rates={502: 0.015, DROP: 0.015},
                seed=7,
                endpoints={"start_enrollment", "start_desktop"},
            )
            graph.faults = Faults(latency=latency, rates={429: 0.10, 503: 0.03}, seed=11)
            graph.item_faults = Faults(rates={429: 0.10, 503: 0.03}, seed=13)
            graph.retry_after = "decimal"
        load = None
        if args.defguard_workers or args.limit_conn:
            workers, work = args.defguard_workers.split("/") if args.defguard_workers else (None, "0")
            load = Load(int(workers) if workers else None, float(work), args.limit_conn)
            defguard.load = load
        throttled_before = graph.throttled_count
        extra: list[str] = []  # default flags: writes start at full speed and slow only when Graph says so
        if args.concurrency:
            extra += ["--concurrency", str(args.concurrency)]
        elapsed, rss_kib, report, cpu, stolen = run_provision(defguard, graph, extra)
        c = counts(defguard, graph)
        inconsistent = check_consistent(defguard, graph, report)
        retries = sum(u.get("retries", 0) for u in report.get("users", []))
        print(
            f"(b) provision:      {elapsed:.1f}s (whole process), Defguard {c['defguard_requests']} requests, "
            f"Graph {c['graph_requests']} requests ({c['graph_batch_items']} batch items), "
            f"429s {graph.throttled_count - throttled_before}, injected Defguard faults {c['defguard_faults']}, "
            f"retries in report {retries}, peak RSS {rss_kib / 1024:.0f} MiB, exit {report.get('exit_code')}"
        )
        steal = f"; the hypervisor stole {stolen:.1f} % of the CPU time meanwhile" if stolen is not None else ""
        print(f"    CPU: {cpu:.2f}s in the provision process{steal}")
        print(f"    summary {report.get('summary')}; members not consistent with Defguard: {inconsistent}")
        print(f"    phases {(report.get('audit') or {}).get('timings')}")
        n = args.members
        print(f"    limits: Graph <= {n // 10 + 10}, Defguard <= {n + n // 100 + 10} requests")
        if limiter is not None:
            mints = defguard.request_counts["start_enrollment"] + defguard.request_counts["start_desktop"]
            bound = max(0, n - limiter.burst) * limiter.period
            share = 100 * limiter.refused / max(1, mints)
            print(
                f"    Defguard limiter: {limiter.refused} requests refused ({share:.1f} % of {mints} token requests); "
                f"bound (N - burst) x period = {bound:.1f}s"
            )
        if load is not None:
            waits = sorted(load.waits)
            median = f"{waits[len(waits) // 2] * 1000:.1f} ms" if waits else "-"
            print(
                f"    Defguard load: at most {load.peak} requests in flight at once, median wait for a worker "
                f"{median}, {load.refused} refused with 503 (limit_conn)"
            )
        if quota is not None:
            bound = max(0, n - quota.writes) / quota.rate
            print(f"    quota bound: {bound:.1f}s (spend the bucket of {quota.writes}, then {quota.rate:g}/s)")
        if replay_time is not None:
            print(f"ratio (a)/(b): {replay_time / elapsed:.1f}x")
    return 0 if inconsistent == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
