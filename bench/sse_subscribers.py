"""`make bench-sse`: what the breaker event stream costs and how fast it delivers.

Starts the simulator, a real redis-server, and two service processes (uvicorn) sharing one
store, SQLite then Redis. On the first, 1,000 idle subscribers of GET /circuit-breaker/events
(each reading its state event, then its heartbeats and summaries): the service's RSS and CPU
before and with them. Then ROUNDS force-opens and resets on the first replica, each
transition timed from its `at` (the store's clock, this host's) to its arrival at one more
subscriber of each replica. Prints two tables; stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.concurrency import proc_status_kib, raise_nofile_limit
from bench.store_overhead import redis_server
from bench.stress import ADMIN_TOKEN, HOST, Server, serve, serve_simulator, service_env

SUBSCRIBERS = 1000
CONNECT_CONCURRENCY = 200  # connects in flight at once: below the listen backlog
ROUNDS = 20  # force-opens and resets, each a transition to time
IDLE_SECONDS = 10.0  # CPU measured over this long, with and without the subscribers
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


TRANSITION = re.compile(rb"event: transition\nid: \d+\ndata: (\{[^\n]*\})\n\n")


@dataclass
class Subscriber:
    """One stream over a bare socket (an HTTP client's own cost would swamp the figures), read
    by a task of its own; a watcher's transitions are handed to `arrivals`."""

    reader: asyncio.Task[None]
    arrivals: asyncio.Queue[tuple[dict[str, object], float]]


async def subscribe(server: Server, watch: bool = False) -> Subscriber:
    """A subscriber of `server` that has received its state event."""
    arrivals: asyncio.Queue[tuple[dict[str, object], float]] = asyncio.Queue()
    stream, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"GET /circuit-breaker/events HTTP/1.1\r\nHost: bench\r\n\r\n")
    received = b""
    while b"event: state" not in received:
        chunk = await stream.read(65536)
        if not chunk:
            raise RuntimeError(f"the stream ended before its state: {received[:200]!r}")
        received += chunk

    async def read() -> None:
        pending = b""
        try:
            while chunk := await stream.read(65536):
                if watch:  # each event is written whole, in one chunk of the answer
                    pending += chunk
                    arrived = time.time()
                    for match in TRANSITION.finditer(pending):
                        arrivals.put_nowait((json.loads(match.group(1)), arrived))
                    pending = pending[pending.rfind(b"\n\n") + 2 :]
        finally:
            writer.close()

    return Subscriber(asyncio.create_task(read()), arrivals)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def cpu_share(pid: int) -> float:
    """The share of one core `pid` takes over IDLE_SECONDS."""
    before = cpu_seconds(pid)
    await asyncio.sleep(IDLE_SECONDS)
    return (cpu_seconds(pid) - before) / IDLE_SECONDS


@dataclass
class Cost:
    rss_before_kib: int
    rss_with_kib: int
    cpu_none: float  # no subscriber
    cpu_one: float  # one: the poll and the refresh run
    cpu_with: float


async def idle_cost(service: Server) -> tuple[Cost, list[Subscriber]]:
    pid = service.process.pid
    cpu_none = await cpu_share(pid)
    warm = await subscribe(service)  # imports and first allocations
    await asyncio.sleep(1.0)
    rss_before, cpu_one = proc_status_kib(pid, "VmRSS"), await cpu_share(pid)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Subscriber:
        async with gate:
            return await subscribe(service)

    subscribers = await asyncio.gather(*(one() for _ in range(SUBSCRIBERS)))
    await asyncio.sleep(2.0)
    rss_with = proc_status_kib(pid, "VmRSS")
    cost = Cost(rss_before, rss_with, cpu_none, cpu_one, await cpu_share(pid))
    return cost, [warm, *subscribers]


async def latencies(client: httpx.AsyncClient, first: Server, second: Server) -> list[list[float]]:
    """Milliseconds from each transition's `at` to its arrival on each replica."""
    watchers = [await subscribe(first, watch=True), await subscribe(second, watch=True)]
    delays: list[list[float]] = [[], []]
    for round_number in range(ROUNDS * 2):
        action = "open" if round_number % 2 == 0 else "reset"
        response = await client.post(f"{first.url}/circuit-breaker/{action}", headers=ADMIN)
        response.raise_for_status()
        for watcher, found in zip(watchers, delays, strict=True):
            async with asyncio.timeout(5):
                transition, arrived = await watcher.arrivals.get()
            at = datetime.fromisoformat(str(transition["at"])).timestamp()
            found.append((arrived - at) * 1000)
        await asyncio.sleep(random.uniform(0.2, 0.6))  # each round meets the poll at any phase
    for watcher in watchers:
        watcher.reader.cancel()
    return delays


@contextlib.contextmanager
def replicas(state_url: str, logs: Path) -> Iterator[tuple[Server, Server]]:
    uvicorn = ["-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log"]
    with contextlib.ExitStack() as stack:
        simulator = stack.enter_context(serve_simulator(logs))
        env = service_env(simulator, STATE_URL=state_url, LOG_LEVEL="WARNING")
        first, second = (
            stack.enter_context(serve([*uvicorn, "app.main:app"], env, logs / f"s{n}.log", "/"))
            for n in range(2)
        )
        yield first, second


@contextlib.asynccontextmanager
async def bench_client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        yield client


async def run(name: str, state_url: str, logs: Path) -> tuple[Cost, list[list[float]]]:
    with replicas(state_url, logs) as (first, second):
        async with bench_client() as client:
            cost, subscribers = await idle_cost(first)
            delays = await latencies(client, first, second)
            for subscriber in subscribers:
                subscriber.reader.cancel()
            await asyncio.gather(*(s.reader for s in subscribers), return_exceptions=True)
    print(f"  {name}: done", file=sys.stderr)
    return cost, delays


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} | {p95:.0f} | {ordered[-1]:.0f}"


async def main() -> None:
    raise_nofile_limit()
    logs = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    results = {}
    with redis_server(logs) as redis_url:
        for name, url in (("SQLite", f"sqlite:///{logs}/state.db"), ("Redis", redis_url)):
            run_logs = logs / name.lower()
            run_logs.mkdir()
            results[name] = await run(name, url, run_logs)

    print(f"make bench-sse: {SUBSCRIBERS:,} idle subscribers of one service (logs in {logs})")
    print()
    print(
        f"| store | RSS, 1 subscriber | RSS, {SUBSCRIBERS + 1:,} | per subscriber "
        f"| CPU, none | CPU, 1 | CPU, {SUBSCRIBERS + 1:,} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (cost, _) in results.items():
        per = (cost.rss_with_kib - cost.rss_before_kib) / SUBSCRIBERS
        print(
            f"| {name} | {cost.rss_before_kib / 1024:.1f} MiB | {cost.rss_with_kib / 1024:.1f} MiB "
            f"| {per:.1f} KiB | {cost.cpu_none:.1%} | {cost.cpu_one:.1%} | {cost.cpu_with:.1%} |"
        )
    print()
    print("CPU: share of one core over 10 s, idle but for the stream (the poll, the refresh,")
    print("summaries every 5 s, heartbeats every 15 s).")
    print()
    print(
        f"Delivery: {ROUNDS * 2} transitions made on replica 1, ms from `at` to arrival "
        f"(with the {SUBSCRIBERS:,} subscribers on replica 1)"
    )
    print()
    print("| store | subscriber on | median | p95 | max |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (_, delays) in results.items():
        for where, found in zip(("replica 1", "replica 2"), delays, strict=True):
            print(f"| {name} | {where} | {quantiles(found)} |")


if __name__ == "__main__":
    asyncio.run(main())
