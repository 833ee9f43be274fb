"""The Grafana dashboard and its provisioning: valid, complete, and only about metrics the
service really exports (taken from a live /metrics exposition, not from a list kept by hand)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.conftest import make_settings, prometheus_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "stock-service.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"

METRIC_NAME = re.compile(r"\bstock_api_[a-zA-Z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.]+)\s*,")
STATE_TEXTS = {"0": "closed", "1": "open", "2": "half-open"}

Panel = dict[str, Any]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def all_panels(dashboard: dict[str, Any]) -> Iterator[Panel]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def data_panels(dashboard: dict[str, Any]) -> list[Panel]:
    return [panel for panel in all_panels(dashboard) if panel.get("type") != "row"]


def exprs(panel: Panel) -> list[str]:
    return [str(target.get("expr", "")) for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def datasource_uid() -> str:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    uid = datasource["uid"]
    assert isinstance(uid, str)
    return uid


# -- the file --------------------------------------------------------------------------------


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "stock-service"
    assert dashboard["title"] == "Stock service"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}


def test_every_panel_has_a_unique_id_a_type_and_a_prometheus_query(
    dashboard: dict[str, Any],
) -> None:
    uid = datasource_uid()
    panels = list(all_panels(dashboard))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {ids}"
    for panel in data_panels(dashboard):
        title = panel.get("title")
        assert panel.get("type"), f"panel {title!r} has no type"
        assert panel.get("datasource", {}).get("uid") == uid, f"panel {title!r}"
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no target"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"panel {title!r}: empty expr"
            assert target.get("datasource", {"uid": uid}).get("uid") == uid, f"{title!r}"


def test_panels_tile_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert min(w, h) > 0, panel["title"]
        assert min(x, y) >= 0, panel["title"]
        assert x + w <= 24, panel["title"]
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = panel["title"]


def test_breaker_variable_lists_the_exported_breakers(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "breaker"]
    query = variable["query"]
    query_text = query["query"] if isinstance(query, dict) else query
    assert query_text == "label_values(stock_api_circuit_breaker_state, breaker)"
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["datasource"]["uid"] == datasource_uid()


# -- the metrics -----------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The daily quota on (as with a real key), so that its series exist."""
    return make_settings(upstream_daily_quota=25)


async def test_every_metric_in_the_dashboard_is_exported(
    dashboard: dict[str, Any], client: httpx.AsyncClient
) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    exported: set[str] = set()
    histograms: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        # The parser names counter families without `_total`; queries use the sample name.
        exported.add(f"{family.name}_total" if family.type == "counter" else family.name)
        if family.type == "histogram":
            histograms.add(family.name)
    assert "stock_api_circuit_breaker_state" in exported  # the exposition was read at all

    referenced = {
        name for panel in data_panels(dashboard) for e in exprs(panel) for name in metric_names(e)
    }
    unknown = set()
    for name in referenced:
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if name not in exported and base not in histograms:
            unknown.add(name)
    assert not unknown, f"the dashboard queries metrics the service does not export: {unknown}"
    assert len(referenced) >= 7


