"""The daemon's real edges on PostgreSQL (``Daemon._kafka_edges``), without a broker: no
group commit (a store with many writers applies each partition's batch in its own
transaction, concurrently), the batch applied and in the database; and the sinks the
edges write through (the dead-letter and outcomes topics the settings name).  The
SQLite side, group commit, is in ``test_daemon_kafka_edges.py``."""

from __future__ import annotations

import json

import pytest

import service.daemon.app as app_module
from service.contract.decode import decode_event
from service.daemon.app import Daemon
from service.domain.outcomes import EventSource, OutcomeKind
from service.sinks.coalescing import CoalescingOutcomeSink
from service.sinks.kafka import KafkaDeadLetterSink, KafkaOutcomeSink
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.reads import get_consumer
from service.testing.model import event_doc
from tests.unit.test_daemon_kafka_edges import RecordedConsumer, settings_for


async def test_on_postgresql_each_batch_is_its_own_transaction_without_group_commit(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "AIOKafkaConsumer", RecordedConsumer)  # connects nowhere
    settings = settings_for(postgres_url)
    await upgrade(settings)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        assert daemon.group_writer is None
        consumer = "00000000-0000-4000-8000-000000000002"
        value = json.dumps(event_doc(consumer, project="p", user="u")).encode()
        event = decode_event(value, max_bytes=settings.max_event_bytes)
        outcomes = await daemon.host.applier.apply_batch([(event, EventSource("events", 0, 0))])
        assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED]
        assert await get_consumer(engine, consumer) is not None
        groups = daemon.metrics.registry.get_sample_value("consumergen_group_commit_batches_count")
        assert groups == 0
    finally:
        await engine.dispose()


async def test_the_edges_write_dead_letters_and_outcomes_to_the_topics_the_settings_name(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "AIOKafkaConsumer", RecordedConsumer)  # connects nowhere
    settings = settings_for(sqlite_url, dlq_topic="events.dead")
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    try:
        assert isinstance(daemon.dead_letters, KafkaDeadLetterSink)
        assert daemon.dead_letters.settings.dlq_topic == "events.dead"
        assert daemon.dead_letters.handle is daemon.producer  # one producer for both sinks
        assert isinstance(daemon.outcomes, CoalescingOutcomeSink)
        inner = daemon.outcomes.inner
        assert isinstance(inner, KafkaOutcomeSink) and inner.topic == "events.outcomes"
        assert inner.handle is daemon.producer
    finally:
        if daemon.group_writer is not None:
            await daemon.group_writer.close()
        await engine.dispose()
