"""The async producer API against a real broker: what lands in Kafka, and how it fails."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from kafka_tools import read_all, settings_for

from service.contract.decode import InvalidEvent, decode_event
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType
from service.domain.outcomes import Reason
from service.embedded.process import free_port
from service.producer import (
    BrokerUnavailable,
    EventProducer,
    ProduceError,
    SendResult,
    new_event,
)

pytestmark = pytest.mark.kafka
TopicFactory = Callable[..., Awaitable[str]]


async def test_round_trip_fields_key_and_headers(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    consumer = str(uuid.uuid4())
    settings = settings_for(kafka_bootstrap, topic)
    async with EventProducer(settings, producer_name="tests") as producer:
        created = await producer.upsert(
            consumer.upper(),  # accepted in any case, sent canonical
            expected_generation=None,
            project_id="project-a",
            user_id="user-1",
            consumer_type="INSTANCE",
        )
        updated = await producer.upsert(consumer, expected_generation=1)
        unconditional = await producer.upsert(consumer)
        deleted = await producer.delete(consumer, expected_generation=2)
    records = await read_all(kafka_bootstrap, topic, 4)
    assert [r.offset for r in records] == [0, 1, 2, 3]
    assert {r.partition for r in records} == {created.partition}
    for record in records:
        assert record.key == consumer.encode()
        assert record.headers == (("content-type", b"application/vnd.consumergen.event.v1+json"),)
    events = [decode_event(r.value, max_bytes=settings.max_event_bytes) for r in records]
    assert [e.event_id for e in events] == [
        created.event_id,
        updated.event_id,
        unconditional.event_id,
        deleted.event_id,
    ]
    assert len({e.event_id for e in events}) == 4
    first = events[0]
    assert (first.type, first.consumer_uuid, first.expected_generation) == (
        EventType.UPSERT,
        consumer,
        None,
    )
    assert (first.project_id, first.user_id, first.consumer_type, first.producer) == (
        "project-a",
        "user-1",
        "INSTANCE",
        "tests",
    )
    assert abs(time.time() - first.occurred_at.timestamp()) < 60
    assert first.occurred_at.utcoffset() is not None
    assert events[1].expected_generation == 1
    assert events[2].expected_generation is UNCONDITIONAL
    assert "expected_generation" not in json.loads(records[2].value or b"")
    assert events[3].type is EventType.DELETE and events[3].expected_generation == 2
    assert created == SendResult(created.event_id, topic, created.partition, 0)


async def test_events_of_one_consumer_share_a_partition_in_order(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=4)
    consumers = [str(uuid.uuid4()) for _ in range(40)]
    events = [
        new_event(EventType.UPSERT, c, expected_generation=g if g else None)
        for g in range(5)
        for c in consumers
    ]
    async with EventProducer(settings_for(kafka_bootstrap, topic)) as producer:
        results = await producer.send_many(events)
    assert all(item.ok for item in results)
    records = await read_all(kafka_bootstrap, topic, len(events))
    assert len(records) == len(events)
    by_consumer: dict[str, list[tuple[int, int, object]]] = {}
    for record in records:
        event = decode_event(record.value, max_bytes=1 << 20)
        assert record.key == event.consumer_uuid.encode()
        by_consumer.setdefault(event.consumer_uuid, []).append(
            (record.partition, record.offset, event.expected_generation)
        )
    assert len({rows[0][0] for rows in by_consumer.values()}) > 1  # spread over partitions
    for rows in by_consumer.values():
        assert len({partition for partition, _, _ in rows}) == 1
        rows.sort(key=lambda row: row[1])
        assert [generation for _, _, generation in rows] == [None, 1, 2, 3, 4]


async def test_bulk_reports_every_item_and_sends_the_good_ones(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=2)
    good = new_event(EventType.UPSERT, str(uuid.uuid4()))
    document = good.to_document() | {"event_id": str(uuid.uuid4())}
    items: list[ConsumerEvent | dict[str, object] | bytes] = [
        good,
        b"{not json",
        document,
        {**document, "schema_version": 2},
        good.to_json_bytes().replace(b'"consumer.upsert"', b'"consumer.upsert","x":1'),
        good.to_json_bytes(),  # same event again: the daemon reports a duplicate
    ]
    async with EventProducer(settings_for(kafka_bootstrap, topic)) as producer:
        results = await producer.send_many(iter(items))
    assert [item.index for item in results] == list(range(6))
    assert [item.ok for item in results] == [True, False, True, False, False, True]
    assert [item.error.reason for item in results if isinstance(item.error, InvalidEvent)] == [
        Reason.NOT_JSON,
        Reason.UNSUPPORTED_VERSION,
        Reason.SCHEMA_VIOLATION,
    ]
    assert results[2].event_id == document["event_id"]
    records = await read_all(kafka_bootstrap, topic, 3)
    assert len(records) == 3
    sent = sorted(r.result.event_id for r in results if r.result)
    assert sorted(decode_event(r.value, max_bytes=1 << 20).event_id for r in records) == sent


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [
        (b"\xff\xfe{}", Reason.NOT_UTF8, None),
        (b"[1, 2", Reason.NOT_JSON, None),
        (b'{"schema_version": 7}', Reason.UNSUPPORTED_VERSION, "$.schema_version"),
        (b'{"schema_version": 1}', Reason.SCHEMA_VIOLATION, "$.type"),
        (b" " * 2000 + b"{}", Reason.TOO_LARGE, None),
    ],
)
async def test_bad_raw_documents_are_refused_before_sending(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    value: bytes,
    reason: Reason,
    path: str | None,
) -> None:
    topic = await new_topic()
    settings = settings_for(kafka_bootstrap, topic, max_event_bytes=1024)
    async with EventProducer(settings) as producer:
        with pytest.raises(InvalidEvent) as caught:
            await producer.send(value)
        marker = await producer.upsert(str(uuid.uuid4()))
    assert (caught.value.reason, caught.value.path) == (reason, path)
    assert marker.offset == 0  # the bad one never reached the topic


async def test_bad_arguments_are_schema_violations_or_too_large(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic()
    settings = settings_for(kafka_bootstrap, topic, max_event_bytes=1024)
    consumer = str(uuid.uuid4())
    async with EventProducer(settings) as producer:
        cases = [
            (producer.upsert("not-a-uuid"), "$.consumer_uuid"),
            (producer.upsert(consumer, expected_generation=-1), "$.expected_generation"),
            (producer.upsert(consumer, expected_generation=True), "$.expected_generation"),
            (producer.upsert(consumer, consumer_type="lower"), "$.consumer_type"),
            (producer.upsert(consumer, project_id="a\x00b"), "$.project_id"),
            (producer.upsert(consumer, user_id="\ud800"), "$.user_id"),
            (producer.upsert(consumer, project_id=""), "$.project_id"),
        ]
        for call, path in cases:
            with pytest.raises(InvalidEvent) as caught:
                await call
            assert (caught.value.reason, caught.value.path) == (
                Reason.SCHEMA_VIOLATION,
                path,
            )
        with pytest.raises(InvalidEvent) as caught:
            await producer.upsert(consumer, project_id="é" * 255, user_id="é" * 255)
        assert caught.value.reason is Reason.TOO_LARGE
        marker = await producer.upsert(consumer)
    assert marker.offset == 0


async def test_absent_broker_is_a_clear_error_within_the_timeout() -> None:
    port = free_port()
    settings = settings_for(f"127.0.0.1:{port}", "events", request_timeout_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        async with EventProducer(settings) as producer:
            await producer.upsert(str(uuid.uuid4()))
    assert time.monotonic() - started < 6
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "cannot connect the producer to Kafka" in str(caught.value)


async def test_missing_topic_is_a_clear_error_within_the_timeout(kafka_bootstrap: str) -> None:
    settings = settings_for(
        kafka_bootstrap, "no-such-topic-" + uuid.uuid4().hex[:8], request_timeout_seconds=2.0
    )
    async with EventProducer(settings) as producer:
        started = time.monotonic()
        with pytest.raises(ProduceError) as caught:
            await producer.upsert(str(uuid.uuid4()))
        assert time.monotonic() - started < 6
    assert settings.topic in str(caught.value)


async def test_not_started_and_double_close() -> None:
    producer = EventProducer(settings_for("127.0.0.1:1", "events"))
    with pytest.raises(RuntimeError, match="not started"):
        await producer.upsert(str(uuid.uuid4()))
    await producer.close()
    await producer.close()
