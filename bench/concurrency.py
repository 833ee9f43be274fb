"""`make bench-concurrency`: 10,000 requests in flight at once against ONE service process.

Starts the Alpha Vantage simulator and the service (real uvicorn subprocesses on 127.0.0.1),
opens one connection per request from an asyncio client, and only once every connection is up
writes all the requests in one go. The client speaks raw HTTP/1.1 over uvloop streams: about
0.2 ms of CPU per request, where httpx.AsyncClient with 10,000 requests queued in its pool
spent 137 s of CPU (httpcore's pool bookkeeping grows with the queue). Phases:

  A1 simulator slow (2 s): 10,000 GETs over 100 symbols, 100 requests per symbol
  A2 the same over 1,000 symbols: 10 requests per symbol
  (the bulkhead, UPSTREAM_MAX_CONCURRENCY=4, lets 4 calls at a time reach the slow upstream;
  the rest wait UPSTREAM_MAX_WAIT_SECONDS at most, then get a 503)
  B  a fresh service, simulator down, breaker tripped by 5 real failures: 10,000 uncached
     symbols, which must all get 503 with no upstream call
  C  a fresh service with BREAKER_TIMEOUT_SECONDS=3, tripped, then past its open timeout
     (half-open) with the simulator slow: 10,000 uncached symbols; at most 1 upstream call

For each phase: status counts, client errors (connect, timeout, reset, malformed), wall time,
latency percentiles, upstream calls (the simulator's /_stats), CPU time of the service and of
the client, the service's peak RSS (VmHWM, reset before each phase through /proc/PID/
clear_refs), and /healthz latency sampled every 100 ms over a keep-alive connection by a
process of its own. After A1 and A2 one fresh miss (simulator healthy, breaker reset) shows
whether the service recovered. About a minute and a half; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

# `python bench/concurrency.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
)

DAYS = 5
DAILY_FIELDS = frozenset({"symbol", "last_refreshed", "time_zone", "source", "prices"})
PRICE_FIELDS = frozenset({"date", "open", "high", "low", "close", "volume"})
SOURCES = frozenset({"upstream", "cache", "stale"})
HEALTHZ_INTERVAL = 0.1
# Connections being set up at once. The service's listen backlog is min(--backlog,
# net.core.somaxconn): a connect beyond it has its SYN dropped and retried a second later.
CONNECT_CONCURRENCY = 512
A1_SYMBOLS = 100


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_status_kib(pid: int, name: str) -> int:
    """A `kB` field of /proc/PID/status, such as VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- the client -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 0  # 0: no HTTP answer
    error: str = ""  # "", connect, timeout, reset, malformed, unexpected-status
    seconds: float = 0.0
    source: str = ""  # for a 200


