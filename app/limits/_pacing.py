from __future__ import annotations

import math
import time
from collections.abc import Callable

from app.errors import Throttled, retry_after_seconds
from app.limits._state import State


class TokenBucket:
    """`rate` calls a second on average and at most `burst` at once.

    A caller may reserve a token that is not there yet (the bucket goes below zero) and waits
    until it would have been: reservations keep their order, and the calls they allow start
    no closer together than the rate permits.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def tokens(self) -> float:
        """Tokens available now; below zero when callers wait for tokens still to come."""
        self._refill(self._clock())
        return self._tokens

    def reserve(self, max_wait: float) -> float:
        """Take a token and return how long to wait before using it, or raise Throttled
        (taking nothing) if that would be longer than `max_wait`."""
        self._refill(self._clock())
        wait = max(0.0, (1.0 - self._tokens) / self.rate)
        if wait > max_wait:
            raise Throttled(
                f"calls are paced at {self.rate:g} a second and the queue is full",
                "pacing",
                retry_after_seconds(wait - max_wait),
            )
        self._tokens -= 1.0
        return wait

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def dump(self) -> State:
        return {"tokens": self._tokens, "updated": self._updated}

    @classmethod
    def load(cls, rate: float, burst: int, clock: Callable[[], float], state: State) -> TokenBucket:
        bucket = cls(rate, burst, clock)
        if state is not None:
            bucket._tokens, bucket._updated = state["tokens"], state["updated"]
        return bucket


class Pause:
    """No call before `until` (store clock), for the `reason` it is counted under."""

    def __init__(self, now: float, until: float = -math.inf, reason: str = "pacing") -> None:
        self._now = now
        self.until = until
        self.reason = reason

    def left(self) -> float:
        return max(0.0, self.until - self._now)

    def extend(self, seconds: float, reason: str) -> None:
        """Pause for `seconds` from now, unless a longer pause is set already."""
        if self._now + seconds > self.until:
            self.until, self.reason = self._now + seconds, reason

    def dump(self) -> State:
        return None if self.until == -math.inf else {"until": self.until, "reason": self.reason}

    @classmethod
    def load(cls, now: float, state: State) -> Pause:
        return cls(now) if state is None else cls(now, state["until"], state["reason"])
