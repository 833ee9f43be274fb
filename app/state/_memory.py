from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

from app.limits import State

R = TypeVar("R")


class MemoryState:
    """State in this process only: nothing is shared, nothing survives a restart."""

    url = "memory://"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[str, tuple[State, float]] = {}  # value, expiry (store clock)
        self._clock = clock

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R:
        # No await between the read and the write: atomic within the process.
        now = self._clock()
        old, expires = self._values.get(key, (None, math.inf))
        if expires <= now:
            old = None
        value, result = change(old, now)
        if value is not old:
            self._values[key] = (value, math.inf if keep_for is None else now + keep_for)
        return result

    async def aclose(self) -> None:
        self._values.clear()
