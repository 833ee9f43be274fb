"""Consumers: the clients that share this deployment's key, each with a token and limits.

The registry is one document in the state store (STATE_URL), so that `python -m app
consumers ...` and every process and replica see the same consumers. It is namespaced per
deployment (per store), not per API key: the CLI then needs no key, and a key rotation keeps
the consumers. Two deployments with different keys that must not share consumers need
stores of their own (another SQLite file or Redis database).

Tokens are `secrets.token_urlsafe(32)`: 256 random bits. Only their SHA-256 is kept. A fast
unsalted hash is enough for a token that random: salts and slow hashes defend guessable
passwords against a dictionary, and no dictionary reaches 2**256.

Each consumer may have
- `calls_per_day`: upstream calls its misses may cause in a rolling day, a DailyQuota ledger
  in the store like the key's own. Hits, stale copies and joining a flight cost nothing.
- `requests_per_second`: requests of any kind, a TokenBucket in the store, so the number
  means the same whatever the count of processes and replicas (a bucket per process would
  allow that many times more). While the store is down it is not enforced: it protects the
  service's capacity, which a store outage does not change, and the budget still holds.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from app.errors import ConsumerThrottled, StoreUnavailable, Throttled, Unauthorized
from app.limits import DAY, STORE_RETRY_AFTER, DailyQuota, QuotaUsage, State, TokenBucket

R = TypeVar("R")

REGISTRY_KEY = "consumers"
# A revocation reaches every process within this long, without a restart.
REGISTRY_CACHE_SECONDS = 1.0
# Names are metric label values and store keys: short and plain.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
ANONYMOUS = "anonymous"  # the metric label for calls made while no consumer is configured


class Store(Protocol):
    """What consumers need of a state store (app/state has them)."""

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R: ...


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    token_sha256: str
    calls_per_day: int | None  # None: no budget of its own (the key's quota still binds)
    requests_per_second: float | None  # None: no rate of its own
    created_at: float  # store clock, seconds since the epoch

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Consumer:
        return cls(**document)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"consumer name {name!r}: 1 to 32 lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def find(consumers: Mapping[str, Consumer], token: str) -> Consumer | None:
    """The consumer whose token `token` is. Every hash is compared, in constant time, so the
    answer's timing says nothing about how close a guess came."""
    presented = token_hash(token).encode()
    found = None
    for consumer in consumers.values():
        if hmac.compare_digest(presented, consumer.token_sha256.encode()):
            found = consumer
    return found


def _read(document: State) -> dict[str, Consumer]:
    entries = document["consumers"] if document is not None else {}
    return {name: Consumer.from_json(entry) for name, entry in entries.items()}


def _write(consumers: Mapping[str, Consumer]) -> State:
    return {"consumers": {name: asdict(consumer) for name, consumer in consumers.items()}}