def check_body(status: int, headers: dict[str, str], body: bytes) -> str:
    """'' when the answer is what the service documents for `status`, else what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "malformed"
    if not isinstance(payload, dict):
        return "malformed"
    if status == 200:
        if set(payload) != DAILY_FIELDS or payload["source"] not in SOURCES:
            return "malformed"
        prices = payload["prices"]
        if not isinstance(prices, list) or len(prices) != DAYS:
            return "malformed"
        if not all(isinstance(bar, dict) and set(bar) == PRICE_FIELDS for bar in prices):
            return "malformed"
        return ""
    if status == 503 and "retry-after" not in headers:
        return "malformed"
    if status in (502, 503, 504):
        return "" if isinstance(payload.get("detail"), str) else "malformed"
    return "unexpected-status"


class Storm:
    """One connection per request; every request is written once all connections are up."""

    def __init__(self, port: int, paths: list[str], timeout: float) -> None:
        self.port = port
        self.paths = paths
        self.timeout = timeout
        self.attempted = 0
        self.all_attempted = asyncio.Event()
        self.go = asyncio.Event()
        self.connect_slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def run(self) -> tuple[list[Reply], float, float]:
        """The replies, the seconds to connect everything, the seconds from go to last reply."""
        started = time.perf_counter()
        tasks = [asyncio.create_task(self.exchange(path)) for path in self.paths]
        await self.all_attempted.wait()
        connected = time.perf_counter()
        self.go.set()
        replies = await asyncio.gather(*tasks)
        return replies, connected - started, time.perf_counter() - connected

    def _attempted(self) -> None:
        self.attempted += 1
        if self.attempted == len(self.paths):
            self.all_attempted.set()

    async def exchange(self, path: str) -> Reply:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        try:
            async with self.connect_slots, asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(HOST, self.port)
        except (OSError, TimeoutError):
            self._attempted()
            return Reply(error="connect")
        self._attempted()
        await self.go.wait()
        started = time.perf_counter()
        reply = Reply()
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                reply.status = int(status_line.split()[1])
                pairs = (line.split(":", 1) for line in header_lines if ":" in line)
                headers = {name.strip().lower(): value.strip() for name, value in pairs}
                body = await reader.readexactly(int(headers["content-length"]))
            reply.error = check_body(reply.status, headers, body)
            if reply.status == 200 and not reply.error:
                reply.source = json.loads(body)["source"]
        except TimeoutError:
            reply.error = "timeout"
        except (ConnectionError, asyncio.IncompleteReadError):
            reply.error = "reset"
        except (KeyError, ValueError, IndexError, asyncio.LimitOverrunError):
            reply.error = "malformed"
        finally:
            reply.seconds = time.perf_counter() - started
            writer.close()
        return reply


# -- the /healthz sampler, a process of its own so the storm's client does not delay it --------


def sample_healthz(port: int) -> None:
    """Every 100 ms, GET /healthz over one keep-alive connection; on SIGTERM, print the
    latencies in ms (a failed sample counts as -1) as JSON and stop."""
    import http.client

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    latencies: list[float] = []
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    print("ready", flush=True)
    while not stopping:
        started = time.perf_counter()
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            latencies.append((time.perf_counter() - started) * 1e3)
        except (OSError, http.client.HTTPException):
            latencies.append(-1.0)
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=30)
        time.sleep(max(0.0, HEALTHZ_INTERVAL - (time.perf_counter() - started)))
    print(json.dumps(latencies))


@contextlib.contextmanager
def healthz_sampler(port: int, out: list[float]) -> Iterator[None]:
    process = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, sys.executable, __file__, "--healthz-sampler", str(port)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline() != b"ready\n":
            raise SystemExit("the /healthz sampler did not start")
        time.sleep(0.3)  # a few samples before the storm
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, _ = process.communicate(timeout=35)
            out.extend(json.loads(stdout or b"[]"))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- phases -----------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    replies: list[Reply]
    connect_seconds: float
    wall_seconds: float
    upstream_calls: int
    peak_rss_kib: int
    service_cpu_seconds: float
    client_cpu_seconds: float
    healthz_ms: list[float] = field(default_factory=list)
    note: str = ""


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def paths_for(prefix: str, requests: int, symbols: int) -> list[str]:
    # Request i asks for symbol i % symbols: the requests for a symbol are spread over the
    # storm rather than side by side.
    return [f"/stock/{prefix}{i % symbols}?days={DAYS}" for i in range(requests)]


def run_phase(
    name: str,
    service: Server,
    simulator: Server,
    paths: list[str],
    timeout: float,
) -> PhaseResult:
    httpx.post(simulator.url + "/_stats/reset").raise_for_status()
    if not reset_peak_rss(service.process.pid):
        print("warning: cannot reset VmHWM; peak RSS is since the service started")
    healthz: list[float] = []
    cpu_before, client_before = service.cpu_seconds(), own_cpu_seconds()
    with healthz_sampler(service.port, healthz):
        replies, connect_seconds, wall = uvloop.run(Storm(service.port, paths, timeout).run())
        time.sleep(0.2)  # one more sample after the storm
    calls = httpx.get(simulator.url + "/_stats").json()["total"]
    peak = proc_status_kib(service.process.pid, "VmHWM")
    cpu, client = service.cpu_seconds() - cpu_before, own_cpu_seconds() - client_before
    return PhaseResult(name, replies, connect_seconds, wall, calls, peak, cpu, client, healthz)


def set_faults(simulator: Server, mode: str, delay: float = 0.0) -> None:
    payload = {"mode": mode, "delay_seconds": delay}
    httpx.post(simulator.url + "/_faults", json=payload).raise_for_status()


def breaker_state(service: Server) -> str:
    state: str = httpx.get(service.url + "/circuit-breaker").json()["state"]
    return state


def trip(service: Server, simulator: Server, prefix: str) -> float:
    """Open the breaker with real failures (simulator down); returns when it opened."""
    set_faults(simulator, "down")
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for i in range(5):
            client.get(f"/stock/{prefix}{i}?days={DAYS}")
    opened = time.monotonic()
    if breaker_state(service) != "open":
        raise SystemExit("5 failures did not open the breaker")
    return opened


def fresh_miss(service: Server, simulator: Server) -> str:
    """After a storm: simulator healthy, breaker reset, one miss. Is the service still well?"""
    set_faults(simulator, "healthy")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    httpx.post(service.url + "/circuit-breaker/reset", headers=admin).raise_for_status()
    started = time.perf_counter()
    status = httpx.get(f"{service.url}/stock/FRESH{started:.0f}?days={DAYS}", timeout=30)
    return f"then a fresh miss: {status.status_code} in {time.perf_counter() - started:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000, help="in flight at once")
    parser.add_argument("--symbols", type=int, default=1_000, help="distinct, in phase A")
    parser.add_argument("--delay", type=float, default=2.0, help="simulator's slow delay, s")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout, s")
    parser.add_argument("--healthz-sampler", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.healthz_sampler is not None:
        sample_healthz(options.healthz_sampler)
        return

    # `timeout` and CI runners send SIGTERM: unwind, so that every server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    hard = raise_nofile_limit()
    requests: int = options.requests
    # Each side holds a descriptor per connection, plus its own files and upstream pool.
    if hard < requests + 512:
        requests = hard - 512
        print(
            f"RLIMIT_NOFILE hard limit is {hard}: {options.requests} sockets cannot fit; "
            f"running {requests} instead"
        )
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    logs = Path(tempfile.mkdtemp(prefix="concurrency-"))
    uvicorn = ["-m", "uvicorn", "app.main:app", "--host", HOST, "--port", "{port}"]
    uvicorn += ["--no-access-log", "--backlog", "4096"]
    results: list[PhaseResult] = []
    started = time.monotonic()

    with serve_simulator(logs) as simulator:
        with serve(uvicorn, service_env(simulator), logs / "service-a.log", "/healthz") as svc:
            for phase, symbols in (("A1", A1_SYMBOLS), ("A2", options.symbols)):
                set_faults(simulator, "slow", options.delay)
                result = run_phase(
                    f"{phase} slow {options.delay:g} s, {symbols:,} symbols",
                    svc,
                    simulator,
                    paths_for(phase, requests, symbols),
                    options.timeout,
                )
                result.note = f"breaker after: {breaker_state(svc)}; {fresh_miss(svc, simulator)}"
                results.append(result)

        with serve(uvicorn, service_env(simulator), logs / "service-b.log", "/healthz") as svc:
            trip(svc, simulator, "TRIPB")
            result = run_phase(
                "B down, breaker open",
                svc,
                simulator,
                paths_for("B", requests, requests),
                options.timeout,
            )
            result.note = f"breaker after: {breaker_state(svc)}"
            results.append(result)

        env = service_env(simulator, BREAKER_TIMEOUT_SECONDS="3")
        with serve(uvicorn, env, logs / "service-c.log", "/healthz") as svc:
            opened = trip(svc, simulator, "TRIPC")
            set_faults(simulator, "slow", options.delay)
            time.sleep(max(0.0, opened + 3.2 - time.monotonic()))
            state = breaker_state(svc)  # reading the state commits OPEN -> HALF_OPEN
            result = run_phase(
                "C half-open, slow",
                svc,
                simulator,
                paths_for("C", requests, requests),
                options.timeout,
            )
            result.note = f"breaker before: {state}, after: {breaker_state(svc)}"
            results.append(result)

    print_table(results, requests, logs, time.monotonic() - started)


def print_table(results: list[PhaseResult], requests: int, logs: Path, total: float) -> None:
    print(
        f"make bench-concurrency: {requests:,} connections, each with one request, all "
        f"written at once; service on CPU {SERVER_CPU}, client, simulator and /healthz "
        f"sampler on CPU {LOAD_CPU}; 127.0.0.1; {total:.0f} s in all; logs in {logs}"
    )
    print(
        f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)}, "
        f"somaxconn {Path('/proc/sys/net/core/somaxconn').read_text().strip()}"
    )
    print()
    print(
        "| phase | requests | statuses | 200 by source | errors | connect s | wall s "
        "| p50 ms | p99 ms | max ms | upstream calls | service / client CPU s | peak RSS MiB "
        "| /healthz p50 / max ms (samples, failed) | note |"
    )
    print("| --- |" + " ---: |" * 13 + " --- |")
    for r in results:
        answered = [x.seconds * 1e3 for x in r.replies if x.status]
        statuses = Counter(x.status for x in r.replies if x.status)
        sources = Counter(x.source for x in r.replies if x.source)
        errors = Counter(x.error for x in r.replies if x.error)
        health = [ms for ms in r.healthz_ms if ms >= 0]
        print(
            f"| {r.name} | {len(r.replies):,} "
            f"| {', '.join(f'{s}: {n:,}' for s, n in sorted(statuses.items())) or '-'} "
            f"| {', '.join(f'{s}: {n:,}' for s, n in sorted(sources.items())) or '-'} "
            f"| {', '.join(f'{e}: {n:,}' for e, n in sorted(errors.items())) or 'none'} "
            f"| {r.connect_seconds:.2f} | {r.wall_seconds:.2f} "
            f"| {percentile(answered, 0.5):.0f} | {percentile(answered, 0.99):.0f} "
            f"| {max(answered, default=float('nan')):.0f} | {r.upstream_calls:,} "
            f"| {r.service_cpu_seconds:.1f} / {r.client_cpu_seconds:.1f} "
            f"| {r.peak_rss_kib / 1024:.0f} "
            f"| {percentile(health, 0.5):.1f} / {max(health, default=float('nan')):.1f} "
            f"({len(r.healthz_ms)}, {len(r.healthz_ms) - len(health)}) | {r.note} |"
        )
    print()
    print("Reproduce: make bench-concurrency  (or .venv/bin/python bench/concurrency.py)")


if __name__ == "__main__":
    main()