def promql_rules(dashboard: dict[str, Any]) -> str:
    """Every expression as a recording rule, with Grafana's variables given plain values."""
    rules = []
    for panel in data_panels(dashboard):
        for index, expr in enumerate(exprs(panel)):
            concrete = expr.replace("$__rate_interval", "1m").replace("$breaker", ".*")
            assert "$" not in concrete, f"unhandled variable in {expr!r}"
            rules.append({"record": f"panel_{panel['id']}_{index}", "expr": concrete})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_every_expression_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(promql_rules(dashboard), encoding="utf-8")
    result = subprocess.run(
        [prometheus_tool("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the charts the runbook relies on --------------------------------------------------------


def squeeze(expr: str) -> str:
    return "".join(expr.split())


def quantiles(panel: Panel, bucket: str) -> set[float]:
    return {
        float(match.group(1))
        for expr in exprs(panel)
        if bucket in metric_names(expr)
        for match in QUANTILE.finditer(expr)
    }


def uses(metric: str, *fragments: str) -> Callable[[Panel], bool]:
    """A panel with a query on `metric` whose text has every fragment (whitespace ignored)."""

    def check(panel: Panel) -> bool:
        return any(
            metric in metric_names(expr) and all(squeeze(f) in squeeze(expr) for f in fragments)
            for expr in exprs(panel)
        )

    return check


REQUIRED_CHARTS: dict[str, tuple[Callable[[Panel], bool], str | None]] = {
    "state timeline": (
        lambda panel: (
            panel["type"] == "state-timeline" and uses("stock_api_circuit_breaker_state")(panel)
        ),
        None,
    ),
    "daily quota remaining": (uses("stock_api_upstream_quota_remaining"), "none"),
    "throttled calls by reason": (
        uses("stock_api_upstream_throttled_calls_total", "rate(", "by (reason)"),
        "reqps",
    ),
    "bulkhead in flight": (uses("stock_api_upstream_calls_in_flight", "by (bulkhead)"), "none"),
    "state changes": (uses("stock_api_circuit_breaker_state_changes_total", "increase("), None),
    "rejected calls": (uses("stock_api_circuit_breaker_rejected_calls_total", "rate("), "reqps"),
    "upstream calls by outcome": (
        uses("stock_api_upstream_calls_total", "rate(", "outcome"),
        "reqps",
    ),
    "upstream latency p50/p95/p99": (
        lambda panel: (
            quantiles(panel, "stock_api_upstream_request_duration_seconds_bucket")
            >= {0.5, 0.95, 0.99}
        ),
        "s",
    ),
    "cache hit ratio": (
        uses("stock_api_cache_requests_total", 'result="hit"', ")/sum("),
        "percentunit",
    ),
    "request rate by route": (
        lambda panel: any(
            "stock_api_http_requests_total" in metric_names(e)
            and squeeze(e).startswith("sumby(route)(rate(")
            and "/" not in e  # a rate, not a ratio
            for e in exprs(panel)
        ),
        "reqps",
    ),
    "5xx ratio by route": (
        uses("stock_api_http_requests_total", 'status=~"5.."', ")/sum by (route)"),
        "percentunit",
    ),
    "HTTP latency p99 by route": (
        lambda panel: (
            0.99 in quantiles(panel, "stock_api_http_request_duration_seconds_bucket")
            and "by(le,route)" in "".join(squeeze(e) for e in exprs(panel))
        ),
        "s",
    ),
}


@pytest.mark.parametrize("chart", list(REQUIRED_CHARTS))
def test_required_chart_is_present(dashboard: dict[str, Any], chart: str) -> None:
    matches, unit = REQUIRED_CHARTS[chart]
    found = [panel for panel in data_panels(dashboard) if matches(panel)]
    assert found, f"no panel shows the {chart}"
    if unit is not None:
        units = {panel["fieldConfig"]["defaults"].get("unit") for panel in found}
        assert unit in units, f"{chart}: unit {units}, expected {unit}"


@pytest.mark.parametrize("panel_type", ["state-timeline", "stat"])
def test_breaker_state_panels_name_the_states(dashboard: dict[str, Any], panel_type: str) -> None:
    (panel,) = [
        p
        for p in data_panels(dashboard)
        if p["type"] == panel_type and uses("stock_api_circuit_breaker_state")(p)
    ]
    assert 'breaker=~"$breaker"' in exprs(panel)[0]
    texts = {
        value: option["text"]
        for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        if mapping["type"] == "value"
        for value, option in mapping["options"].items()
    }
    assert texts == STATE_TEXTS


# -- provisioning ----------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["name"] == "Prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_datasource_time_interval_is_the_scrape_interval() -> None:
    """$__rate_interval is built on it: a shorter one than the scrape interval leaves gaps."""
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    scrape_interval = load_yaml(PROMETHEUS_CONFIG).get("global", {}).get("scrape_interval", "1m")
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_dashboard_provider_loads_the_dashboards_directory() -> None:
    (provider,) = load_yaml(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
