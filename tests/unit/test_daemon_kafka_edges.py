"""The daemon's real edges, built without a broker (``Daemon._kafka_edges``): the group
consumer it makes (a fresh one at each call, with the group's settings and a rebalance
timeout that lets a revoking member finish its in-flight batch) and, on SQLite, the
batches of several partitions applied under group commit.

``AIOKafkaConsumer`` is replaced in ``service.daemon.app`` by a class that records the
options it is made with: whether aiokafka honours them is aiokafka's business and the
broker tests'; what the daemon asks of it is this module's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

import service.daemon.app as app_module
import service.sinks.kafka_producer as kafka_producer
from service.config import Settings, load_settings
from service.contract.decode import decode_event
from service.daemon.app import Daemon
from service.domain.outcomes import EventSource, OutcomeKind
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.reads import get_consumer
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.testing.fake_aiokafka import FakeCluster, producer_class
from service.testing.model import event_doc


class RecordedConsumer:
    """Stands for ``AIOKafkaConsumer``: keeps the options, connects nowhere."""

    made: list[RecordedConsumer] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        RecordedConsumer.made.append(self)

    def assignment(self) -> set[TopicPartition]:
        return set()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordedConsumer]]:
    RecordedConsumer.made = []
    monkeypatch.setattr(app_module, "AIOKafkaConsumer", RecordedConsumer)
    yield RecordedConsumer.made


def settings_for(url: str, **extra: Any) -> Settings:
    return load_settings(
        database_url=url,
        bootstrap_servers="127.0.0.1:9",
        topic="events",
        outcomes_topic="events.outcomes",
        group_id="the-group",
        **extra,
    )


@pytest.mark.parametrize(
    ("session_ms", "grace", "rebalance_ms"),
    [
        (45_000, 10.0, 45_000),  # the session timeout covers a revoking member's grace
        (10_000, 12.0, 17_000),  # the grace (and 5 s more) is longer: it decides
        (10_000, 60.0, 25_000),  # a revocation's grace is 20 s at most
    ],
)
def test_the_group_consumer_carries_the_groups_settings_and_a_rebalance_timeout_over_the_grace(
    recorded: list[RecordedConsumer],
    sqlite_url: str,
    session_ms: int,
    grace: float,
    rebalance_ms: int,
) -> None:
    settings = settings_for(
        sqlite_url,
        group_instance_id="daemon-1",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=3_000,
        max_poll_interval_ms=300_000,
        shutdown_grace_seconds=grace,
    )
    daemon = Daemon(settings, create_engine(settings))
    assert recorded and daemon.consumer is recorded[-1]
    options = recorded[-1].options
    assert options["group_id"] == "the-group"
    assert options["group_instance_id"] == "daemon-1"
    assert options["session_timeout_ms"] == session_ms
    assert options["heartbeat_interval_ms"] == 3_000
    assert options["max_poll_interval_ms"] == 300_000
    assert options["rebalance_timeout_ms"] == rebalance_ms
    assert options["enable_auto_commit"] is False  # offsets only after the outcomes
    assert options["bootstrap_servers"] == ["127.0.0.1:9"]
    assert daemon.revoke_grace == min(grace, 20.0)
    assert daemon.membership.revoke_grace == daemon.revoke_grace


def test_each_consumer_is_a_fresh_one(recorded: list[RecordedConsumer], sqlite_url: str) -> None:
    """A stopped aiokafka consumer cannot start again: after a failed start or a parking
    the daemon takes a new one, made the same way."""
    settings = settings_for(sqlite_url)
    daemon = Daemon(settings, create_engine(settings))
    first = daemon.consumer
    daemon._renew_consumer()
    assert daemon.consumer is not first and daemon.consumer is recorded[-1]
    assert len(recorded) == 2 and recorded[0].options == recorded[1].options


async def test_on_sqlite_batches_are_applied_under_group_commit(
    recorded: list[RecordedConsumer], sqlite_url: str
) -> None:
    """On a single-writer store the daemon's applier groups the batches ready on several
    partitions into shared transactions (``service.apply.group``), counted in
    ``consumergen_group_commit_batches``; what it applies is in the database."""
    settings = settings_for(sqlite_url)
    await upgrade(settings)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        assert daemon.group_writer is not None
        consumer = "00000000-0000-4000-8000-000000000001"
        value = json.dumps(event_doc(consumer, project="p", user="u")).encode()
        event = decode_event(value, max_bytes=settings.max_event_bytes)
        outcomes = await daemon.host.applier.apply_batch([(event, EventSource("events", 0, 0))])
        assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED]
        assert await get_consumer(engine, consumer) is not None
        groups = daemon.metrics.registry.get_sample_value("consumergen_group_commit_batches_count")
        assert groups == 1
    finally:
        if daemon.group_writer is not None:
            await daemon.group_writer.close()
        await engine.dispose()


async def test_the_sinks_write_nothing_while_the_probe_finds_the_broker_away(
    recorded: list[RecordedConsumer], sqlite_url: str
) -> None:
    """The sinks' producer asks the daemon's readiness before it connects: while the
    broker probe says it is away, a write fails at once as the broker's (retried by
    the worker), without a connection attempt."""
    settings = settings_for(sqlite_url)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        daemon.readiness.broker_reachable = False
        letter = DeadLetter(None, b"x", [], EventSource("events", 0, 0), "bad", True)
        with pytest.raises(SinkUnavailable, match=r"^broker unreachable; not writing until"):
            await daemon.dead_letters.write_dead_letters([letter])
        assert daemon.outcomes is not None
        message = OutcomeMessage(b"key", b"{}", None)  # for the outcomes topic
        with pytest.raises(SinkUnavailable, match=r"^broker unreachable; not writing until"):
            await daemon.outcomes.write_outcomes([message])
    finally:
        await daemon.producer.stop_quietly()
        if daemon.group_writer is not None:
            await daemon.group_writer.close()
        await engine.dispose()


async def test_the_sinks_write_through_the_producer_while_the_broker_is_reachable(
    recorded: list[RecordedConsumer], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the probe finds the broker there, the dead-letter sink's write goes through
    the producer the daemon made from its settings (aiokafka's producer faked at its
    client API: ``service.testing.fake_aiokafka``) to the dead-letter topic."""
    cluster = FakeCluster({"events.dlq": 1})
    monkeypatch.setattr(kafka_producer, "AIOKafkaProducer", producer_class(cluster))
    monkeypatch.setattr(kafka_producer, "AIOKafkaAdminClient", NoAdmin)
    settings = settings_for(sqlite_url, dlq_topic="events.dlq")
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        assert daemon.readiness.broker_reachable
        letter = DeadLetter(None, b"x", [], EventSource("events", 0, 0), "bad", True)
        await daemon.dead_letters.write_dead_letters([letter])
        [written] = cluster.written("events.dlq")
        assert written.value == b"x"
        [producer] = cluster.producers
        assert producer.options["bootstrap_servers"] == ["127.0.0.1:9"]
    finally:
        await daemon.producer.stop_quietly()
        if daemon.group_writer is not None:
            await daemon.group_writer.close()
        await engine.dispose()


