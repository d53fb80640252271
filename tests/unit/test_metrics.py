"""The daemon's metrics against Prometheus' naming rules and an operator's expectations.

The rules (prometheus.io, "Metric and label naming", and what ``promtool check metrics``
lints; promtool itself is not on this machine): names match the data model's pattern and
carry the application prefix; a counter's samples end in ``_total`` and nothing else's
does; a name with a unit uses the base unit (seconds, bytes), as a suffix; label names
match their pattern and never start with ``__``; an info metric ends in ``_info``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from service.daemon.metrics import RETRY_STEPS, DaemonMetrics
from service.domain.outcomes import DEAD_LETTER_REASONS

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Non-base units and unit words that must not end a name (use seconds, bytes, ratios).
NON_BASE_UNITS = ("milliseconds", "microseconds", "minutes", "hours", "ms", "kb", "mb", "percent")
SERVICE = Path(__file__).parents[2] / "service"


def _families(metrics: DaemonMetrics) -> list[Metric]:
    return list(metrics.registry.collect())


def test_every_metric_name_follows_prometheus_naming_rules() -> None:
    families = _families(DaemonMetrics())
    ours = [f for f in families if f.name.startswith("consumergen_")]
    assert len(ours) >= 14
    for family in families:
        assert METRIC_NAME.match(family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        words = family.name.split("_")
        assert not set(words) & set(NON_BASE_UNITS), f"{family.name}: use base units"
        if {"duration", "latency"} & set(words):
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert METRIC_NAME.match(sample.name), sample.name
            for label in sample.labels:
                assert LABEL_NAME.match(label) and not label.startswith("__"), label
            if family.type == "counter":
                assert sample.name == f"{family.name}_total", sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
        if family.type == "info":
            assert family.samples[0].name.endswith("_info")
    for family in families:
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("consumergen_"), f"{family.name}: no application prefix"


def test_no_created_series_and_the_platform_collectors_are_there() -> None:
    text = generate_latest(DaemonMetrics().registry).decode()
    assert "_created" not in text
    # What a scraper parses is the same set of families.
    served = {f.name for f in text_string_to_metric_families(text)}
    assert "consumergen_events" in served and "consumergen_build_info" in served
    names = {f.name for f in _families(DaemonMetrics())}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert "python_gc_collections" in names


def test_label_values_are_preset_so_every_series_exists_at_zero() -> None:
    registry = DaemonMetrics().registry
    for reason in DEAD_LETTER_REASONS:
        value = registry.get_sample_value("consumergen_dead_lettered_total", {"reason": reason})
        assert value == 0, reason
    for kind in ("database", "broker"):
        labels = {"kind": kind}
        value = registry.get_sample_value("consumergen_infrastructure_failures_total", labels)
        assert value == 0, kind
    for outcome, reason in [("applied", ""), ("rejected", "generation_conflict")]:
        value = registry.get_sample_value(
            "consumergen_events_total", {"outcome": outcome, "reason": reason}
        )
        assert value == 0, (outcome, reason)


def test_every_retry_step_the_code_names_is_preset() -> None:
    """A step added to the code and not to ``RETRY_STEPS`` would be a series that
    appears only at its first retry."""
    source = "\n".join(p.read_text() for p in SERVICE.rglob("*.py"))
    named = set(re.findall(r'retry_scope\([^,]+,\s*"([a-z_]+)"', source))
    named |= set(re.findall(r'_retry_infrastructure\(\s*"([a-z_]+)"', source))
    assert named, "the patterns no longer find the steps: update this test"
    assert named <= set(RETRY_STEPS), named - set(RETRY_STEPS)


def test_build_info_names_the_installed_version() -> None:
    registry = DaemonMetrics().registry
    [family] = [f for f in _families(DaemonMetrics()) if f.name == "consumergen_build"]
    labels = family.samples[0].labels
    assert labels["version"] and labels["version"] != "0+unknown"
    assert registry.get_sample_value("consumergen_build_info", labels) == 1


def test_ready_is_read_from_readiness_at_each_scrape() -> None:
    metrics = DaemonMetrics()
    state = {"ready": False}
    metrics.bind_readiness(lambda: state["ready"])
    assert metrics.registry.get_sample_value("consumergen_ready") == 0
    state["ready"] = True
    assert metrics.registry.get_sample_value("consumergen_ready") == 1


def test_latency_is_from_occurred_at_to_commit_and_never_negative() -> None:
    metrics = DaemonMetrics()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    metrics.observe_committed([now - timedelta(seconds=7), now + timedelta(seconds=3)], now)
    registry = metrics.registry
    assert registry.get_sample_value("consumergen_event_latency_seconds_count") == 2
    assert registry.get_sample_value("consumergen_event_latency_seconds_sum") == 7
    # The event from a producer whose clock runs ahead counts as 0, in the first bucket.
    first = registry.get_sample_value("consumergen_event_latency_seconds_bucket", {"le": "0.005"})
    assert first == 1
