"""The transition history in the shared store (app/transition_log.py): numbered by the store,
kept once however many processes report a change, bounded, kept across a restart, and written
in the order the breakers announced their changes."""

from __future__ import annotations

from pathlib import Path

from app.breaker import CircuitBreaker, State, Transition
from app.state import MemoryState, SqliteState
from app.transition_log import HISTORY_LIMIT, TransitionLog, TransitionRecorder, entry

KEY = "transitions:test"
OPENED = Transition(State.CLOSED, State.OPEN, "failure_threshold", 1, 30.0, 1796200000.1234)


def moved(generation: int, breaker: str = "alphavantage") -> dict[str, object]:
    new = State.OPEN if generation % 2 else State.CLOSED
    old = State.CLOSED if generation % 2 else State.OPEN
    return entry(breaker, Transition(old, new, "reset", generation, 0.0, 1796200000.0))


def test_an_entry_is_the_wire_format() -> None:
    assert entry("alphavantage", OPENED) == {
        "breaker": "alphavantage",
        "from": "closed",
        "to": "open",
        "reason": "failure_threshold",
        "generation": 1,
        "retry_after": 30.0,
        "at": "2026-12-02T08:26:40.123Z",
    }


async def test_a_change_reported_by_every_process_is_kept_once_and_numbered() -> None:
    store = MemoryState()
    here, there = TransitionLog(store, KEY), TransitionLog(store, KEY)
    await here.append([moved(1)])
    await there.append([moved(1), moved(2)])  # the other process heard 1 too
    await here.append([moved(2), moved(1, breaker="alphavantage_global_quote")])
    history = await there.read()
    assert [(t["id"], t["breaker"], t["generation"]) for t in history] == [
        (1, "alphavantage", 1),
        (2, "alphavantage", 2),
        (3, "alphavantage_global_quote", 1),
    ]


async def test_the_history_keeps_the_last_transitions_and_numbers_on() -> None:
    log = TransitionLog(MemoryState(), KEY)
    for generation in range(1, HISTORY_LIMIT + 11):
        await log.append([moved(generation)])
    history = await log.read()
    assert len(history) == HISTORY_LIMIT
    assert [t["id"] for t in history] == list(range(11, HISTORY_LIMIT + 11))


async def test_the_history_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteState(path, timeout=2.0)
    await TransitionLog(first, KEY).append([moved(1), moved(2)])
    await first.aclose()
    second = SqliteState(path, timeout=2.0)
    try:
        assert [t["id"] for t in await TransitionLog(second, KEY).read()] == [1, 2]
    finally:
        await second.aclose()


async def test_the_recorder_writes_what_it_hears_in_order() -> None:
    log = TransitionLog(MemoryState(), KEY)
    recorder = TransitionRecorder(log)
    breaker = CircuitBreaker("alphavantage", listeners=[recorder])
    for _ in range(3):  # six changes, heard faster than the store is written
        breaker.force_open()
        breaker.reset()
    await recorder.flush()
    history = await log.read()
    assert [(t["id"], t["reason"]) for t in history] == [
        (n + 1, "forced_open" if n % 2 == 0 else "reset") for n in range(6)
    ]