class NoAdmin:
    """The admin client that reads the dead-letter topic's limit: not reachable (the
    broker default then stands in)."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def start(self) -> None:
        raise KafkaConnectionError("no admin client here")

    async def close(self) -> None:
        return None


async def test_a_group_waits_its_turn_behind_the_appliers_own_transactions(
    recorded: list[RecordedConsumer], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the group commit and the applier's own transactions (a raced part
    re-planned alone) take turns in the process, on the store's one write turn, so the
    two never wait for each other inside the database (``service.apply.group``)."""
    made: list[SqlUnitOfWorkFactory] = []

    class Recorded(SqlUnitOfWorkFactory):
        def __init__(self, engine: AsyncEngine) -> None:
            super().__init__(engine)
            made.append(self)

    monkeypatch.setattr(app_module, "SqlUnitOfWorkFactory", Recorded)
    settings = settings_for(sqlite_url)
    await upgrade(settings)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        [units] = made
        turn = units.write_turn
        writer = daemon.group_writer
        assert turn is not None and writer is not None
        held: list[bool] = []
        run_group = writer.run_group

        async def watched(work: Any) -> Any:
            held.append(turn.locked())
            return await run_group(work)

        monkeypatch.setattr(writer, "run_group", watched)
        consumer = "00000000-0000-4000-8000-000000000002"
        value = json.dumps(event_doc(consumer, project="p", user="u")).encode()
        event = decode_event(value, max_bytes=settings.max_event_bytes)
        outcomes = await daemon.host.applier.apply_batch([(event, EventSource("events", 0, 0))])
        assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED]
        assert held == [True] and not turn.locked()
    finally:
        if daemon.group_writer is not None:
            await daemon.group_writer.close()
        await engine.dispose()
