"""A fetch that fails, fast (``service.daemon.fetch``): the broker's "not now" is retried
with backoff, counted and logged, and nothing fetched is lost; anything else stops the
daemon loudly.  The whole daemon over the fakes, its consumer's fetch made to fail as
aiokafka's does (before it hands out any record)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from service.daemon.ports import DaemonEdges
from service.testing.fake_edges import (
    FakeApplier,
    FakeEdges,
    daemon_over_fakes,
    fake_edges,
    fake_settings,
    migrated_sqlite,
    produce_new_consumers,
)
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll
from tests.log_lines import logged

WITHIN = 20.0


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("fetch"))


class FailingFetches(FakeConsumer):
    """Its next fetches raise ``failures`` (one each, in order) before taking anything."""

    def __init__(self, broker: FakeBroker, failures: list[BaseException]) -> None:
        super().__init__(broker)
        self._failures = failures

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[ConsumerRecord]]:
        if self._failures and self.assignment():
            raise self._failures.pop(0)
        return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)


def failing_edges(broker: FakeBroker, failures: list[BaseException]) -> FakeEdges:
    plain = fake_edges(broker)

    @dataclasses.dataclass
    class Edges(FakeEdges):
        @property
        def edges(self) -> DaemonEdges:
            return dataclasses.replace(
                super().edges, make_consumer=lambda: FailingFetches(self.broker, failures)
            )

    return Edges(plain.broker, plain.producer, plain.dead_letters, plain.outcomes, plain.applier)


async def test_a_fetch_failing_on_the_broker_is_retried_counted_and_logged_and_nothing_is_lost(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker("events", 2)
    failures: list[BaseException] = [KafkaConnectionError(f"no route {n}") for n in range(3)]
    fakes = failing_edges(broker, failures)
    settings = fake_settings(database)
    async with daemon_over_fakes(settings, fakes) as daemon:
        produce_new_consumers(broker, 0, 3)
        produce_new_consumers(broker, 1, 3)
        await poll(broker.all_committed, WITHIN, "everything committed after the failures")
        assert failures == []
        registry = daemon.metrics.registry
        assert registry.get_sample_value("consumergen_retries_total", {"step": "fetch"}) == 3
        broker_failures = registry.get_sample_value(
            "consumergen_infrastructure_failures_total", {"kind": "broker"}
        )
        assert broker_failures == 3
    assert sorted(s.offset for s in fakes.applier.applied if s.partition == 0) == [0, 1, 2]
    assert sorted(s.offset for s in fakes.applier.applied if s.partition == 1) == [0, 1, 2]
    retried = [e for e in logged(caplog) if e.get("event") == "fetch failed, retrying"]
    assert [(e["level"], e["error_class"], e["error"], e["attempt"]) for e in retried] == [
        ("warning", "KafkaConnectionError", f"KafkaConnectionError: no route {n}", n + 1)
        for n in range(3)
    ]
    for entry in retried:
        wait = entry["retry_in"]
        assert isinstance(wait, float) and 0 <= wait <= settings.infra_retry_wait_max_seconds
        assert wait == round(wait, 2)


async def test_a_fetch_failing_otherwise_stops_the_daemon_loudly(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker("events", 1)
    fakes = failing_edges(broker, [RuntimeError("a bug in the fetch " + "x" * 400)])
    with pytest.raises(AssertionError, match="stopped on a bug: RuntimeError"):
        async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
            await poll(lambda: daemon.fatal_error is not None, WITHIN, "the daemon stopping")
    [stopping] = [
        e
        for e in logged(caplog)
        if e.get("event") == "fetch failed with an error that is not the infrastructure's: stopping"
    ]
    assert stopping["level"] == "error" and stopping["error_class"] == "RuntimeError"
    assert stopping["error"] == ("a bug in the fetch " + "x" * 400)[:300]


async def test_a_bug_in_a_batch_stops_the_daemon_loudly_and_commits_nothing_past_it(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The applier fails on partition 0's third event with an error that is nobody's
    infrastructure (a bug): the daemon stops, says which partition and that it is a bug,
    and partition 0's committed offset stays before that event."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions

    async def before_apply(items: Any) -> None:
        if any(source.offset == 2 for _, source in items):
            raise ValueError("a bug in the applier")

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    with pytest.raises(AssertionError, match="stopped on a bug: ValueError"):
        async with daemon_over_fakes(fake_settings(database, batch_max_events=1), fakes) as daemon:
            await poll(lambda: bool(fakes.current_consumer().assignment()), WITHIN, "assigned")
            produce_new_consumers(broker, 0, 4)
            await poll(lambda: daemon.fatal_error is not None, WITHIN, "the daemon stopping")
    assert broker.committed.get(tp, 0) <= 2
    assert [s.offset for s in fakes.applier.applied] == [0, 1]  # nothing after the bug
    [crashed] = [e for e in logged(caplog) if e.get("event") == "partition worker crashed"]
    assert crashed["level"] == "error" and crashed["partition"] == "events/0"
    assert crashed["failure_class"] == "bug" and crashed["error_class"] == "ValueError"
