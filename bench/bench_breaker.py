"""Per-call overhead of circuit breakers relative to a bare `await fn()`.

Run with `make bench-breaker`. Each figure is the best of several rounds, in microseconds per
call; the ratio divides it by the matching bare baseline (a bare await for the success and
rejection paths, a bare await that raises and is caught for the failure path).

The failure-rate rows record every call in a window: the last N calls, or the last 60 seconds.
So that a run of failures cannot trip them, the threshold is 1.0 (a window that ever held a
success never reaches it) and minimum_calls is more calls than the whole run makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import metadata

import aiobreaker
import circuitbreaker
import purgatory
from purgatory.domain.model import OpenedState

from app.breaker import CircuitBreaker, CircuitOpenError, FailureRate, Listener
from app.metrics import Metrics

CALLS = 100_000
ROUNDS = 7
NEVER = 10**9  # a failure threshold no benchmark reaches
RUN_CALLS = 2 * ROUNDS * CALLS  # the calls one closed breaker sees: success, then failure path


class Boom(Exception):
    pass


async def succeed() -> int:
    return 1


async def fail() -> int:
    raise Boom


Step = Callable[..., Awaitable[object]]


async def per_call_seconds(
    step: Step, *args: object, expected: type[BaseException] | None = None
) -> float:
    """Best-of-ROUNDS seconds per `await step(*args)`, which must raise `expected` or nothing."""
    best = float("inf")
    for _ in range(ROUNDS):
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        if expected is None:
            for _ in range(CALLS):
                await step(*args)
        else:
            for _ in range(CALLS):
                try:  # noqa: SIM105 - contextlib.suppress would cost more than some breakers
                    await step(*args)
                except expected:
                    pass
        best = min(best, time.perf_counter() - started)
        gc.enable()
    return best / CALLS


Call = tuple[Step, tuple[object, ...]]
OPEN_FOR = 3600  # seconds: an opened peer must stay open for the whole run


class Paths:
    """One breaker's three paths: closed success, closed failure and open rejection."""

    def __init__(
        self, name: str, success: Call, failure: Call, rejection: Call, rejected: type[Exception]
    ) -> None:
        self.name, self.success, self.failure = name, success, failure
        self.rejection, self.rejected = rejection, rejected


def ours(
    label: str, listeners: list[Listener], failure_rate: FailureRate | None = None
) -> tuple[Paths, list[CircuitBreaker]]:
    closed = CircuitBreaker(
        "bench", failure_threshold=NEVER, listeners=listeners, failure_rate=failure_rate
    )
    opened = CircuitBreaker("bench-open", listeners=listeners, failure_rate=failure_rate)
    opened.force_open()
    paths = Paths(
        label,
        (closed.call, (succeed,)),
        (closed.call, (fail,)),
        (opened.call, (succeed,)),
        CircuitOpenError,
    )
    return paths, [closed, opened]


def aiobreaker_paths() -> Paths:
    closed = aiobreaker.CircuitBreaker(fail_max=NEVER)
    opened = aiobreaker.CircuitBreaker(timeout_duration=timedelta(seconds=OPEN_FOR))
    opened.open()
    return Paths(
        "aiobreaker " + metadata.version("aiobreaker"),
        (closed.call_async, (succeed,)),
        (closed.call_async, (fail,)),
        (opened.call_async, (succeed,)),
        aiobreaker.CircuitBreakerError,
    )


async def circuitbreaker_paths() -> Paths:
    closed = circuitbreaker.CircuitBreaker(failure_threshold=NEVER)
    opened = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=OPEN_FOR)
    opened_fail = opened.decorate(fail)
    with contextlib.suppress(Boom):
        await opened_fail()  # the one failure that opens it
    return Paths(
        "circuitbreaker " + metadata.version("circuitbreaker"),
        (closed.decorate(succeed), ()),
        (closed.decorate(fail), ()),
        (opened_fail, ()),
        circuitbreaker.CircuitBreakerError,
    )


async def purgatory_paths() -> Paths:
    closed = purgatory.AsyncCircuitBreakerFactory(default_threshold=NEVER)
    opened = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=OPEN_FOR)
    opened_fail = opened("bench-open")(fail)
    with contextlib.suppress(Boom):
        await opened_fail()  # the one failure that opens it
    return Paths(
        "purgatory " + metadata.version("purgatory"),
        (closed("bench")(succeed), ()),
        (closed("bench")(fail), ()),
        (opened_fail, ()),
        OpenedState,
    )


def with_prometheus(label: str) -> Paths:
    """The service's own listener, with its metrics registry, watching both breakers."""
    metrics = Metrics(functions=(), routes=())
    paths, breakers = ours(label, [metrics])
    for breaker in breakers:
        metrics.watch(breaker)
    return paths


def cell(seconds: float, baseline: float) -> str:
    return f"{seconds * 1e6:6.3f} us {seconds / baseline:5.1f}x"


async def main() -> None:
    logging.disable(logging.WARNING)  # the breakers announce their trips; keep the table clean
    bare = await per_call_seconds(succeed)
    bare_failure = await per_call_seconds(fail, expected=Boom)
    candidates = [
        ours("app.breaker", [])[0],
        with_prometheus("app.breaker + Prometheus listener"),
        ours(
            "app.breaker, failure rate, N calls",
            [],
            FailureRate(1.0, minimum_calls=RUN_CALLS + 1, window_calls=RUN_CALLS + 1),
        )[0],
        ours(
            "app.breaker, failure rate, 60 s",
            [],
            FailureRate(1.0, minimum_calls=NEVER, window_calls=None, window_seconds=60),
        )[0],
        aiobreaker_paths(),
        await purgatory_paths(),
        await circuitbreaker_paths(),
    ]

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs;")
    print(f"best of {ROUNDS} rounds of {CALLS} calls; reproduce with: make bench-breaker")
    print(f"bare await: {bare * 1e6:.3f} us; bare await that raises: {bare_failure * 1e6:.3f} us")
    print()
    columns = ("closed success", "closed failure", "open rejection")
    print(f"| {'breaker':<34} | " + " | ".join(f"{c:>17}" for c in columns) + " |")
    print("|" + "|".join("-" * width for width in (36, 19, 19, 19)) + "|")
    for paths in candidates:
        success = await per_call_seconds(paths.success[0], *paths.success[1])
        failure = await per_call_seconds(paths.failure[0], *paths.failure[1], expected=Boom)
        rejection = await per_call_seconds(
            paths.rejection[0], *paths.rejection[1], expected=paths.rejected
        )
        cells = (cell(success, bare), cell(failure, bare_failure), cell(rejection, bare))
        print(f"| {paths.name:<34} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
