"""`make soak`: 1,000,000 mixed requests against one service process; is its memory bounded?

Starts the Alpha Vantage simulator and the service (real uvicorn subprocesses on 127.0.0.1,
default settings: CACHE_MAX_ENTRIES 10,000), then runs wrk (bench/soak.lua) in rounds of
100,000 responses: cache hits on a hot set, misses that keep the LRU cache full and evicting,
unknown symbols (404), invalid requests (422), and stretches with the breaker forced open
(503). After each round it reads the service's VmRSS, so the table shows whether memory levels
off once the cache is full. On this 2-core machine it runs at about 1,100 requests/s: about
15 minutes for the default 1,000,000 (`--total` sets the count).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

# `python bench/soak.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.concurrency import proc_status_kib
from bench.stress import (
    ADMIN_TOKEN,
    HOST,
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    Server,
    serve,
    serve_simulator,
    service_env,
    to_ms,
)

CONNECTIONS = 64
ROUND_CAP_SECONDS = 600  # a round that has not reached its quota by then stops anyway
MISS_SHARE = 0.25  # of requests, as in soak.lua
EXPECTED_RPS = 1_100  # measured here; only for the estimate printed at the start
ERROR_KINDS = ("connect", "read", "write", "timeout")  # as wrk reports its socket errors


@dataclass
class Round:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: Counter[int]
    socket_errors: str
    upstream_calls: int
    cache: Counter[str]
    rss_kib: int


def cache_counts(service: Server) -> Counter[str]:
    """stock_api_cache_requests_total summed by result (hit, miss, stale)."""
    counts: Counter[str] = Counter()
    text = httpx.get(service.url + "/metrics").text
    for result, value in re.findall(
        r'^stock_api_cache_requests_total\{[^}]*result="(\w+)"[^}]*\} (\S+)$', text, re.MULTILINE
    ):
        counts[result] += int(float(value))
    return counts


def upstream_total(simulator: Server) -> int:
    total: int = httpx.get(simulator.url + "/_stats").json()["total"]
    return total


def run_round(service: Server, simulator: Server, quota: int, miss_offset: int) -> Round:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    httpx.post(service.url + "/circuit-breaker/reset", headers=admin).raise_for_status()
    calls_before, cache_before = upstream_total(simulator), cache_counts(service)
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}"]
    command += [f"-d{ROUND_CAP_SECONDS}s", "--latency", "-s", str(ROOT / "bench" / "soak.lua")]
    command += [service.url, "--", str(quota), ADMIN_TOKEN, str(miss_offset)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
        assert wrk.stdout is not None
        lines = []
        for line in wrk.stdout:
            lines.append(line)
            if line == "quota reached\n":
                wrk.send_signal(signal.SIGINT)  # wrk then stops and reports
        if wrk.wait() != 0:
            raise SystemExit(f"wrk failed:\n{''.join(lines)}")
    out = "".join(lines)
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE))
    if requests is None or rps is None or "99" not in percentiles:
        raise SystemExit(f"cannot read wrk's report:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    statuses: Counter[int] = Counter()
    for status, count in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE):
        statuses[int(status)] += int(count)
    return Round(
        requests=int(requests.group(1)),
        seconds=int(requests.group(1)) / float(rps.group(1)),
        p50_ms=to_ms(percentiles["50"]),
        p99_ms=to_ms(percentiles["99"]),
        statuses=statuses,
        socket_errors=", ".join(
            f"{kind} {n}" for kind, n in zip(ERROR_KINDS, errors.groups(), strict=True) if n != "0"
        )
        if errors
        else "",
        upstream_calls=upstream_total(simulator) - calls_before,
        cache=cache_counts(service) - cache_before,
        rss_kib=proc_status_kib(service.process.pid, "VmRSS"),
    )


def main() -> None:
    # `timeout` and CI runners send SIGTERM: unwind, so that every server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=1_000_000, help="requests in all")
    parser.add_argument("--round", type=int, default=100_000, help="requests per round")
    options = parser.parse_args()
    total, per_round = options.total, options.round
    rounds = -(-total // per_round)
    print(
        f"make soak: {total:,} requests in {rounds} rounds of {per_round:,}; expect about "
        f"{total / EXPECTED_RPS / 60:.0f} min at ~{EXPECTED_RPS:,} req/s",
        flush=True,
    )
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    uvicorn = ["-m", "uvicorn", "app.main:app", "--host", HOST, "--port", "{port}"]
    uvicorn += ["--no-access-log"]
    results: list[Round] = []
    with (
        serve_simulator(logs) as simulator,
        serve(uvicorn, service_env(simulator), logs / "service.log", "/healthz") as service,
    ):
        start_rss = proc_status_kib(service.process.pid, "VmRSS")
        done = 0
        for number in range(rounds):
            quota = min(per_round, total - done)
            result = run_round(service, simulator, quota, int(done * MISS_SHARE))
            results.append(result)
            done += result.requests
            remaining = (total - done) / max(result.requests / result.seconds, 1)
            print(
                f"round {number + 1}/{rounds}: {result.requests:,} requests, "
                f"{result.requests / result.seconds:,.0f} req/s, RSS "
                f"{result.rss_kib / 1024:.0f} MiB; about {remaining / 60:.1f} min to go",
                flush=True,
            )
        peak = proc_status_kib(service.process.pid, "VmHWM")
    print_table(results, start_rss, peak, logs)


def print_table(results: list[Round], start_rss: int, peak: int, logs: Path) -> None:
    print()
    print(
        f"wrk -t1 -c{CONNECTIONS} with bench/soak.lua on CPU {LOAD_CPU} (with the simulator), "
        f"service on CPU {SERVER_CPU} (an access-log line per request); logs in {logs}"
    )
    print(
        f"RSS after startup {start_rss / 1024:.0f} MiB; peak (VmHWM) {peak / 1024:.0f} MiB; "
        "statuses: 200 hits/misses/stale, 404 unknown, 422 invalid, 503 breaker open"
    )
    print()
    print(
        "| round | requests so far | RSS MiB | req/s | p50 ms | p99 ms | statuses "
        "| cache hit / miss / stale | upstream calls | wrk socket errors |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    so_far = 0
    for number, r in enumerate(results, 1):
        so_far += r.requests
        statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(r.statuses.items()))
        print(
            f"| {number} | {so_far:,} | {r.rss_kib / 1024:.0f} | {r.requests / r.seconds:,.0f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {statuses} "
            f"| {r.cache['hit']:,} / {r.cache['miss']:,} / {r.cache['stale']:,} "
            f"| {r.upstream_calls:,} | {r.socket_errors or 0} |"
        )
    print()
    print("Reproduce: make soak  (or .venv/bin/python bench/soak.py --total 1000000)")


if __name__ == "__main__":
    main()
