"""Backoff of the open timeout: each consecutive re-open from HALF_OPEN stays open longer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """The k-th consecutive re-open from HALF_OPEN stays open for
    min(max_timeout, timeout * multiplier**k * uniform(1 - jitter, 1 + jitter))."""

    multiplier: float = 2.0  # >= 1
    max_timeout: float = 300.0  # seconds, >= 0
    jitter: float = 0.1  # 0 <= jitter < 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be a finite number >= 1, got {self.multiplier}")
        if not (math.isfinite(self.max_timeout) and self.max_timeout >= 0):
            raise ValueError(
                f"max_timeout must be a finite number of seconds >= 0, got {self.max_timeout}"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")


def reopen_timeout(
    backoff: Backoff, timeout: float, reopens: int, random: Callable[[], float]
) -> float:
    """How long the k-th consecutive re-open lasts, k = `reopens` >= 1, for a breaker whose
    opening from CLOSED lasts `timeout`. Draws the jitter from `random()`, once a call."""
    try:
        grown = timeout * backoff.multiplier**reopens
    except OverflowError:  # multiplier**k past 1e308: long past any cap (unless timeout is 0)
        grown = math.inf if timeout else 0.0
    jittered = grown * (1 + backoff.jitter * (2 * random() - 1))
    return float(min(backoff.max_timeout, jittered))
