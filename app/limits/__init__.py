"""What the service allows itself to ask of Alpha Vantage: pacing, a daily quota, a bulkhead.

A free key allows about one call a second and 25 a day, counted upstream per key and IP, and
going over makes calls fail for the rest of the day. A breaker reacts after that damage; these
limits keep the service under them instead. None of them queues without bound: a call that
would wait longer than it may is refused at once with Throttled, which carries a Retry-After.

Their state lives in a store every process with the key shares (SharedState; app/state has
the stores), and each decision is one atomic change of it, made with the store's clock.

Modules, private to this package, which re-exports the public names:
- `_upstream.py`: UpstreamLimits, which puts them together, and the SharedState it needs.
- `_quota.py`: DailyQuota, the rolling-day ledger, and QuotaUsage.
- `_pacing.py`: TokenBucket, and Pause (what an upstream rate-limit answer asks for).
- `_bulkhead.py`: Bulkhead (per process: it bounds this process's connections).
"""

from app.limits._bulkhead import Bulkhead
from app.limits._pacing import Pause, TokenBucket
from app.limits._quota import DAY, DailyQuota, QuotaUsage
from app.limits._state import State
from app.limits._upstream import (
    STORE_RETRY_AFTER,
    LimitsStatus,
    SharedState,
    UpstreamLimits,
    priority_calls,
)

__all__ = [
    "DAY",
    "STORE_RETRY_AFTER",
    "Bulkhead",
    "DailyQuota",
    "LimitsStatus",
    "Pause",
    "QuotaUsage",
    "SharedState",
    "State",
    "TokenBucket",
    "UpstreamLimits",
    "priority_calls",
]
