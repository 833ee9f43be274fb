"""Failure-rate mode: the FailureRate settings and the rolling windows of recent calls that
CLOSED judges by them, the last N calls or those of the last T seconds."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

# A time window of T seconds has ceil(T) buckets (each at most a second wide) up to this many;
# a longer window gets wider buckets, so even an absurd window_seconds has bounded memory.
_MAX_BUCKETS = 600


@dataclass(frozen=True, slots=True)
class FailureRate:
    """Open CLOSED on the share of failed (or slow) calls in a window, not on a run of them.

    Set exactly one of `window_calls` (the last N calls) and `window_seconds` (the calls that
    ended in the last T seconds, to within a bucket: a second, or T / 600 past 600 seconds);
    the default is a count window, so a time window needs `window_calls=None`.
    """

    threshold: float  # open when failures / calls in the window >= this (0 < threshold <= 1)
    minimum_calls: int = 10  # no verdict until the window holds this many calls
    window_calls: int | None = 20
    window_seconds: float | None = None
    slow_call_seconds: float | None = None  # a call this long or longer is slow, whatever it did
    slow_call_threshold: float = 1.0  # open when slow calls / calls >= this (0 < x <= 1)

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.slow_call_threshold <= 1:
            raise ValueError(
                f"slow_call_threshold must be in (0, 1], got {self.slow_call_threshold}"
            )
        if self.minimum_calls < 1:
            raise ValueError(f"minimum_calls must be at least 1, got {self.minimum_calls}")
        if (self.window_calls is None) == (self.window_seconds is None):
            raise ValueError(
                "set exactly one of window_calls and window_seconds "
                "(window_calls=None for a time window)"
            )
        if self.window_calls is not None:
            if self.window_calls < 1:
                raise ValueError(f"window_calls must be at least 1, got {self.window_calls}")
            # A count window never holds more than window_calls: it could never give a verdict.
            if self.minimum_calls > self.window_calls:
                raise ValueError(
                    f"minimum_calls ({self.minimum_calls}) must not exceed "
                    f"window_calls ({self.window_calls})"
                )
        if self.window_seconds is not None and not (
            math.isfinite(self.window_seconds) and self.window_seconds > 0
        ):
            raise ValueError(
                f"window_seconds must be a finite number of seconds > 0, got {self.window_seconds}"
            )
        if self.slow_call_seconds is not None and not (
            math.isfinite(self.slow_call_seconds) and self.slow_call_seconds > 0
        ):
            raise ValueError(
                "slow_call_seconds must be a finite number of seconds > 0, "
                f"got {self.slow_call_seconds}"
            )


class Window(abc.ABC):
    """The calls CLOSED settled lately, as running totals, and the verdict on them."""

    __slots__ = ("_slow_after", "calls", "failures", "rate", "slow")

    def __init__(self, rate: FailureRate) -> None:
        self.rate = rate
        # Without a slow-call limit no duration is slow, and 0 slow calls never reach a
        # slow_call_threshold above 0: the verdict needs no branch for it.
        self._slow_after = math.inf if rate.slow_call_seconds is None else rate.slow_call_seconds
        self.calls = self.failures = self.slow = 0

    def record(self, now: float, failed: bool, duration: float) -> bool:
        """Add a settled call; True when the window now says to open."""
        self._add(now, failed, duration >= self._slow_after)
        calls, rate = self.calls, self.rate
        return calls >= rate.minimum_calls and (
            self.failures / calls >= rate.threshold or self.slow / calls >= rate.slow_call_threshold
        )

    @abc.abstractmethod
    def _add(self, now: float, failed: bool, slow: bool) -> None: ...

    @abc.abstractmethod
    def expire(self, now: float) -> None:
        """Forget the calls that have aged out by `now`."""

    @abc.abstractmethod
    def clear(self) -> None: ...


class CountWindow(Window):
    """The last N calls: a ring of flags (1 failed, 2 slow), O(1) per call."""

    __slots__ = ("_next", "_ring")

    def __init__(self, rate: FailureRate, size: int) -> None:
        super().__init__(rate)
        self._ring = bytearray(size)
        self._next = 0

    def _add(self, now: float, failed: bool, slow: bool) -> None:
        ring, i = self._ring, self._next
        if self.calls == len(ring):  # full: the oldest call, in this slot, drops out
            old = ring[i]
            self.failures -= old & 1
            self.slow -= old >> 1
        else:
            self.calls += 1
        ring[i] = failed | slow << 1
        self.failures += failed
        self.slow += slow
        self._next = i + 1 if i + 1 < len(ring) else 0

    def expire(self, now: float) -> None:
        return None  # calls leave a count window only when newer ones push them out

    def clear(self) -> None:
        # Slots are read only once the ring is full, and by then all have been rewritten.
        self.calls = self.failures = self.slow = self._next = 0


class TimeWindow(Window):
    """The calls of the last T seconds, in a ring of n buckets of T / n seconds each. Bucket
    number floor(now / width) lives in slot number % n; the window is the newest n buckets,
    so a call counts for between T - width and T seconds."""

    __slots__ = ("_bucket_calls", "_bucket_failures", "_bucket_slow", "_head", "_width")

    def __init__(self, rate: FailureRate, seconds: float, now: float) -> None:
        super().__init__(rate)
        n = min(math.ceil(seconds), _MAX_BUCKETS)
        self._width = seconds / n
        self._bucket_calls = [0] * n
        self._bucket_failures = [0] * n
        self._bucket_slow = [0] * n
        self._head = math.floor(now / self._width)  # the newest bucket's number

    def _add(self, now: float, failed: bool, slow: bool) -> None:
        self.expire(now)
        i = self._head % len(self._bucket_calls)
        self._bucket_calls[i] += 1
        self._bucket_failures[i] += failed
        self._bucket_slow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        head = math.floor(now / self._width)
        if head <= self._head:  # still the newest bucket (or a clock that stepped back)
            return
        n = len(self._bucket_calls)
        if head - self._head >= n:
            self.clear()
        else:
            # Empty the buckets between the old head and the new one, now the oldest.
            for number in range(self._head + 1, head + 1):
                i = number % n
                self.calls -= self._bucket_calls[i]
                self.failures -= self._bucket_failures[i]
                self.slow -= self._bucket_slow[i]
                self._bucket_calls[i] = self._bucket_failures[i] = self._bucket_slow[i] = 0
        self._head = head

    def clear(self) -> None:
        n = len(self._bucket_calls)
        self._bucket_calls, self._bucket_failures, self._bucket_slow = [0] * n, [0] * n, [0] * n
        self.calls = self.failures = self.slow = 0


def new_window(rate: FailureRate, clock: Callable[[], float]) -> Window:
    """An empty window of the kind `rate` asks for; only a time window reads the clock."""
    if rate.window_calls is not None:
        return CountWindow(rate, rate.window_calls)
    assert rate.window_seconds is not None  # FailureRate checked it
    return TimeWindow(rate, rate.window_seconds, clock())
