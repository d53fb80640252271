"""Prometheus metrics of one daemon, on a registry of its own.

A registry per daemon (not the global one) lets tests run several daemons in one
process and read each one's numbers without interference.  What an operator expects of
an exporter is on it too: the process and platform collectors (``process_*``,
``python_*``), a ``consumergen_build_info``, no ``_created`` series (they double every
counter and histogram, and no dashboard reads them), and every label value the code can
produce set up front, so that a rate over ``consumergen_dead_lettered_total`` is 0
rather than missing before the first dead letter.

``tests/unit/test_metrics.py`` holds every metric name to Prometheus' naming rules;
``tests/daemon/test_dashboards.py`` holds the dashboard and alert rules under
``deploy/`` to the names a live daemon serves.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from service import __version__
from service.daemon.stages import StageClock
from service.domain.outcomes import (
    DEAD_LETTER_REASONS,
    REASONS_BY_OUTCOME,
    REJECTED_REASONS,
    OutcomeKind,
)

# A process-wide switch in prometheus_client (there is no per-registry one); the
# service serves no series that needs ``_created``.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: ``kind`` label values: what ``service.failures.infrastructure_kind`` returns for the
#: service's own parts (a new sink kind adds its value here).
INFRASTRUCTURE_KINDS = ("database", "broker")
#: ``step`` label values of ``consumergen_retries_total``: every ``retry_scope`` step
#: (``tests/unit/test_metrics.py`` checks the code names no other).
RETRY_STEPS = (
    "startup_database",
    "startup_broker",
    "fetch",
    "database",
    "dead_letter",
    "outcomes",
    "commit",
)
#: From an event's ``occurred_at`` to its offset commit: milliseconds on a quiet
#: daemon, minutes or hours while it catches up on a backlog.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip


def event_label_values() -> list[tuple[str, str]]:
    """Every ``(outcome, reason)`` pair ``consumergen_events_total`` can carry: applied
    with no reason; a duplicate re-reports its original's (applied or rejected); the
    other outcomes with their own reasons."""
    pairs = [(OutcomeKind.APPLIED.value, ""), (OutcomeKind.DUPLICATE.value, "")]
    pairs += [(OutcomeKind.DUPLICATE.value, r.value) for r in sorted(REJECTED_REASONS)]
    for kind, reasons in REASONS_BY_OUTCOME.items():
        pairs += [(kind.value, r.value) for r in sorted(reasons)]
    return pairs


@dataclass
class DaemonMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._counters(r)
        self._distributions(r)
        self._gauges(r)
        self._operator(r)

    def _counters(self, r: CollectorRegistry) -> None:
        # Per-stage time of the batches (service.daemon.stages): what the benchmark's
        # per-stage breakdown reads.
        self.stages = StageClock(
            Counter(
                "consumergen_stage_seconds",
                "Wall seconds batches spent in each stage.",
                ["stage"],
                registry=r,
            ),
            Counter(
                "consumergen_stage_cpu_seconds",
                "Event-loop CPU seconds of each stage's own work (service.daemon.stages).",
                ["stage"],
                registry=r,
            ),
        )
        self.events = Counter(
            "consumergen_events", "Events by outcome and reason.", ["outcome", "reason"], registry=r
        )
        for outcome, reason in event_label_values():
            self.events.labels(outcome, reason)
        self.cas_retries = Counter(
            "consumergen_cas_retries",
            "CAS attempts beyond the first, summed over events.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "consumergen_dead_lettered",
            "Records written to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        for reason in sorted(DEAD_LETTER_REASONS):
            self.dead_lettered.labels(reason.value)
        self.infrastructure_failures = Counter(
            "consumergen_infrastructure_failures",
            "Database or broker failures that paused a partition.",
            ["kind"],
            registry=r,
        )
        for kind in INFRASTRUCTURE_KINDS:
            self.infrastructure_failures.labels(kind)
        self.retries = Counter(
            "consumergen_retries",
            "Retries of an infrastructure failure scheduled by stamina, by the step retried.",
            ["step"],
            registry=r,
        )
        for step in RETRY_STEPS:
            self.retries.labels(step)
        self.replies_refused = Counter(
            "consumergen_replies_refused",
            "Requests whose outcome was not sent as a reply: they named a reply topic this "
            "daemon does not allow (CONSUMERGEN_REPLY_TOPIC, CONSUMERGEN_ALLOWED_REPLY_TOPICS); "
            "their outcome records still go to the outcomes topic.",
            registry=r,
        )

    def _distributions(self, r: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "consumergen_batch_size",
            "Events per applied batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.group_commit_batches = Histogram(
            "consumergen_group_commit_batches",
            "Batches (of as many partitions) per group-commit transaction, on a "
            "single-writer store (service.apply.group).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "consumergen_batch_duration_seconds",
            "Time from taking a batch to committing its offset.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.event_latency = Histogram(
            "consumergen_event_latency_seconds",
            "End to end: from a valid event's occurred_at to the commit of its offset "
            "(its outcome durable); producer clock skew included, negatives counted as 0.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _gauges(self, r: CollectorRegistry) -> None:
        self.lag = Gauge(
            "consumergen_consumer_lag",
            "High watermark minus committed offset, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.paused_partitions = Gauge(
            "consumergen_paused_partitions",
            "Partitions paused by an infrastructure failure.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "consumergen_assigned_partitions", "Partitions assigned to this daemon.", registry=r
        )
        self.stalled_partitions = Gauge(
            "consumergen_stalled_partitions",
            "Assigned, unpaused partitions with lag that have not committed for longer than "
            "CONSUMERGEN_STALL_SECONDS (service.daemon.stalls); /livez fails meanwhile.",
            registry=r,
        )
        self.fetch_loop_stalled = Gauge(
            "consumergen_fetch_loop_stalled",
            "1 while the fetch loop has not polled for longer than CONSUMERGEN_STALL_SECONDS "
            "(the broker not being away); /livez fails meanwhile.",
            registry=r,
        )
        self.batches_in_progress = Gauge(
            "consumergen_batches_in_progress",
            "Batches taken from a partition and not yet committed (or abandoned).",
            registry=r,
        )

    def _operator(self, r: CollectorRegistry) -> None:
        self.build_info = Info(
            "consumergen_build", "The running service's version and Python.", registry=r
        )
        self.build_info.info({"version": __version__, "python_version": platform.python_version()})
        self.ready = Gauge(
            "consumergen_ready",
            "1 while /readyz answers 200 (able to work), else 0; read at each scrape.",
            registry=r,
        )

    def bind_readiness(self, ready: Callable[[], bool]) -> None:
        """``consumergen_ready`` reads ``ready()`` at scrape time: it never disagrees
        with ``/readyz`` and needs no update at each change of readiness."""
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def observe_committed(self, occurred: Iterable[datetime], now: datetime | None = None) -> None:
        """The offset after these events is committed: their outcomes are durable."""
        now = now or datetime.now(UTC)
        for at in occurred:
            self.event_latency.observe(max(0.0, (now - at).total_seconds()))
