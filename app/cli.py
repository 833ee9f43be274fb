"""`python -m app consumers add|list|revoke`: the consumers of this deployment, in the store
STATE_URL names (app/consumers.py). It needs no ALPHAVANTAGE_API_KEY: consumers belong to the
deployment's store, not to a key.

`add` prints the new token on stdout, alone, once: nothing keeps it, only its hash. Whatever
else the commands say goes to stderr, so `TOKEN=$(python -m app consumers add NAME)` works.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Sequence

from app.consumers import ConsumerRegistry
from app.errors import StoreUnavailable
from app.settings import ConfigError, load_store_settings
from app.state import describe, open_state


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(
        prog="python -m app consumers",
        description="Manage the consumers sharing this deployment's key (in STATE_URL).",
    )
    actions = commands.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a consumer and print its token, once")
    add.add_argument("name")
    add.add_argument("--calls-per-day", type=int, help="its upstream calls in a rolling day")
    add.add_argument("--requests-per-second", type=float, help="its requests to this service")
    actions.add_parser("list", help="every consumer and its limits (never a token)")
    revoke = actions.add_parser("revoke", help="remove a consumer: its token stops working")
    revoke.add_argument("name")
    return commands


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_store_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    url = settings.state_url.get_secret_value()
    try:
        return asyncio.run(run(args, url, settings.state_timeout_seconds))
    except StoreUnavailable as exc:
        print(f"the state store {describe(url)} does not answer: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2


async def run(args: argparse.Namespace, url: str, store_timeout: float) -> int:
    store = open_state(url, store_timeout)
    registry = ConsumerRegistry(store)
    try:
        if args.action == "add":
            token = await registry.add(args.name, args.calls_per_day, args.requests_per_second)
            print(
                f"consumer {args.name!r} created in {describe(url)}; its token follows, shown "
                "this once (send it as `Authorization: Bearer <token>`):",
                file=sys.stderr,
            )
            print(token)
            return 0
        if args.action == "list":
            consumers = await registry.all()
            print("name\tcalls_per_day\trequests_per_second\tcreated_at")
            for name in sorted(consumers):
                consumer = consumers[name]
                created = dt.datetime.fromtimestamp(consumer.created_at, dt.UTC)
                print(
                    f"{name}\t{unlimited(consumer.calls_per_day)}\t"
                    f"{unlimited(consumer.requests_per_second)}\t{created.isoformat()}"
                )
            return 0
        if await registry.revoke(args.name):
            print(f"consumer {args.name!r} revoked", file=sys.stderr)
            return 0
        print(f"no consumer {args.name!r}", file=sys.stderr)
        return 1
    finally:
        await store.aclose()


def unlimited(limit: float | None) -> str:
    return "-" if limit is None else f"{limit:g}"
