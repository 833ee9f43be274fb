"""`make bench-outage`: upstream calls an outage costs before every replica's breaker is open.

Starts the simulator, broken (`down`), and 1, then 3, service processes sharing one SQLite
state store on 127.0.0.1 (and, for comparison, 3 with a store each, as before the store);
sends cache misses round-robin until every replica's /circuit-breaker says open, and counts
the calls that reached the simulator. Each failed call is a unit of a free key's 25 a day.
Prints one table; stops what it started.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stress import HOST, serve, serve_simulator, service_env

MAX_REQUESTS = 100  # a bound, should the breakers never open


def outage_cost(replicas: int, shared: bool, logs: Path) -> tuple[int, int]:
    """(upstream calls, requests sent) until every replica's breaker is open."""
    run = logs / f"replicas-{replicas}-{'shared' if shared else 'apart'}"
    run.mkdir()
    uvicorn = ["-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log"]
    with contextlib.ExitStack() as stack:
        simulator = stack.enter_context(serve_simulator(run))
        httpx.post(simulator.url + "/_faults", json={"mode": "down"}).raise_for_status()
        state_url = f"sqlite:///{run}/state.db" if shared else "memory://"
        env = service_env(simulator, STATE_URL=state_url)
        services = [
            stack.enter_context(
                serve([*uvicorn, "app.main:app"], env, run / f"s{n}.log", "/healthz")
            )
            for n in range(replicas)
        ]
        sent = 0
        while sent < MAX_REQUESTS:
            states = {httpx.get(s.url + "/circuit-breaker").json()["state"] for s in services}
            if states == {"open"}:
                break
            httpx.get(f"{services[sent % replicas].url}/stock/OUTAGE{sent}")
            sent += 1
        calls = sum(httpx.get(simulator.url + "/_stats").json()["calls"].values())
    return calls, sent


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    print("make bench-outage: simulator down, misses round-robin until every breaker is open")
    print(f"(BREAKER_FAILURE_THRESHOLD 5, one SQLite store shared; logs in {logs})")
    print()
    print("| replicas | state store | upstream calls until all open | requests sent |")
    print("| ---: | --- | ---: | ---: |")
    for replicas, shared in ((1, True), (3, True), (3, False)):
        calls, sent = outage_cost(replicas, shared, logs)
        store = "one SQLite file" if shared else "memory://, one each"
        print(f"| {replicas} | {store} | {calls} | {sent} |")


if __name__ == "__main__":
    main()
