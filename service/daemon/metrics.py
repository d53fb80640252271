"""Prometheus metrics of one daemon, on a registry of its own.

A registry per daemon (not the global one) lets tests run several daemons in one
process and read each one's numbers without interference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.daemon.stages import StageClock


@dataclass
class DaemonMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter(
            "consumergen_events", "Events by outcome and reason.", ["outcome", "reason"], registry=r
        )
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
        self.infrastructure_failures = Counter(
            "consumergen_infrastructure_failures",
            "Database or broker failures that paused a partition.",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            "consumergen_retries",
            "Retries of an infrastructure failure scheduled by stamina, by the step retried.",
            ["step"],
            registry=r,
        )
        self.batch_size = Histogram(
            "consumergen_batch_size",
            "Events per applied batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "consumergen_batch_duration_seconds",
            "Time from taking a batch to committing its offset.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
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
