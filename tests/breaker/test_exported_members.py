"""app.breaker's public namespace, after httpx's tests/test_exported_members.py: `__all__` is
exactly the documented public names, the package holds no other public name, and every one is
defined in one of its private modules."""

from __future__ import annotations

import importlib

import app.breaker

# The public API, each name listed in the package docstring beside the module defining it.
PUBLIC_NAMES = {
    "Backoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "FailureRate",
    "Guard",
    "Listener",
    "Outcome",
    "SharedStore",
    "Sharing",
    "Snapshot",
    "State",
    "Transition",
    "count_every_exception",
}


def test_all_is_exactly_the_documented_public_names() -> None:
    assert len(app.breaker.__all__) == len(set(app.breaker.__all__))
    assert set(app.breaker.__all__) == PUBLIC_NAMES


def test_all_imports_are_exported() -> None:
    """httpx's check: no public name in the namespace that __all__ leaves out."""
    public = {name for name in vars(app.breaker) if not name.startswith("_")}
    assert public == set(app.breaker.__all__)


def test_every_exported_name_comes_from_a_private_module() -> None:
    for name in app.breaker.__all__:
        member = getattr(app.breaker, name)
        module = member.__module__
        assert module.startswith("app.breaker._"), (name, module)
        assert getattr(importlib.import_module(module), name) is member
