"""Where state shared by every process with one API key lives: `STATE_URL` picks the store.

    memory://                 one process only, nothing kept (tests, or on purpose)
    sqlite:///PATH            a file: survives restarts and kill -9, shared by every process
                              on the host that opens it (the default, under the working dir)
    redis://[:pw@]host:port/db   shared by replicas on many hosts (and rediss://)

Every store offers one operation, an atomic read-change-write of a JSON document under a key
(app.limits.SharedState), with the store's own clock and a timeout.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from app.state._memory import MemoryState
from app.state._observed import ObservedState, StoreEvents
from app.state._redis import RedisState
from app.state._sqlite import SqliteState

__all__ = [
    "MemoryState",
    "ObservedState",
    "RedisState",
    "SqliteState",
    "StateStore",
    "StoreEvents",
    "check_state_url",
    "describe",
    "open_state",
]

StateStore = MemoryState | SqliteState | RedisState | ObservedState


USABLE = "must be memory://, sqlite:///PATH or redis://[:password@]host:port/db (or rediss://)"


def check_state_url(url: str) -> None:
    """ValueError, saying what a usable URL looks like, for one no store can use."""
    if url == "memory://" or (url.startswith("sqlite:///") and len(url) > len("sqlite:///")):
        return
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("redis", "rediss") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        usable = False
    if not usable:
        raise ValueError(USABLE)
    if parts.query:
        # redis-py lets the query override the timeouts STATE_TIMEOUT_SECONDS sets.
        raise ValueError("takes no ?options: the timeouts come from STATE_TIMEOUT_SECONDS")


def open_state(url: str, timeout: float) -> MemoryState | SqliteState | RedisState:
    """The store `url` names (a checked one: see check_state_url). Opening connects to
    nothing: a store that is down at startup makes the service start degraded."""
    check_state_url(url)
    if url == "memory://":
        return MemoryState()
    if url.startswith("sqlite:///"):
        return SqliteState(url.removeprefix("sqlite:///"), timeout)
    return RedisState(url, timeout)


def describe(url: str) -> str:
    """`url` fit for a log line or an answer: any password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()
