"""deploy/prometheus alert rules and the deploy/grafana dashboard, checked statically.

promtool is not on this machine: the rule file's structure is checked here as
``promtool check rules`` would (groups, unique alert names, a parseable ``for``,
severity and summary), and every expression in both files is parsed by a real PromQL
parser (``tests/support/promql.py``).  That the metrics they name exist on a live
daemon is ``tests/daemon/test_dashboards.py``'s part.
"""

from __future__ import annotations

import re

import promql_parser
import pytest

from tests.support.promql import (
    alert_rules,
    dashboard,
    dashboard_expressions,
    metric_names,
    rule_expressions,
)

#: The situations issue 15 asks alerts for, by the metric that shows each.
REQUIRED = {
    "lag growing": "consumergen_consumer_lag",
    "dead letters": "consumergen_dead_lettered_total",
    "not ready": "consumergen_ready",
    "infrastructure failures": "consumergen_infrastructure_failures_total",
    "stalled partitions": "consumergen_stalled_partitions",
    "stalled fetch loop": "consumergen_fetch_loop_stalled",
}


def test_the_rule_file_has_the_structure_prometheus_loads() -> None:
    rules = alert_rules()
    assert set(rules) == {"groups"}
    names: list[str] = []
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules", "labels", "limit"}
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
            names.append(rule["alert"])
            if "for" in rule:
                promql_parser.parse_duration(rule["for"])  # raises when not a duration
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert len(names) == len(set(names)), "alert names repeat"


def test_every_rule_expression_parses_and_the_required_alerts_exist() -> None:
    named = set()
    for expr in rule_expressions():
        names = metric_names(expr)
        assert names, f"selects no metric: {expr}"
        named |= names
    for situation, metric in REQUIRED.items():
        assert metric in named, f"no alert on {situation} ({metric})"


def test_the_parser_refuses_broken_promql() -> None:
    """The parse checks above are not vacuous."""
    for broken in ("sum by (topic (rate(x[5m]))", "rate(x[5 m])", "x >", "histogram_quantile(0.9"):
        with pytest.raises(ValueError):
            metric_names(broken)


def test_every_dashboard_query_parses_and_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']} overlaps another panel"
                cells.add(cell)
    for expr in dashboard_expressions():
        assert metric_names(expr), f"selects no metric: {expr}"
    everything = set().union(*(metric_names(e) for e in dashboard_expressions()))
    for metric in (*REQUIRED.values(), "consumergen_events_total", "process_cpu_seconds_total"):
        assert metric in everything, metric
    assert "consumergen_event_latency_seconds_bucket" in everything
    assert "consumergen_batches_in_progress" in everything
