"""prometheus/: the config and the alerting rules, checked by promtool and against the service.

promtool (Debian's prometheus package) runs for real; when it is missing these tests fail,
they never skip. The alerts are also checked against docs/runbook.md (every runbook_url leads
to a heading), against prometheus/alerts_test.yml (every alert has a case where it fires and
one where it stays silent), and against the service's own /metrics (every metric and label
value an alert selects is one the service exports).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import make_settings, prometheus_tool
from tests.helpers import SimulatorControl, scrape
from tests.servers import ROOT

CONFIG = "prometheus/prometheus.yml"
ALERTS = "prometheus/alerts.yml"
ALERTS_TEST = "prometheus/alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/stock-service/stock-service/blob/main/docs/runbook.md"

GROUP = "stock-service"
JOB = "stock-service"
APP_SERVICE, APP_PORT = "stock-service", 8080
EXPECTED_ALERTS = {
    "CircuitBreakerFlapping": "warning",
    "CircuitBreakerStuckOpen": "critical",
    "UpstreamErrorRatioHigh": "warning",
    "UpstreamRateLimited": "warning",
    "UpstreamQuotaNearlySpent": "warning",
    "StockServiceHigh5xxRatio": "warning",
    "StockServiceDown": "critical",
    "StateStoreDown": "critical",
}
ANNOTATIONS = frozenset({"summary", "description", "runbook_url"})
# Series Prometheus makes itself for every target: not in the service's exposition.
SYNTHETIC_METRICS = frozenset({"up"})
# Target labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


# -- helpers --------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository's root, as `make` and CI do."""
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str | None
    labels: dict[str, str]
    annotations: dict[str, str]


def load_alerts() -> list[Alert]:
    groups = load_yaml(ROOT / ALERTS)["groups"]
    return [
        Alert(
            name=rule["alert"],
            expr=rule["expr"],
            duration=rule.get("for"),
            labels=rule.get("labels") or {},
            annotations=rule.get("annotations") or {},
        )
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    ]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def markdown_headings(text: str) -> list[str]:
    """The ATX headings of `text`, outside fenced code blocks."""
    headings: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            headings.append(match.group(1))
    return headings


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


@dataclass(frozen=True)
class Expression:
    selectors: tuple[Selector, ...]
    grouping_labels: frozenset[str]


GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{(?P<matchers>[^}]*)\}")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
RANGE = re.compile(r"\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w:])(?!\s*\()")
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right"}
)


def parse_expression(expr: str) -> Expression:
    """The metric selectors and grouping labels of a PromQL expression. Good enough for the
    expressions in alerts.yml: function and aggregation names are the identifiers followed
    by '(', and label matchers never contain braces."""
    grouping = frozenset(
        label.strip()
        for labels in GROUPING.findall(expr)
        for label in labels.split(",")
        if label.strip()
    )
    rest = GROUPING.sub(" ", expr)
    selectors = [
        Selector(
            match["metric"],
            tuple((m["label"], m["op"], m["value"]) for m in MATCHER.finditer(match["matchers"])),
        )
        for match in SELECTOR.finditer(rest)
    ]
    rest = RANGE.sub(" ", SELECTOR.sub(" ", rest))
    selectors += [Selector(name, ()) for name in IDENTIFIER.findall(rest) if name not in KEYWORDS]
    return Expression(tuple(selectors), grouping)


