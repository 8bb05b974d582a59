"""The chart's alerts and Grafana dashboard: the rules pass the real promtool's checks and unit
tests (tests/alerts/rules_test.yaml), and every query names only metrics the operator exports.

No cluster: helm renders the chart, promtool (built from Go modules by `make promtool`)
evaluates the rules over synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from chartkit import HELM
from docskit import section
from llmconn.controller.metrics import LAG_BUCKETS, Metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmconn"
PROMTOOL = ROOT / ".local" / "bin" / "promtool"
RULES_TEST = ROOT / "tests" / "alerts" / "rules_test.yaml"
DASHBOARD = CHART / "dashboards" / "llmconn.json"
# The values tests/alerts/rules_test.yaml expects the rules rendered with.
RULE_VALUES = ["--set", "metrics.prometheusRule.enabled=true"]
RULE_VALUES += ["--set", "metrics.prometheusRule.alertLabels.team=platform"]


@pytest.fixture(scope="module")
def promtool(build_env: dict[str, str]) -> Path:
    """promtool, built by `make promtool` from the pinned Prometheus module."""
    subprocess.run(
        ["make", "-s", "promtool"], cwd=ROOT, check=True, capture_output=True, env=build_env
    )
    assert PROMTOOL.exists()
    return PROMTOOL


def render_rules(helm_env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            *(str(HELM), "template", "llmconn", str(CHART), "--namespace", "llmconn-system"),
            *(*RULE_VALUES, *extra, "--show-only", "templates/prometheusrule.yaml"),
        ],
        capture_output=True,
        text=True,
        env=helm_env,
        check=True,
    ).stdout
    rule: dict[str, Any] = yaml.safe_load(out)
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def run_unit_tests(
    promtool: Path, rules: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    return subprocess.run(
        [str(promtool), "test", "rules", "rules_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_rules_pass_promtool_check(
    promtool: Path, helm_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(render_rules(helm_env)))
    done = subprocess.run(
        [str(promtool), "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_alert_unit_tests(promtool: Path, helm_env: dict[str, str], tmp_path: Path) -> None:
    done = run_unit_tests(promtool, render_rules(helm_env), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_unit_tests_fail_for_other_thresholds(
    promtool: Path, helm_env: dict[str, str], tmp_path: Path
) -> None:
    """The unit tests hold the thresholds: rules rendered with others fail them."""
    rules = render_rules(
        helm_env,
        "--set",
        "metrics.prometheusRule.notReadyFor=20m",
        "--set-json",
        "metrics.prometheusRule.lagSeconds=29.9",
    )
    done = run_unit_tests(promtool, rules, tmp_path)
    assert done.returncode == 1
    failed = set(re.findall(r"alertname: (\w+)", done.stdout + done.stderr))
    assert failed == {"LLMConnectionNotReady", "LLMConnOperatorLagging"}


def test_target_selector_replaces_the_service_monitors_job(helm_env: dict[str, str]) -> None:
    default = render_rules(helm_env)["groups"][1]["rules"]
    assert (
        default[0]["expr"] == 'absent(up{job="llmconn-metrics", namespace="llmconn-system"} == 1)'
    )
    mine = render_rules(
        helm_env, "--set-string", 'metrics.prometheusRule.targetSelector=job="llmconn"'
    )["groups"][1]["rules"]
    assert mine[0]["expr"] == 'absent(up{job="llmconn"} == 1)'
    assert 'llmconn_schedule_lag_seconds_bucket{job="llmconn"}[10m]' in mine[1]["expr"]


def test_lag_threshold_stays_under_the_largest_bucket() -> None:
    """histogram_quantile never exceeds the largest finite bucket: a threshold at or above it
    could never fire, so the schema refuses one."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    rule = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]
    assert rule["lagSeconds"]["exclusiveMaximum"] == max(LAG_BUCKETS)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["metrics"]["prometheusRule"]["lagSeconds"] < max(LAG_BUCKETS)


# -- metric names ---------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier that is not a
    function, a keyword, a label (in matchers or groupings) or inside a string or range."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_names_finds_selectors_only() -> None:
    expr = (
        'sum by (le, provider) (rate(a_bucket{x="y", le!="b"}[$__rate_interval])) '
        '/ on (ns) group_left (name) b or absent(c{d="e"} == 1) > bool 0.99'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def exported_names() -> set[str]:
    """The sample names the operator's registry exposes, with every metric touched once."""
    m = Metrics()
    m.validation("openai", "success", "Validated", 0.1)
    m.set_ready("ns", "conn", "openai", "True")
    m.last_validation("ns", "conn", "openai", 1.0)
    m.set_in_flight(1)
    m.set_queue_depth(1)
    m.schedule_lag(0.1)
    m.set_connections(1)
    m.write_delayed("ns", 0.5)
    m.event_posted("Warning")
    m.event_held("ns")
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_exported_names_cover_every_metric() -> None:
    names = exported_names()
    assert {"llmconn_validations_total", "llmconn_schedule_lag_seconds_bucket"} <= names
    assert "llmconn_connection_ready" in names


def test_alerts_use_only_exported_metrics(helm_env: dict[str, str]) -> None:
    used = {
        name
        for group in render_rules(helm_env)["groups"]
        for rule in group["rules"]
        for name in metric_names(rule["expr"])
    }
    # `up` is Prometheus' own series for each scrape target.
    assert used - {"up"} <= exported_names()
    assert "llmconn_schedule_lag_seconds_bucket" in used


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    used = {name for expr in dashboard_queries() for name in metric_names(expr)}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", var["query"]["query"])
            assert metric, var["query"]
            used.add(metric.group(1))
    exported = exported_names()
    assert used <= exported, used - exported
    # Every metric the operator exports is on the dashboard in some form.
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    assert families <= shown, families - shown


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule promtool
    parses (a syntax error fails the check)."""
    grafana = {"$__rate_interval": "5m", "$namespace": ".*", "$provider": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    done = subprocess.run(
        [str(promtool), "check", "rules", "dashboard.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def docs_table(heading: str) -> list[list[str]]:
    rows = [line for line in section(heading).splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


def test_docs_list_the_dashboards_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert docs_table("Dashboard") == [
        [p["title"], p["type"], p["description"]] for p in dash["panels"]
    ]


def test_docs_list_the_alerts(helm_env: dict[str, str]) -> None:
    rules = [r for g in render_rules(helm_env)["groups"] for r in g["rules"]]
    assert [row[:2] for row in docs_table("Alerts")] == [
        [f"`{r['alert']}`", r["labels"]["severity"]] for r in rules
    ]