class ConsumerRegistry:
    """The consumers in `store`. Reads for authentication are cached per process for
    REGISTRY_CACHE_SECONDS; while the store is down, the last document this process read
    stands (revocations made meanwhile wait for the store to answer)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._seen: dict[str, Consumer] | None = None
        self._seen_at = -math.inf

    async def add(
        self, name: str, calls_per_day: int | None, requests_per_second: float | None
    ) -> str:
        """Create consumer `name` and return its token, which nothing keeps.
        ValueError for a bad name or limit, or a name in use."""
        check_name(name)
        if calls_per_day is not None and calls_per_day < 1:
            raise ValueError(f"calls per day must be at least 1, got {calls_per_day}")
        if requests_per_second is not None and not (
            math.isfinite(requests_per_second) and requests_per_second > 0
        ):
            raise ValueError(f"requests per second must be above 0, got {requests_per_second}")
        token = new_token()

        def create(document: State, now: float) -> tuple[State, None]:
            consumers = _read(document)
            if name in consumers:
                raise ValueError(f"consumer {name!r} exists (revoke it first to replace it)")
            consumer = Consumer(name, token_hash(token), calls_per_day, requests_per_second, now)
            return _write({**consumers, name: consumer}), None

        await self._store.update(REGISTRY_KEY, create)
        self._seen_at = -math.inf  # this process sees its own change at once
        return token

    async def revoke(self, name: str) -> bool:
        """Remove consumer `name`; False if there is none. Its usage ledger stays, so a
        consumer revoked and added again does not get a fresh day."""

        def remove(document: State, now: float) -> tuple[State, bool]:
            consumers = _read(document)
            if consumers.pop(name, None) is None:
                return document, False
            return _write(consumers), True

        removed = await self._store.update(REGISTRY_KEY, remove)
        self._seen_at = -math.inf
        return removed

    async def all(self) -> dict[str, Consumer]:
        """Every consumer, read from the store now (StoreUnavailable if it does not answer)."""
        consumers = await self._store.update(REGISTRY_KEY, lambda doc, now: (doc, _read(doc)))
        self._seen, self._seen_at = consumers, self._clock()
        return consumers

    async def current(self) -> dict[str, Consumer]:
        """Every consumer as this process knows them: at most REGISTRY_CACHE_SECONDS old, or
        the last read while the store is down. Throttled ("store") if the store has never
        answered: without the list, who may call is unknown."""
        if self._seen is not None and self._clock() - self._seen_at < REGISTRY_CACHE_SECONDS:
            return self._seen
        try:
            return await self.all()
        except StoreUnavailable:
            if self._seen is None:
                raise Throttled(
                    "the shared state store does not answer, so tokens cannot be checked",
                    "store",
                    STORE_RETRY_AFTER,
                ) from None
            return self._seen

    async def authenticate(self, token: str | None) -> Consumer | None:
        """The consumer `token` names; None while no consumer exists (the service is open).
        Unauthorized for no token or a wrong or revoked one, once any consumer exists."""
        consumers = await self.current()
        if not consumers:
            return None
        consumer = find(consumers, token) if token else None
        if consumer is None:
            raise Unauthorized("a valid consumer bearer token is required")
        return consumer


@dataclass(frozen=True, slots=True)
class ConsumerUsage:
    consumer: Consumer
    quota: QuotaUsage | None  # None without a budget: no ledger is kept


class ConsumerLimits:
    """Each consumer's budget of upstream calls and its request rate, in `store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def admit_request(self, consumer: Consumer) -> None:
        """Take one of the consumer's requests a second, or ConsumerThrottled."""
        rate = consumer.requests_per_second
        if rate is None:
            return
        burst = max(1, math.ceil(rate))  # a second's worth at once

        def take(state: State, now: float) -> tuple[State, None]:
            bucket = TokenBucket.load(rate, burst, lambda: now, state)
            try:
                bucket.reserve(max_wait=0)
            except Throttled as exc:
                raise ConsumerThrottled(
                    f"consumer {consumer.name!r} is limited to {rate:g} requests a second",
                    "consumer_rate",
                    exc.retry_after,
                ) from None
            return bucket.dump(), None

        try:
            await self._store.update(f"consumer:{consumer.name}:rate", take)
        except StoreUnavailable:
            return  # not enforced while the store is down: see the module's docstring

    async def check(self, consumer: Consumer) -> None:
        """ConsumerThrottled if a call now would go over the consumer's budget."""
        await self._on_ledger(consumer, DailyQuota.check)

    async def charge(self, consumer: Consumer) -> None:
        """Count a call about to be made for the consumer, or ConsumerThrottled."""
        await self._on_ledger(consumer, DailyQuota.take)

    async def refund(self, consumer: Consumer) -> None:
        """Take back a charge for a call that, refused further on, was never made."""
        await self._on_ledger(consumer, DailyQuota.refund)

    async def usage(self, consumer: Consumer) -> ConsumerUsage:
        if consumer.calls_per_day is None:
            return ConsumerUsage(consumer, None)
        return ConsumerUsage(consumer, await self._on_ledger(consumer, DailyQuota.status))

    async def _on_ledger(self, consumer: Consumer, use: Callable[[DailyQuota], R]) -> R | None:
        limit = consumer.calls_per_day
        if limit is None:
            return None

        def change(state: State, now: float) -> tuple[State, R]:
            quota = DailyQuota.load(limit, DAY, lambda: now, state)
            try:
                result = use(quota)
            except Throttled as exc:
                raise ConsumerThrottled(
                    f"consumer {consumer.name!r} has spent its {limit} upstream calls for "
                    "the day (cached and stale answers are still free)",
                    "consumer_budget",
                    exc.retry_after,
                ) from None
            return quota.dump(), result

        try:
            return await self._store.update(f"consumer:{consumer.name}:calls", change)
        except StoreUnavailable:
            # The budget cannot be proven: better no call than an overdrawn consumer.
            raise Throttled(
                "the shared state store does not answer, so the consumer's budget cannot be "
                "checked",
                "store",
                STORE_RETRY_AFTER,
            ) from None