def matches(labels: dict[str, str], label: str, op: str, value: str) -> bool:
    actual = labels.get(label, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    found = re.fullmatch(value, actual) is not None
    return found if op == "=~" else not found


def literal_alternatives(op: str, value: str) -> list[str]:
    """The values a matcher names literally: `x` in `="x"` or `!="x"`, `a`, `b` in
    `=~"a|b"` or `!~"a|b"`; none for a regex that is more than an alternation of words."""
    if op in ("=", "!="):
        return [value]
    if re.fullmatch(r"\w+(?:\|\w+)*", value):
        return value.split("|")
    return []


# -- promtool -------------------------------------------------------------------------------


def test_promtool_check_config_passes() -> None:
    result = promtool("check", "config", CONFIG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output


def test_promtool_check_rules_passes_without_warnings() -> None:
    result = promtool("check", "rules", ALERTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(load_alerts())} rules found" in result.stdout, output
    assert "warning" not in output.lower(), output
    assert result.stderr == "", output


def test_promtool_test_rules_passes() -> None:
    result = promtool("test", "rules", ALERTS_TEST)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in result.stdout, output


def test_promtool_test_rules_catches_a_broken_alert(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with a `for` shortened they fail."""
    alerts = (ROOT / ALERTS).read_text(encoding="utf-8")
    assert alerts.count("for: 10m") == 1
    (tmp_path / "alerts.yml").write_text(alerts.replace("for: 10m", "for: 5m"), encoding="utf-8")
    shutil.copy(ROOT / ALERTS_TEST, tmp_path / "alerts_test.yml")

    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))

    assert result.returncode != 0, result.stdout + result.stderr
    assert "CircuitBreakerStuckOpen" in result.stdout + result.stderr


# -- the files ------------------------------------------------------------------------------


def test_prometheus_yml_scrapes_the_service_and_loads_the_alerts() -> None:
    config = load_yaml(ROOT / CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs[JOB]["dns_sd_configs"]  # every replica of the compose service
    assert (discovery["names"], discovery["type"], discovery["port"]) == (
        [APP_SERVICE],
        "A",
        APP_PORT,
    )
    assert jobs[JOB].get("metrics_path", "/metrics") == "/metrics"

    # Every job an alert selects is one that is scraped.
    for alert in load_alerts():
        for selector in parse_expression(alert.expr).selectors:
            for label, op, value in selector.matchers:
                if label == "job":
                    assert op == "=", f"{alert.name}: select the job by name"
                    assert value in jobs, f"{alert.name} selects job {value!r}, not scraped"


def test_alerts_yml_defines_the_expected_alerts() -> None:
    groups = load_yaml(ROOT / ALERTS)["groups"]
    assert [group["name"] for group in groups] == [GROUP]
    alerts = load_alerts()
    assert [alert.name for alert in alerts] == list(EXPECTED_ALERTS)
    for alert in alerts:
        assert alert.duration, f"{alert.name} has no `for`: one bad scrape would page"


def test_every_alert_has_severity_summary_description_and_runbook_url() -> None:
    for alert in load_alerts():
        assert alert.labels.get("severity") == EXPECTED_ALERTS[alert.name], alert
        missing = ANNOTATIONS - alert.annotations.keys()
        assert not missing, f"{alert.name} lacks the annotations {sorted(missing)}"
        for name in ANNOTATIONS:
            assert alert.annotations[name].strip(), f"{alert.name}: {name} is empty"
        assert alert.annotations["runbook_url"] == f"{RUNBOOK_URL}#{alert.name.lower()}"


def test_every_runbook_url_leads_to_a_runbook_heading() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    headings = markdown_headings(text)
    anchors = [github_anchor(heading) for heading in headings]
    assert len(set(anchors)) == len(anchors), f"duplicate headings: {headings}"

    for alert in load_alerts():
        assert alert.name in headings, f"docs/runbook.md has no heading {alert.name!r}"
        url = alert.annotations["runbook_url"]
        assert url.startswith(RUNBOOK_URL + "#"), url
        anchor = url.partition("#")[2]
        assert anchor in anchors, f"{alert.name}: no heading in docs/runbook.md for #{anchor}"

    # The runbook's own links between sections resolve too.
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, f"docs/runbook.md links to a missing section #{anchor}"


def test_every_alert_fires_and_stays_silent_in_alerts_test_yml() -> None:
    tests = load_yaml(ROOT / ALERTS_TEST)
    assert tests["rule_files"] == ["alerts.yml"]
    assert tests["evaluation_interval"] == "1m"
    alerts = {alert.name: alert for alert in load_alerts()}
    firing: dict[str, int] = dict.fromkeys(alerts, 0)
    silent: dict[str, int] = dict.fromkeys(alerts, 0)

    for case in tests["tests"]:
        for check in case.get("alert_rule_test") or []:
            name = check["alertname"]
            # promtool passes an empty exp_alerts for an alert that does not exist.
            assert name in alerts, f"{case['name']!r} tests an unknown alert {name!r}"
            expected = check.get("exp_alerts") or []
            if not expected:
                silent[name] += 1
                continue
            firing[name] += 1
            for alert in expected:
                labels, annotations = alert.get("exp_labels", {}), alert.get("exp_annotations", {})
                assert labels.get("severity") == alerts[name].labels["severity"], case["name"]
                assert annotations.keys() == alerts[name].annotations.keys(), (
                    f"{case['name']!r}: check every annotation of {name} as it renders"
                )

    assert not [name for name, count in firing.items() if not count], f"never fire: {firing}"
    assert not [name for name, count in silent.items() if not count], f"never silent: {silent}"


def test_the_expression_parser_finds_metrics_matchers_and_grouping() -> None:
    parsed = parse_expression(
        'sum by (function) (rate(a_total{outcome!~"x|y"}[5m])) / sum(rate(a_total[5m])) > 0.25'
        ' and on() up{job="j"} == 1'
    )
    assert parsed.grouping_labels == {"function"}
    assert literal_alternatives("!~", "x|y") == ["x", "y"]
    assert literal_alternatives("=~", "5..") == []
    assert set(parsed.selectors) == {
        Selector("a_total", (("outcome", "!~", "x|y"),)),
        Selector("a_total", ()),
        Selector("up", (("job", "=", "j"),)),
    }


# -- against the service's exposition -------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The daily quota on (as with a real key), so that its series exist."""
    return make_settings(upstream_daily_quota=25)


async def test_alerts_select_only_metrics_and_labels_the_service_exports(
    client: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    # Traffic that makes every kind of series exist: successes, upstream failures, 5xx answers.
    assert (await client.get("/stock/IBM")).status_code == 200
    assert (await client.get("/stock/IBM/quote")).status_code == 200
    await sim.set_fault(FaultMode.DOWN)
    assert (await client.get("/stock/DOWN")).status_code == 502
    metrics = await scrape(client)

    series: dict[str, list[dict[str, str]]] = {}
    for name, labels in metrics.samples:
        series.setdefault(name, []).append(dict(labels))

    for alert in load_alerts():
        expression = parse_expression(alert.expr)
        assert expression.selectors, f"{alert.name}: no metric found in {alert.expr!r}"
        label_names: set[str] = set(TARGET_LABELS)
        for selector in expression.selectors:
            where = f"{alert.name}: {selector}"
            if selector.metric in SYNTHETIC_METRICS:
                continue
            assert selector.metric in series, f"{where}: the service does not export it"
            exported = series[selector.metric]
            label_names.update(name for labels in exported for name in labels)
            # Prometheus adds the target labels at scrape time: the exposition has none.
            matchers = [m for m in selector.matchers if m[0] not in TARGET_LABELS]
            for label, op, value in matchers:
                assert any(label in labels for labels in exported), f"{where}: no {label!r}"
                assert any(matches(labels, label, op, value) for labels in exported), (
                    f"{where}: no exported series has {label}{op}{value!r}: {exported}"
                )
                # A misspelt value in `!=` or in an alternation would silently match nothing.
                values = {labels.get(label) for labels in exported}
                for literal in literal_alternatives(op, value):
                    assert literal in values, f"{where}: {label}={literal!r} is never exported"
            assert any(
                all(matches(labels, *matcher) for matcher in matchers) for labels in exported
            ), f"{where} selects no exported series"
        unknown = expression.grouping_labels - label_names
        assert not unknown, f"{alert.name} groups by labels no metric has: {sorted(unknown)}"
