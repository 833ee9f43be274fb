"""app/batch.py: one call for the keys a batch's members ask for, once every member has asked
or stepped aside."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from app.batch import Batch


class Fetches:
    """A fetch that records the keys of each call and finds every key but "unknown"."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.error = error

    async def __call__(self, keys: list[str]) -> Mapping[str, str]:
        self.calls.append(keys)
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return {key: key.lower() for key in keys if key != "unknown"}


async def test_every_member_asking_makes_one_call_for_all() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B", "unknown"], fetch)
    found = await asyncio.gather(*(batch.get(key) for key in ["A", "B", "unknown"]))
    assert fetch.calls == [["A", "B", "unknown"]]
    assert all(result == {"A": "a", "B": "b"} for result in found)


async def test_no_call_goes_out_while_a_member_is_undecided() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B", "C"], fetch)
    asking = [asyncio.ensure_future(batch.get(key)) for key in ["A", "B"]]
    await asyncio.sleep(0.01)
    assert fetch.calls == []
    assert not any(task.done() for task in asking)
    batch.step_aside("C")  # e.g. a copy turned up, or it waits on another process
    assert [result["A"] for result in await asyncio.gather(*asking)] == ["a", "a"]
    assert fetch.calls == [["A", "B"]]


async def test_stepping_aside_twice_or_after_asking_is_harmless() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B"], fetch)
    batch.step_aside("B")
    batch.step_aside("B")
    assert (await batch.get("A"))["A"] == "a"
    batch.step_aside("A")
    assert fetch.calls == [["A"]]


async def test_nobody_asking_makes_no_call() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B"], fetch)
    batch.step_aside("A")
    batch.step_aside("B")
    await asyncio.sleep(0.01)
    assert fetch.calls == []


async def test_a_member_asking_after_the_call_went_out_gets_a_call_of_its_own() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B"], fetch)
    batch.step_aside("B")  # it waited elsewhere ...
    assert (await batch.get("A"))["A"] == "a"
    assert (await batch.get("B"))["B"] == "b"  # ... and that came to nothing
    assert fetch.calls == [["A"], ["B"]]


async def test_the_calls_error_reaches_every_member() -> None:
    fetch = Fetches(error=RuntimeError("upstream failed"))
    batch = Batch(["A", "B"], fetch)
    results = await asyncio.gather(batch.get("A"), batch.get("B"), return_exceptions=True)
    assert [str(result) for result in results] == ["upstream failed"] * 2
    assert fetch.calls == [["A", "B"]]


async def test_a_member_that_goes_away_leaves_the_call_to_the_others() -> None:
    fetch = Fetches()
    batch = Batch(["A", "B"], fetch)
    leaving = asyncio.ensure_future(batch.get("A"))
    await asyncio.sleep(0)
    staying = asyncio.ensure_future(batch.get("B"))
    await asyncio.sleep(0)
    leaving.cancel()
    assert (await staying)["B"] == "b"
    with pytest.raises(asyncio.CancelledError):
        await leaving
