#!/bin/sh
# Compiles pyproject.toml's version ranges into the hashed lock files beside this script:
# `make lock` (keeps the pins that still fit) or `make lock-upgrade` (passes --upgrade: the
# newest releases the ranges allow). pip-compile resolves environment markers for the
# interpreter that runs it, so this runs only on the platform the lock is for: the image's.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-lock
TOOLS="pip==26.0.1 pip-tools==7.6.2"

"$PYTHON" -c 'import platform, sys
assert sys.version_info[:2] == (3, 11) and platform.system() == "Linux" \
    and platform.machine() == "x86_64", "the lock is compiled with CPython 3.11 on Linux x86_64"'

# PyPI alone, whatever pip.conf or PIP_* variables add (a mirror, a wheel directory): each pin
# then carries the hashes of every file PyPI has for it.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
export PIP_CONFIG_FILE=/dev/null

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet $TOOLS

compile() {
    out=$1 what=$2
    shift 2
    "$VENV/bin/pip-compile" --quiet --no-header --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --output-file "$out" "$@" pyproject.toml
    {
        echo "# $what"
        echo "# Compiled from pyproject.toml by \`make lock\` (requirements/lock.sh: pip-compile"
        echo "# --generate-hashes) for CPython 3.11 on Linux x86_64. Do not edit by hand."
        echo "# Install: pip install --require-hashes -r $out"
        echo
        cat "$out"
    } >"$out.tmp"
    mv "$out.tmp" "$out"
}

compile requirements/runtime.txt "Runtime dependencies: what the image installs." "$@"
compile requirements/build.txt "The build backend (build-system.requires): the image builds the project with it." \
    --all-build-deps --only-build-deps "$@"
compile requirements/dev.txt "Runtime, build, dev and bench: what \`make install\` (and so CI) installs." \
    --all-build-deps --extra dev --extra bench \
    --constraint requirements/runtime.txt --constraint requirements/build.txt "$@"
