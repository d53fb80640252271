"""What the daemon's ``WorkerHost`` reports when a partition's step fails on the
infrastructure (``service.daemon.host``), without a broker: the partition paused at
the consumer, ``/readyz``'s failing partition with its kind and a bounded last error,
the failure counted by kind; and all of it undone once the step works again."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from service.daemon.commits import CommitCoalescer
from service.daemon.health import Readiness
from service.daemon.host import DaemonWorkerHost
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.worker import WorkerConfig
from service.sinks.memory import MemoryDeadLetterSink
from service.store.errors import TransientDatabaseError

TP = TopicPartition("events", 3)


class _Consumer:
    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


def _host() -> tuple[DaemonWorkerHost, _Consumer, Readiness, DaemonMetrics]:
    consumer, readiness, metrics = _Consumer(), Readiness(), DaemonMetrics()

    async def commit_offsets(offsets: Any) -> None:
        return None

    host = DaemonWorkerHost(
        config=WorkerConfig(
            batch_max_events=10, max_event_bytes=1024, retry_wait_initial=0.01, retry_wait_max=0.1
        ),
        applier=None,  # type: ignore[arg-type]
        dead_letters=MemoryDeadLetterSink(),
        outcomes=None,
        commits=CommitCoalescer(commit_offsets, timeout=1.0),
        pauses=Pauses(lambda: consumer),  # type: ignore[arg-type,return-value]
        readiness=readiness,
        metrics=metrics,
        fatal=lambda exc: None,
    )
    return host, consumer, readiness, metrics


def _failures(metrics: DaemonMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value(
        "consumergen_infrastructure_failures_total", {"kind": kind}
    )


def test_a_failing_step_pauses_its_partition_and_reports_a_bounded_error_until_it_works() -> None:
    host, consumer, readiness, metrics = _host()
    error = TransientDatabaseError("x" * 1000)
    host.infrastructure_failed(TP, "database", error)
    assert consumer.paused == {TP}
    assert readiness.failing == {"events/3": "database"}
    assert readiness.last_error is not None and len(readiness.last_error) == 300
    assert readiness.last_error.startswith("database: TransientDatabaseError: xxx")
    assert metrics.registry.get_sample_value("consumergen_paused_partitions") == 1
    assert (_failures(metrics, "database"), _failures(metrics, "broker")) == (1, 0)

    host.infrastructure_recovered(TP, "database", resumed=True)
    assert consumer.paused == set()
    assert readiness.failing == {}
    assert metrics.registry.get_sample_value("consumergen_paused_partitions") == 0


def test_a_failure_of_no_known_kind_is_reported_as_the_brokers_and_a_commit_timeout_too() -> None:
    """Only infrastructure failures reach the host (``step_retry`` sorted them); one
    whose kind the classifier cannot tell is reported as the broker's, never as no
    kind; an offset commit that timed out is the broker's by its class."""
    host, _, readiness, metrics = _host()
    host.infrastructure_failed(TP, "commit", RuntimeError("unclassified"))
    assert readiness.failing == {"events/3": "broker"}
    assert readiness.last_error == "broker: RuntimeError: unclassified"
    host.infrastructure_failed(TP, "commit", TimeoutError("the coordinator did not answer"))
    assert readiness.last_error == "broker: TimeoutError: the coordinator did not answer"
    assert _failures(metrics, "broker") == 2


def test_backpressure_is_relieved_only_below_half_the_high_water_mark() -> None:
    host, consumer, _, _ = _host()
    assert host.high_water == 40  # four batches' worth
    host._pauses.pause(TP, "backpressure")
    host.relieve_backpressure(TP, 20)
    assert consumer.paused == {TP}
    host.relieve_backpressure(TP, 19)
    assert consumer.paused == set()
