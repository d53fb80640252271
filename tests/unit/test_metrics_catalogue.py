"""The daemon's /metrics catalogue (``service.daemon.metrics``): each series' name, type,
label names, histogram buckets and help text, as the dashboards (``deploy/grafana``),
the alert rules (``deploy/prometheus``) and an operator reading Prometheus see them.

A dashboard or an alert that names a series, a label or a bucket bound breaks silently
when one changes, and the help text is what an operator reads next to a graph: so a
change to any of them must be made here too, on purpose.  (The values the series count
are held by the tests of what counts them: ``test_daemon_reports.py``,
``test_partition_worker.py``, ``test_stages.py``, ``test_metrics.py``.)"""

from __future__ import annotations

from typing import Any

from service.daemon.metrics import DaemonMetrics, event_label_values
from service.domain.outcomes import REASONS_BY_OUTCOME, REJECTED_REASONS, OutcomeKind

# name: (type, label names, finite bucket bounds, help)
CATALOGUE: dict[str, tuple[str, tuple[str, ...], tuple[float, ...], str]] = {
    "consumergen_stage_seconds": (
        "counter",
        ("stage",),
        (),
        "Wall seconds batches spent in each stage.",
    ),
    "consumergen_stage_cpu_seconds": (
        "counter",
        ("stage",),
        (),
        ("Event-loop CPU seconds of each stage's own work (service.daemon.stages)."),
    ),
    "consumergen_events": (
        "counter",
        ("outcome", "reason"),
        (),
        "Events by outcome and reason.",
    ),
    "consumergen_cas_retries": (
        "counter",
        (),
        (),
        "CAS attempts beyond the first, summed over events.",
    ),
    "consumergen_dead_lettered": (
        "counter",
        ("reason",),
        (),
        "Records written to the dead-letter topic.",
    ),
    "consumergen_infrastructure_failures": (
        "counter",
        ("kind",),
        (),
        "Database or broker failures that paused a partition.",
    ),
    "consumergen_retries": (
        "counter",
        ("step",),
        (),
        ("Retries of an infrastructure failure scheduled by stamina, by the step retried."),
    ),
    "consumergen_replies_refused": (
        "counter",
        (),
        (),
        (
            "Requests whose outcome was not sent as a reply: they named a reply "
            "topic this daemon does not allow (CONSUMERGEN_REPLY_TOPIC, "
            "CONSUMERGEN_ALLOWED_REPLY_TOPICS); their outcome records still go to "
            "the outcomes topic."
        ),
    ),
    "consumergen_batch_size": (
        "histogram",
        (),
        (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0),
        "Events per applied batch.",
    ),
    "consumergen_group_commit_batches": (
        "histogram",
        (),
        (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0),
        (
            "Batches (of as many partitions) per group-commit transaction, on a "
            "single-writer store (service.apply.group)."
        ),
    ),
    "consumergen_batch_duration_seconds": (
        "histogram",
        (),
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        "Time from taking a batch to committing its offset.",
    ),
    "consumergen_event_latency_seconds": (
        "histogram",
        (),
        (
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            30.0,
            60.0,
            300.0,
            900.0,
            3600.0,
        ),
        (
            "End to end: from a valid event's occurred_at to the commit of its "
            "offset (its outcome durable); producer clock skew included, negatives "
            "counted as 0."
        ),
    ),
    "consumergen_consumer_lag": (
        "gauge",
        ("partition", "topic"),
        (),
        "High watermark minus committed offset, per assigned partition.",
    ),
    "consumergen_paused_partitions": (
        "gauge",
        (),
        (),
        "Partitions paused by an infrastructure failure.",
    ),
    "consumergen_assigned_partitions": (
        "gauge",
        (),
        (),
        "Partitions assigned to this daemon.",
    ),
    "consumergen_stalled_partitions": (
        "gauge",
        (),
        (),
        (
            "Assigned, unpaused partitions with lag that have not committed for "
            "longer than CONSUMERGEN_STALL_SECONDS (service.daemon.stalls); /livez "
            "fails meanwhile."
        ),
    ),
    "consumergen_fetch_loop_stalled": (
        "gauge",
        (),
        (),
        (
            "1 while the fetch loop has not polled for longer than "
            "CONSUMERGEN_STALL_SECONDS (the broker not being away); /livez fails "
            "meanwhile."
        ),
    ),
    "consumergen_batches_in_progress": (
        "gauge",
        (),
        (),
        "Batches taken from a partition and not yet committed (or abandoned).",
    ),
    "consumergen_build": (
        "info",
        ("python_version", "version"),
        (),
        "The running service's version and Python.",
    ),
    "consumergen_ready": (
        "gauge",
        (),
        (),
        ("1 while /readyz answers 200 (able to work), else 0; read at each scrape."),
    ),
}


def _catalogue(metrics: DaemonMetrics) -> dict[str, tuple[Any, ...]]:
    metrics.lag.labels("events", "0").set(0)  # the one labelled series with no preset
    found = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("consumergen_"):
            continue
        labels = tuple(sorted({name for s in family.samples for name in s.labels} - {"le"}))
        bounds = sorted({float(s.labels["le"]) for s in family.samples if "le" in s.labels})
        finite = tuple(bound for bound in bounds if bound != float("inf"))
        found[family.name] = (family.type, labels, finite, family.documentation)
    return found


def test_the_metrics_catalogue_is_what_dashboards_alerts_and_operators_read() -> None:
    found = _catalogue(DaemonMetrics())
    assert sorted(found) == sorted(CATALOGUE)
    for name, expected in CATALOGUE.items():
        assert found[name] == expected, name


def test_histograms_end_in_an_infinite_bucket_and_nothing_else_is_exported_twice() -> None:
    metrics = DaemonMetrics()
    histograms = [f for f in metrics.registry.collect() if f.type == "histogram"]
    assert {f.name for f in histograms} >= {
        "consumergen_batch_size",
        "consumergen_batch_duration_seconds",
        "consumergen_event_latency_seconds",
        "consumergen_group_commit_batches",
    }
    for family in histograms:
        assert any(s.labels.get("le") == "+Inf" for s in family.samples), family.name
    names = [f.name for f in metrics.registry.collect()]
    assert len(names) == len(set(names))


def test_the_event_series_label_pairs_are_exactly_the_outcomes_the_contract_can_report() -> None:
    """Every ``(outcome, reason)`` pair ``consumergen_events_total`` is created with: a
    dashboard's legend and an alert's matcher read these; a reason outside the contract
    would be a series that never moves."""
    expected = {(OutcomeKind.APPLIED.value, ""), (OutcomeKind.DUPLICATE.value, "")}
    expected |= {(OutcomeKind.DUPLICATE.value, r.value) for r in REJECTED_REASONS}
    for kind, reasons in REASONS_BY_OUTCOME.items():
        expected |= {(kind.value, r.value) for r in reasons}
    pairs = event_label_values()
    assert set(pairs) == expected
    assert len(pairs) == len(expected)  # each once
