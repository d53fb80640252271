"""The producer's spans over the real broker: each send is a PRODUCER span whose context
is in the record's headers and which ends at the acknowledgement; a send inside a span
is its child; without tracing no header is added; a republished record links the
context it carried."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from service.config import Settings
from service.contract.records import CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE
from service.domain.events import EventType
from service.kafka.clients import producer_options, start_bounded
from service.logging import pseudonym
from service.producer import EventProducer, new_event
from service.replay.records import SourceRecord
from service.replay.runner import _republish
from service.testing.kafka_io import read_all
from service.tracing import active
from service.tracing.headers import TRACEPARENT, extract
from tests.tracing.conftest import KEY, Traced

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


def _settings(bootstrap: str, topic: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, topic=topic, request_timeout_seconds=10.0)


def _carried(headers: object) -> trace.SpanContext:
    return trace.get_current_span(extract(headers)).get_span_context()  # type: ignore[arg-type]


async def test_a_send_is_a_producer_span_in_the_records_headers(
    kafka_bootstrap: str, new_topic: TopicFactory, traced: Traced
) -> None:
    topic = await new_topic(partitions=2, prefix="traced")
    consumer = str(uuid.uuid4())
    event = new_event(EventType.UPSERT, consumer, project_id="p", user_id="u")
    async with EventProducer(_settings(kafka_bootstrap, topic)) as producer:
        sent = await producer.send(event)
    [span] = traced.named("send ")
    assert span.name == f"send {topic}"
    assert span.kind is SpanKind.PRODUCER
    assert span.parent is None  # no current span: a new root
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": pseudonym(event.event_id, KEY),
        "messaging.kafka.message.key": pseudonym(consumer, KEY),
        "messaging.destination.partition.id": str(sent.partition),
        "messaging.kafka.offset": sent.offset,
    }
    [record] = await read_all(kafka_bootstrap, topic)
    carried = _carried(record.headers)
    assert (carried.trace_id, carried.span_id) == (span.context.trace_id, span.context.span_id)
    assert (CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE.encode()) in record.headers


async def test_sends_inside_a_span_are_its_children(
    kafka_bootstrap: str, new_topic: TopicFactory, traced: Traced
) -> None:
    topic = await new_topic(partitions=1, prefix="traced")
    async with EventProducer(_settings(kafka_bootstrap, topic)) as producer:
        with traced.tracing.tracer.start_as_current_span("checkout") as parent:
            results = await producer.send_many(
                [new_event(EventType.DELETE, str(uuid.uuid4())) for _ in range(3)]
            )
    assert all(item.ok for item in results)
    sends = traced.named("send ")
    assert len(sends) == 3
    for span in sends:
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id
    records = await read_all(kafka_bootstrap, topic)
    assert {_carried(r.headers).span_id for r in records} == {s.context.span_id for s in sends}


async def test_without_tracing_no_header_is_added(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    assert active() is None
    topic = await new_topic(partitions=1, prefix="untraced")
    async with EventProducer(_settings(kafka_bootstrap, topic)) as producer:
        await producer.send(new_event(EventType.DELETE, str(uuid.uuid4())))
    [record] = await read_all(kafka_bootstrap, topic)
    assert [name for name, _ in record.headers] == ["content-type"]


async def test_a_republished_record_is_a_new_send_linked_to_the_context_it_carried(
    kafka_bootstrap: str, new_topic: TopicFactory, traced: Traced
) -> None:
    """``replay --republish``: the replay's own trace, the original one as a link, and
    no stale tracestate of the original beside the new traceparent."""
    source, topic = await new_topic(prefix="dlq"), await new_topic(prefix="events")
    settings = _settings(kafka_bootstrap, source)
    async with EventProducer(settings) as producer:
        await producer.send(new_event(EventType.DELETE, str(uuid.uuid4())))
    [original] = await read_all(kafka_bootstrap, source)
    original_context = _carried(original.headers)
    headers = (*original.headers, ("tracestate", b"vendor=old"), ("x-app", b"kept"))
    record = SourceRecord(source, 0, original.offset, None, original.key, original.value, headers)
    kafka = AIOKafkaProducer(**producer_options(settings))
    await start_bounded(kafka, settings, "test republisher")
    try:
        await _republish(kafka, topic, [record])
    finally:
        await kafka.stop()
    [republished] = await read_all(kafka_bootstrap, topic)
    [span] = [s for s in traced.named("send ") if s.name == f"send {topic}"]
    assert span.parent is None and span.context.trace_id != original_context.trace_id
    assert [link.context.span_id for link in span.links] == [original_context.span_id]
    carried = _carried(republished.headers)
    assert (carried.trace_id, carried.span_id) == (span.context.trace_id, span.context.span_id)
    names = [name for name, _ in republished.headers]
    assert names.count(TRACEPARENT) == 1 and "tracestate" not in names
    assert ("x-app", b"kept") in republished.headers
