# Every target creates .venv when it is missing, so a fresh clone needs only Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock lock-upgrade tools wrk run test test-integration screenshot lint typecheck rules-check compose-config bench-breaker stress-test bench-concurrency soak bench-breaker-memory bench-quota bench-store bench-outage bench-consumers bench-sse clean

# From the lock (requirements/dev.txt), not the newest releases: every checkout and CI install
# the same versions, checked against the hashes. The project itself goes in without
# dependencies, built with the locked setuptools.
$(STAMP): pyproject.toml requirements/dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "python3 -m venv failed: on Debian, apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)

# Recompiles requirements/*.txt from pyproject.toml's ranges (on Python 3.11, Linux x86_64):
# `lock` after a dependency changes (other pins stay), `lock-upgrade` for the newest releases.
lock:
	PYTHON=$(PYTHON) sh requirements/lock.sh

lock-upgrade:
	PYTHON=$(PYTHON) sh requirements/lock.sh --upgrade

# Tests use Debian's prometheus (promtool, and a real server end to end), docker-compose
# (to validate the compose file), redis-server (the state store's Redis backend, against a
# real server) and chromium with its chromedriver (the status page in a real browser) for
# real; as root, install whichever is missing.
DEBIAN_TOOLS := prometheus:promtool prometheus:prometheus docker-compose:docker-compose \
	redis-server:redis-server chromium:chromium chromium-driver:chromedriver
tools:
	@missing=$$(for tool in $(DEBIAN_TOOLS); do \
		command -v $${tool#*:} >/dev/null || echo $${tool%%:*}; done | sort -u); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -q --no-install-recommends $$missing; \
		else echo "missing: sudo apt-get install $$missing"; exit 1; fi; \
	fi

# Serves on 127.0.0.1:8080; without ALPHAVANTAGE_API_KEY, against the built-in simulator.
run: $(STAMP)
	$(BIN)/python -m app --simulator-port 8081

test: $(STAMP) tools
	$(BIN)/python -m pytest

# Real servers on 127.0.0.1: the fault matrix, graceful shutdown, Prometheus end to end.
# (`make test` runs these too.)
test-integration: $(STAMP) tools
	$(BIN)/python -m pytest -m integration

# The README's picture of the status page (docs/status-page.png): the browser test's
# screenshot of the page with the breaker open, taken against a real service and simulator.
screenshot: $(STAMP) tools
	STATUS_PAGE_SCREENSHOT=docs/status-page.png $(BIN)/python -m pytest -q \
		tests/test_status_page_browser.py::test_the_page_follows_the_breaker_through_a_trip_and_a_recovery

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The Prometheus config, the alert rules, and the rules' unit tests.
rules-check: tools
	promtool check config prometheus/prometheus.yml
	promtool check rules prometheus/alerts.yml
	promtool test rules prometheus/alerts_test.yml

# Validates docker-compose.yml as Debian's docker-compose 1.29 reads it, for each profile.
compose-config: tools
	docker-compose config -q
	docker-compose --profile demo config -q
	docker-compose --profile live config -q

# The benchmarks' load generator, from Debian (installed when run as root).
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk; } || \
		{ echo "wrk is missing: sudo apt-get install wrk"; exit 1; }

bench-breaker: $(STAMP)
	$(BIN)/python bench/bench_breaker.py

# wrk against real uvicorn processes on 127.0.0.1: about three minutes, then a table.
stress-test: $(STAMP) wrk
	$(BIN)/python bench/stress.py

# 10,000 requests in flight at once against one service process: about a minute, then a table.
bench-concurrency: $(STAMP)
	$(BIN)/python bench/concurrency.py

# 1,000,000 mixed requests through wrk, the service's RSS after each 100,000: about 15 minutes.
soak: $(STAMP) wrk
	$(BIN)/python bench/soak.py

bench-breaker-memory: $(STAMP)
	$(BIN)/python bench/breaker_memory.py

# Upstream calls a day for 100 Zipf-distributed symbols at 10 requests/s (a simulated day):
# cache, coalescing, pacing and quota against a free key's 25 a day; then a simulated
# trading week of fixed TTLs against market freshness and a watchlist (about 20 minutes).
bench-quota: $(STAMP)
	$(BIN)/python bench/quota_workload.py

# Cache hits and misses on memory://, the default SQLite file and a real redis-server: what
# each store costs (about a minute, then a table).
bench-store: $(STAMP) tools wrk
	$(BIN)/python bench/store_overhead.py

# Two consumers sharing a key, and what the token check costs a cache hit.
bench-consumers: $(STAMP) wrk
	$(BIN)/python bench/consumers.py

# Upstream calls an outage costs before every breaker is open, 1 replica against 3.
bench-outage: $(STAMP)
	$(BIN)/python bench/outage_cost.py

# 1,000 idle subscribers of GET /circuit-breaker/events (RSS, CPU), and how soon a transition
# reaches a subscriber of the same and of another replica, on SQLite and Redis (about a minute).
bench-sse: $(STAMP) tools
	$(BIN)/python bench/sse_subscribers.py

clean:
	rm -rf $(VENV) .venv-lock .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
