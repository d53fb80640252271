"""The PromQL in deploy/: the expressions of the Grafana dashboard and the Prometheus
alert rules, parsed with a real PromQL parser (``promql-parser``, a binding of the Rust
parser that follows Prometheus' grammar), and the metric names they select."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "consumergen-dashboard.json"
ALERT_RULES = DEPLOY / "prometheus" / "consumergen-alerts.yaml"

#: What Grafana puts in place of its variables before a query reaches Prometheus.
_GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def _grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, _GRAFANA_VARIABLES.get(name, match.group(0)))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_expressions() -> list[str]:
    """Every panel target's and template variable's query, as Prometheus receives it."""
    board = dashboard()
    variables = {v["name"]: ".*" for v in board["templating"]["list"] if v["type"] == "query"}
    exprs = [
        _grafana_to_promql(target["expr"], variables)
        for panel in board["panels"]
        for target in panel["targets"]
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC, LABEL) is Grafana's, not PromQL: its metric is a selector.
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            exprs.append(match.group(1))
    return exprs


def alert_rules() -> dict[str, Any]:
    return dict(yaml.safe_load(ALERT_RULES.read_text()))


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in alert_rules()["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (raises ValueError when it does not parse)."""
    names: set[str] = set()

    def visit(node: object, *_: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
