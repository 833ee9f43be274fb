# stock-service image: `docker build -t stock-service .` (docker-compose.yml builds it too).
# Both stages use the same pinned base, so the venv's python symlinks stay valid.

# -- build: the locked dependencies, then the project, into /opt/venv ---------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The lock's versions (`make lock` writes them), each file checked against its hashes: the
# versions CI tested, not the newest of the day. A layer of its own, rebuilt when they change.
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes \
        -r requirements/runtime.txt -r requirements/build.txt

# README.md is the project's `readme` in pyproject.toml: the build needs it.
COPY pyproject.toml README.md ./
COPY app ./app
# The project alone (its dependencies are in), built with the locked setuptools; then pip and
# setuptools leave the venv: the runtime stage copies it and installs nothing.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip uninstall --yes pip setuptools

# -- runtime: the venv only, no build tools, no source tree, not root ---------------------
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

# An empty working directory: the app is imported from the venv, and no .env is read here
# (configuration comes from the environment only). The state store's default SQLite file
# lives on a volume, the one place the service writes: it runs with `--read-only` otherwise.
# With replicas, set STATE_URL to a Redis instead (docker-compose.yml does).
WORKDIR /srv/stock-service
RUN mkdir data && chown 10001:10001 data
VOLUME /srv/stock-service/data
ENV STATE_URL=sqlite:///data/stock-service-state.db
USER 10001:10001

EXPOSE 8080

# No curl in the image: python answers the probe. /healthz does not depend on the breaker.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

# One worker per container unless WEB_CONCURRENCY asks for more (workers share the budget
# through STATE_URL and one /metrics; see "Workers or replicas" in the README).
# `python -m app` runs uvicorn with the app's JSON logging, and on SIGTERM each worker drains
# (/readyz 503) for SHUTDOWN_DRAIN_SECONDS, then lets in-flight requests finish within
# SHUTDOWN_GRACE_SECONDS. Without ALPHAVANTAGE_API_KEY it refuses to start, with one line.
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8080"]
