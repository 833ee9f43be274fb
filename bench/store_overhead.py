"""`make bench-store`: what each state store (STATE_URL) costs a cache hit and a miss.

For memory://, the default SQLite file and a real redis-server, one after the other on
127.0.0.1: a service process against the simulator, wrk on a cached symbol (hits never touch
the store), then distinct symbols one at a time (misses: the quota ledger, the pause, the
shared cache tier and its lease, on the store). Prints one table; stops what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stress import (
    HOST,
    LOAD_CPU,
    PATH,
    Result,
    free_port,
    serve,
    serve_simulator,
    service_env,
    wrk,
)


@contextlib.contextmanager
def redis_server(logs: Path) -> Iterator[str]:
    port = free_port()
    command = ["taskset", "-c", LOAD_CPU, "redis-server", "--port", str(port), "--bind", HOST]
    command += ["--save", "", "--appendonly", "no", "--dir", str(logs)]
    with (logs / "redis.log").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def miss_latencies(url: str, count: int) -> list[float]:
    """Milliseconds of `count` misses, one at a time (each a new symbol)."""
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(count):
            started = time.perf_counter()
            client.get(f"/stock/MISS{n}?days=1").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="of wrk per store and round")
    parser.add_argument("--rounds", type=int, default=3, help="of hits, the stores in turn")
    parser.add_argument("--misses", type=int, default=200, help="per store")
    options = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-store-"))
    uvicorn = ["-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log"]
    with (
        serve_simulator(logs) as simulator,
        redis_server(logs) as redis_url,
        contextlib.ExitStack() as stack,
    ):
        stores = {
            "memory://": "memory://",
            "sqlite (default)": f"sqlite:///{logs}/state.db",
            "redis": redis_url,
        }
        services = {}
        for name, state_url in stores.items():
            # The ledger on (a quota no run reaches), pacing off: a miss does all its store
            # operations and never waits for a paced turn.
            env = service_env(simulator, STATE_URL=state_url, UPSTREAM_DAILY_QUOTA="1000000")
            log = logs / f"service-{name.split()[0].strip(':/')}.log"
            services[name] = stack.enter_context(
                serve([*uvicorn, "app.main:app"], env, log, "/healthz")
            )
            httpx.get(services[name].url + PATH).raise_for_status()
        # Rounds with the stores in turn, the best of each: the machine's moods hit them all.
        hits: dict[str, list[Result]] = {name: [] for name in stores}
        for _ in range(options.rounds):
            for name, service in services.items():
                hits[name].append(wrk(f"hits {name}", service.url + PATH, options.seconds, 64))
        misses = {name: miss_latencies(s.url, options.misses) for name, s in services.items()}

    best = {name: max(results, key=lambda r: r.rps) for name, results in hits.items()}
    memory_rps = best["memory://"].rps
    memory_miss = statistics.median(misses["memory://"])
    print(f"make bench-store: wrk -t1 -c64 -d{options.seconds}s on hits, best of")
    print(f"{options.rounds} rounds, then {options.misses} misses one at a time; logs in {logs}")
    print()
    print(
        "| store | hits req/s | vs memory | hit p99 ms | miss p50 ms | miss p90 ms | store adds |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in stores:
        median = statistics.median(misses[name])
        p90 = statistics.quantiles(misses[name], n=10)[-1]
        print(
            f"| {name} | {best[name].rps:,.0f} | {best[name].rps / memory_rps:.0%} | "
            f"{best[name].p99_ms:.2f} | {median:.2f} | {p90:.2f} | "
            f"{median - memory_miss:+.2f} ms |"
        )


if __name__ == "__main__":
    main()
