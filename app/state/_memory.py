from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from app.limits import State

R = TypeVar("R")


class MemoryState:
    """State in this process only: nothing is shared, nothing survives a restart."""

    url = "memory://"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[str, State] = {}
        self._clock = clock

    async def update(self, key: str, change: Callable[[State, float], tuple[State, R]]) -> R:
        # No await between the read and the write: atomic within the process.
        value, result = change(self._values.get(key), self._clock())
        self._values[key] = value
        return result

    async def aclose(self) -> None:
        self._values.clear()
