"""The lock (requirements/*.txt) against pyproject.toml and the installed environment.

The image installs requirements/runtime.txt with --require-hashes, and no Docker engine runs
here to find out that a dependency is missing from it: these tests do, without the network.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")

Pins = dict[str, tuple[str, frozenset[str]]]  # name -> (version, hashes)


def pins(lock: str) -> Pins:
    """A lock file's `name==version` entries, each with its hashes (pip-compile's layout)."""
    text = (REQUIREMENTS / lock).read_text(encoding="utf-8")
    found: Pins = {}
    for entry in re.split(r"\n(?=\S)", text):  # an entry: its line and its indented hashes
        if entry.startswith("#") or not entry.strip():
            continue
        match = PIN.match(entry)
        assert match, f"{lock}: not a pin: {entry.splitlines()[0]!r}"
        hashes = frozenset(HASH.findall(entry))
        assert hashes, f"{lock}: {match['name']} has no hash"
        found[canonicalize_name(match["name"])] = (match["version"], hashes)
    return found


def closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements need here, through the installed metadata."""
    seen: set[tuple[str, str]] = set()  # (distribution, one of its extras or "")
    todo = [(Requirement(r), "") for r in requirements]  # (requirement, the extra asking)
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ("", *requirement.extras):
            if (name, wanted) not in seen:
                seen.add((name, wanted))
                todo += [(Requirement(r), wanted) for r in requires(name)]
    return {name for name, _ in seen}


def requires(name: str) -> list[str]:
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []  # not installed: the tests name it missing from the lock


def test_every_entry_is_pinned_with_hashes() -> None:
    for lock in ("runtime.txt", "build.txt", "dev.txt"):
        assert pins(lock), f"{lock} pins nothing"


@pytest.mark.parametrize("lock", ["runtime.txt", "build.txt"])
def test_dev_lock_holds_the_same_pins(lock: str) -> None:
    """CI installs dev.txt: it tests the versions the image ships, not its own."""
    dev = pins("dev.txt")
    different = {name: pin[0] for name, pin in pins(lock).items() if dev.get(name) != pin}
    assert not different, f"dev.txt differs from {lock} on {different}: make lock"


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("runtime.txt", PYPROJECT["project"]["dependencies"]),
        ("build.txt", PYPROJECT["build-system"]["requires"]),
        (
            "dev.txt",
            [
                *PYPROJECT["project"]["dependencies"],
                *PYPROJECT["project"]["optional-dependencies"]["dev"],
                *PYPROJECT["project"]["optional-dependencies"]["bench"],
            ],
        ),
    ],
)
def test_lock_pins_what_pyproject_asks_for(lock: str, requirements: list[str]) -> None:
    locked = pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {requirement.name}: make lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {requirement.name}=={version}, outside {line!r}: make lock"
        )


def test_runtime_lock_holds_every_dependency_of_the_project() -> None:
    """With --require-hashes, pip refuses a dependency that the lock does not pin: the image
    build would fail. Walked here through the installed packages' own metadata."""
    missing = closure(PYPROJECT["project"]["dependencies"]) - set(pins("runtime.txt"))
    assert not missing, f"runtime.txt lacks {sorted(missing)}: make lock"


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_environment_is_installed_from_the_dev_lock() -> None:
    """`make install` installs dev.txt, and again whenever it changes."""
    stale = {
        name: f"{installed_version(name)} installed, {version} locked"
        for name, (version, _) in pins("dev.txt").items()
        if installed_version(name) != version
    }
    assert not stale, f"{stale}: make install"
