"""The Grafana dashboard and the Prometheus alert rules in deploy/ query only metrics a node
exports (a renamed family breaks this test, not a dashboard nobody looks at), and the rules
pass ``promtool check rules`` and their own ``promtool test rules`` cases."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.metrics.sample import sample_registry

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "p2pagent-dashboard.json"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
#: Series Prometheus itself makes for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, templates)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    # grouping label lists: by (...), without (...), on (...), ignoring (...), group_x (...)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", expr):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def exported() -> set[str]:
    text = generate_latest(sample_registry().registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, grpc_method) "
        '(rate(p2pagent_rpc_handling_seconds_bucket{job=~"$job",x="a b"}[5m]))) '
        "/ on (instance) group_left(version) p2pagent_build_info > 0 and up"
    )
    assert metric_names(expr) == {
        "p2pagent_rpc_handling_seconds_bucket",
        "p2pagent_build_info",
        "up",
    }


def test_every_dashboard_query_names_an_exported_metric() -> None:
    have = exported()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= have, f"{sorted(names - have)} in {expr!r} is not exported by a node"


def test_the_dashboard_covers_every_concern() -> None:
    read = set().union(*(metric_names(e) for e in dashboard_exprs()))
    concerns = ("members", "membership", "rpc", "tasks", "state", "models", "inference")
    for prefix in (*concerns, "training", "generation"):
        assert any(n.startswith(f"p2pagent_{prefix}") for n in read), prefix


def test_label_values_the_dashboard_matches_are_exported() -> None:
    """A panel filtering on ``event="..."`` (or a regexp of such values) must name values a
    node exports: a renamed event would leave the panel silently empty."""
    text = generate_latest(sample_registry().registry).decode()
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for label, value in s.labels.items():
                values.setdefault(label, set()).add(value)
    checked = 0
    for expr in dashboard_exprs():
        for label, op, pattern in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', expr):
            if label == "job" or "$" in pattern:
                continue
            wanted = pattern.split("|") if op == "=~" else [pattern]
            assert set(wanted) <= values.get(label, set()), f"{label}={pattern!r} in {expr!r}"
            checked += 1
    assert checked >= 1


def test_a_misspelt_metric_is_caught() -> None:
    assert not metric_names("rate(p2pagent_tasks_complete_total[5m])") <= exported()


def test_every_alert_rule_names_an_exported_metric() -> None:
    have = exported() | SCRAPE_SERIES
    for expr in rule_exprs():
        names = metric_names(expr)
        assert names and names <= have, f"{sorted(names - have)} in {expr!r}"


def test_promtool_checks_and_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; CI installs it)")
    for args in (["check", "rules", RULES.name], ["test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(
            [promtool, *args],
            cwd=RULES.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
