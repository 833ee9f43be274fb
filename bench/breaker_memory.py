"""`make bench-breaker-memory`: how many bytes one app.breaker.CircuitBreaker costs.

The headline figure is tracemalloc's: the memory allocated while creating 10,000 breakers,
minus the list that holds them, divided by 10,000. It counts every allocation the breaker
owns (the instance, its attribute values, its asyncio.Lock) and nothing it shares (the clock
function, enum members, module objects, cached small ints). Measured fresh, with a name and a
listener of its own, and after a whole cycle (tripped, probed, closed again; the lock used
once). A second, per-object view sums sys.getsizeof over the objects one breaker owns: an
attribute counts when two independently built breakers do not share it. Runs in about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

# `python bench/breaker_memory.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.breaker import CircuitBreaker, Listener, State

COUNT = 10_000
CLAIM_BYTES = 200  # the design's claim: "about 200 bytes" per breaker


class Quiet(Listener):
    """A listener that does nothing, to measure what holding one costs."""


class Boom(Exception):
    pass


async def succeed() -> int:
    return 1


async def fail() -> int:
    raise Boom


def bytes_each(build: Callable[[], list[object]]) -> float:
    """tracemalloc's growth while `build` runs, minus the list it returns, per element."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    objects = build()
    grown = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(objects)
    tracemalloc.stop()
    return grown / len(objects)


def fresh() -> list[object]:
    return [CircuitBreaker("alphavantage") for _ in range(COUNT)]


def named_with_listener() -> list[object]:
    listener = Quiet()
    return [CircuitBreaker(f"breaker-{i:05d}", listeners=[listener]) for i in range(COUNT)]


def bare_locks() -> list[object]:
    return [asyncio.Lock() for _ in range(COUNT)]


def cycled() -> list[object]:
    """Breakers that went CLOSED -> OPEN -> HALF_OPEN -> CLOSED, on a shared fake clock."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def cycle(breakers: list[CircuitBreaker]) -> None:
        for breaker in breakers:
            for _ in range(breaker.failure_threshold):
                with contextlib.suppress(Boom):
                    await breaker.call(fail)
        now[0] += 31.0
        for breaker in breakers:
            for _ in range(breaker.success_threshold):
                await breaker.call(succeed)

    breakers = [CircuitBreaker("alphavantage", clock=clock) for _ in range(COUNT)]
    asyncio.run(cycle(breakers))
    assert all(b.state is State.CLOSED for b in breakers)
    return list(breakers)


def owned_sizes() -> dict[str, int]:
    """sys.getsizeof of each object one breaker owns (not shared with another breaker)."""
    a, b = CircuitBreaker("alphavantage"), CircuitBreaker("alphavantage")
    sizes = {"CircuitBreaker instance": sys.getsizeof(a)}
    # On 3.11 reading __dict__ turns the compact attribute values into a real dict: count the
    # dict, which is what an instance used through __dict__ (or with many attributes) holds.
    sizes["its __dict__"] = sys.getsizeof(vars(a))
    sizes["asyncio.Lock"] = sys.getsizeof(a._lock)
    sizes["asyncio.Lock __dict__"] = sys.getsizeof(vars(a._lock))
    for name, value in vars(a).items():
        if name != "_lock" and value is not vars(b)[name]:
            sizes[f"attribute {name} ({type(value).__name__})"] = sys.getsizeof(value)
    return sizes


def main() -> None:
    logging.disable(logging.WARNING)  # 10,000 "circuit breaker opened" lines say nothing here
    rows = [
        ("fresh, shared name, no listener", bytes_each(fresh)),
        ("fresh, own name and one listener", bytes_each(named_with_listener)),
        ("after a full open/half-open/closed cycle", bytes_each(cycled)),
        ("(an asyncio.Lock alone, part of each figure above)", bytes_each(bare_locks)),
    ]
    sizes = owned_sizes()
    print(
        f"make bench-breaker-memory: app.breaker.CircuitBreaker, Python "
        f"{sys.version.split()[0]}; tracemalloc over {COUNT:,} breakers"
    )
    print()
    print("| breaker | bytes each | vs claimed ~200 |")
    print("| --- | ---: | ---: |")
    for name, size in rows:
        print(f"| {name} | {size:,.0f} | {size / CLAIM_BYTES:.1f}x |")
    print()
    print("sys.getsizeof of what one fresh breaker owns (a cross-check, not the headline):")
    print()
    print("| object | bytes |")
    print("| --- | ---: |")
    for name, size in sizes.items():
        print(f"| {name} | {size} |")
    print(f"| total | {sum(sizes.values())} |")


if __name__ == "__main__":
    main()
