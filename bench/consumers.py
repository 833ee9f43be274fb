"""`make bench-consumers`: one key shared by consumers, measured on 127.0.0.1.

1. The issue's scenario: a quota of 25 a day and two consumers of 12 each. The noisy one
   asks for 40 new symbols, then the other for 13: what each got.
2. What the token check costs a cache hit: wrk on a cached symbol with no consumer (open),
   then with a consumer's bearer token (best of rounds, in turn).
Prints two tables; stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stress import (
    HOST,
    LOAD_CPU,
    PATH,
    Result,
    serve,
    serve_simulator,
    service_env,
    wrk,
)

ROUNDS, SECONDS = 3, 5


def add_consumer(state_url: str, name: str, *limits: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app", "consumers", "add", name, *limits],
        env={**os.environ, "STATE_URL": state_url},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def wrk_with_token(name: str, url: str, token: str | None) -> Result:
    if token is None:
        return wrk(name, url, SECONDS, 64)
    script = Path(tempfile.mkdtemp()) / "auth.lua"
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return wrk(name, url, SECONDS, 64, script)


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-consumers-"))
    uvicorn = ["-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log"]
    with contextlib.ExitStack() as stack:
        simulator = stack.enter_context(serve_simulator(logs))
        # 1. The scenario, on a store of its own.
        state = f"sqlite:///{logs}/scenario.db"
        noisy = add_consumer(state, "noisy", "--calls-per-day", "12")
        quiet = add_consumer(state, "quiet", "--calls-per-day", "12")
        env = service_env(simulator, STATE_URL=state, UPSTREAM_DAILY_QUOTA="25")
        service = stack.enter_context(
            serve([*uvicorn, "app.main:app"], env, logs / "scenario.log", "/healthz")
        )
        got: dict[str, Counter[int]] = {}
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for name, token, count in (("noisy", noisy, 40), ("quiet", quiet, 13)):
                headers = {"Authorization": f"Bearer {token}"}
                got[name] = Counter(
                    client.get(f"/stock/{name.upper()}{n}", headers=headers).status_code
                    for n in range(count)
                )
            upstream = sum(httpx.get(simulator.url + "/_stats").json()["calls"].values())

        # 2. Hits, open against with a token.
        open_env = service_env(simulator, STATE_URL=f"sqlite:///{logs}/open.db")
        closed_state = f"sqlite:///{logs}/closed.db"
        token = add_consumer(closed_state, "reader")
        closed_env = service_env(simulator, STATE_URL=closed_state)
        services = {
            "open (no consumers)": (open_env, None),
            "a consumer's bearer token": (closed_env, token),
        }
        urls: dict[str, tuple[str, str | None]] = {}
        for name, (service_env_, bearer) in services.items():
            log = logs / f"hits-{len(urls)}.log"
            served = stack.enter_context(
                serve([*uvicorn, "app.main:app"], service_env_, log, "/healthz")
            )
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            httpx.get(served.url + PATH, headers=headers).raise_for_status()
            urls[name] = (served.url + PATH, bearer)
        best: dict[str, Result] = {}
        for _ in range(ROUNDS):
            for name, (url, bearer) in urls.items():
                result = wrk_with_token(name, url, bearer)
                if name not in best or result.rps > best[name].rps:
                    best[name] = result

    print(f"make bench-consumers: on 127.0.0.1, wrk pinned to CPU {LOAD_CPU}; logs in {logs}")
    print()
    print("| consumer (12 calls a day; the key: 25) | asked | 200 | 429 | other |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, counts in got.items():
        other = sum(n for status, n in counts.items() if status not in (200, 429))
        total = sum(counts.values())
        print(f"| {name} | {total} | {counts[200]} | {counts[429]} | {other} |")
    print(f"\nupstream calls: {upstream}\n")
    print(f"| cache hits | req/s (best of {ROUNDS} x {SECONDS} s) | vs open | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    open_rps = best["open (no consumers)"].rps
    for name, result in best.items():
        print(f"| {name} | {result.rps:,.0f} | {result.rps / open_rps:.0%} | {result.p99_ms:.2f} |")


if __name__ == "__main__":
    main()
