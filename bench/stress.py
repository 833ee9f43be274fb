"""`make stress-test`: requests per second and latency of the service under wrk, on 127.0.0.1.

Starts real uvicorn processes (the Alpha Vantage simulator, the service with its default
settings, and two ceiling apps from bench/ceilings.py), drives each scenario with wrk for a
bounded time, prints one table, and stops every process it started. The ceilings and the
service's hits (through the route, the fast path, 304s) run in turn for a few rounds, each
one's best kept, so that they are compared under the same conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx

# `python bench/stress.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import SIMULATOR_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-admin"
PATH = "/stock/IBM?days=30"

# On 2 cores, wrk's threads and the server would preempt each other and turn scheduling
# into latency: the server under test gets CPU 0, wrk (one thread) and the simulator CPU 1.
SERVER_CPU, LOAD_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(
    args: Sequence[str], env: dict[str, str], log: Path, ready: str, cpu: str = SERVER_CPU
) -> Iterator[Server]:
    """Run `python ARGS` on a free port, pinned to `cpu`, until the block ends."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", cpu, sys.executable, *[arg.format(port=port) for arg in args]],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + ready, timeout=1).status_code < 500:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{args} did not start; see {log}")
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_simulator(logs: Path) -> contextlib.AbstractContextManager[Server]:
    """The Alpha Vantage simulator, on the load CPU (it is load, not the thing measured)."""
    args = ["-m", "app.simulator", "--host", HOST, "--port", "{port}"]
    return serve(args, {}, logs / "simulator.log", "/_faults", LOAD_CPU)


def service_env(simulator: Server, **extra: str) -> dict[str, str]:
    """The service's settings against `simulator`: defaults, admin endpoints on, and, as
    against the simulator of `make run`, pacing and the daily quota off."""
    return {
        "ALPHAVANTAGE_API_KEY": "bench-key",
        "ALPHAVANTAGE_BASE_URL": simulator.url + "/query",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        **SIMULATOR_DEFAULTS,
        **extra,
    }


@dataclass
class Result:
    name: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    note: str = ""


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    name: str,
    url: str,
    seconds: int,
    connections: int,
    script: Path | None = None,
    headers: Sequence[str] = (),
) -> Result:
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for header in headers:
        command += ["-H", header]
    command += ["--latency", url]
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE))
    if latency is None or "99" not in percentiles:
        raise SystemExit(f"cannot read wrk's report for {name}:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(
        name=name,
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=to_ms(percentiles["50"]),
        p99_ms=to_ms(percentiles["99"]),
        max_ms=to_ms(latency.group(3)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="of the ceilings against the hits (1a to 2c)"
    )
    options = parser.parse_args()
    seconds, connections, rounds = options.seconds, options.connections, options.rounds
    uvicorn = ["-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log"]
    logs = Path(tempfile.mkdtemp(prefix="stress-"))
    results: list[Result] = []

    with (
        serve_simulator(logs) as simulator,
        serve(
            [*uvicorn, "app.main:app"], service_env(simulator), logs / "service.log", "/healthz"
        ) as service,
    ):
        body = httpx.get(service.url + PATH).content
        (logs / "body.json").write_bytes(body)
        ceiling_env = {"STRESS_BODY_FILE": str(logs / "body.json"), "PYTHONPATH": str(ROOT)}
        with (
            serve(
                [*uvicorn, "--lifespan", "off", "bench.ceilings:raw"],
                ceiling_env,
                logs / "raw.log",
                PATH,
            ) as raw,
            serve([*uvicorn, "bench.ceilings:bare"], ceiling_env, logs / "bare.log", PATH) as bare,
        ):
            httpx.get(service.url + PATH).raise_for_status()  # a hit: the fast path has it now
            etag = httpx.get(service.url + PATH).headers["etag"]
            route_hits = ROOT / "bench" / "route_hits.lua"
            head_to_head: list[tuple[str, str, Path | None, list[str]]] = [
                ("1a raw ASGI, same bytes", raw.url + PATH, None, []),
                ("1b bare FastAPI + response model", bare.url + PATH, None, []),
                ("2a /stock/{symbol} from cache, through the route", service.url, route_hits, []),
                ("2b /stock/{symbol} from cache, fast path", service.url + PATH, None, []),
                (
                    "2c /stock/{symbol} If-None-Match (304), fast path",
                    service.url + PATH,
                    None,
                    [f"If-None-Match: {etag}"],
                ),
            ]
            # In turn, round after round, each scenario's best round kept: on a shared machine
            # a neighbour's burst then costs one round of one scenario, not the comparison.
            best: dict[str, Result] = {}
            for _ in range(rounds):
                for name, url, script, headers in head_to_head:
                    result = wrk(name, url, seconds, connections, script, headers)
                    if name not in best or result.rps > best[name].rps:
                        best[name] = result
            for result in best.values():
                result.note = f"best of {rounds} rounds" if rounds > 1 else ""
                results.append(result)

        # A scrape renders every series (about 2 ms): 8 scrapers at once is already a crowd.
        results.append(wrk("5 /metrics, 8 connections", service.url + "/metrics", seconds, 8))

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        httpx.post(service.url + "/circuit-breaker/open", headers=admin).raise_for_status()
        results.append(
            wrk(
                "3 /stock/{symbol} breaker open (503)",
                service.url + "/stock/MSFT?days=30",
                seconds,
                connections,
            )
        )
        httpx.post(service.url + "/circuit-breaker/reset", headers=admin).raise_for_status()

        cpu_before = service.cpu_seconds()
        miss = wrk(
            "4 /stock/{symbol} cache miss",
            service.url,
            seconds,
            connections,
            ROOT / "bench" / "misses.lua",
        )
        cpu = service.cpu_seconds() - cpu_before
        miss.note = f"service CPU {cpu / max(miss.requests, 1) * 1e3:.2f} ms/miss"
        results.append(miss)

    bare_rps = next(r.rps for r in results if r.name.startswith("1b"))
    print(
        f"make stress-test: wrk -t1 -c{connections} -d{seconds}s per scenario on CPU {LOAD_CPU}, "
        f"servers on CPU {SERVER_CPU}, 127.0.0.1"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, fastapi "
        f"{metadata.version('fastapi')}, uvicorn {metadata.version('uvicorn')}, "
        f"pydantic {metadata.version('pydantic')}; logs in {logs}"
    )
    print()
    print(
        "| scenario | req/s | vs 1b | p50 ms | p99 ms | max ms | non-2xx | socket errors | note |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(
            f"| {r.name} | {r.rps:,.0f} | {r.rps / bare_rps:.0%} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.max_ms:.1f} | {r.non_2xx} | {r.socket_errors} | {r.note} |"
        )


if __name__ == "__main__":
    main()
