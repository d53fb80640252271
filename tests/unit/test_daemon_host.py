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
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.sinks.base import DeadLetter
from service.sinks.memory import MemoryDeadLetterSink
from service.store.errors import TransientDatabaseError
from service.testing.fake_kafka import fetched_record

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


def test_recovering_a_partition_whose_report_is_gone_already_is_harmless() -> None:
    """A revocation clears the partition's report (``Membership.release``); its worker's
    abandoned step may report its recovery after that: nothing to undo, no error."""
    host, consumer, readiness, metrics = _host()
    host.infrastructure_failed(TP, "database", TransientDatabaseError("down"))
    readiness.failing.pop("events/3")  # the revocation's doing
    host.infrastructure_recovered(TP, "database", resumed=False)
    assert consumer.paused == set()
    assert readiness.failing == {}
    assert metrics.registry.get_sample_value("consumergen_paused_partitions") == 0


def _outcome(n: int, kind: OutcomeKind, attempts: int = 1) -> Outcome:
    return Outcome(f"event-{n}", f"consumer-{n}", kind, None, 1, attempts)


def _invalid(offset: int, reason: Reason) -> DeadLetter:
    source = EventSource(TP.topic, TP.partition, offset)
    return DeadLetter(b"key", b"not json", [], source, reason.value, invalid=True)


def test_a_batch_counts_each_event_once_and_each_compare_and_swap_retry() -> None:
    """Two events of one kind and two invalid records of one reason in one batch are two
    each (not one per kind); an event that took two compare-and-swap attempts is one
    retry, one that took one is none."""
    host, _, _, metrics = _host()
    batch = [fetched_record(TP, offset, b"{}") for offset in range(5)]
    outcomes = [
        _outcome(0, OutcomeKind.APPLIED, attempts=2),
        _outcome(1, OutcomeKind.APPLIED),
        _outcome(2, OutcomeKind.DUPLICATE),
    ]
    dead = [_invalid(3, Reason.NOT_JSON), _invalid(4, Reason.NOT_JSON)]
    host.record_batch(TP, batch, outcomes, dead, 0.01)
    registry = metrics.registry

    def events(outcome: str, reason: str = "") -> float | None:
        labels = {"outcome": outcome, "reason": reason}
        return registry.get_sample_value("consumergen_events_total", labels)

    assert events("applied") == 2
    assert events("duplicate") == 1
    assert events("invalid", "not_json") == 2
    assert registry.get_sample_value("consumergen_cas_retries_total") == 1
    assert registry.get_sample_value("consumergen_dead_lettered_total", {"reason": "not_json"}) == 2
    host.committed_log.flush()
