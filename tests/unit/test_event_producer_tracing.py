"""``EventProducer`` and its ``ReplyListener`` with tracing on (``service.tracing``), over
aiokafka's producer and consumer faked at their client API (``service.testing.fake_aiokafka``,
no broker): each send is one ``send`` span, in its record's headers and ended at the
acknowledgement (or with the error that stopped it); a reply closes its request's trace
with a ``receive`` span; an update loop is one span over its sends.  The broker tests of
the same rules are ``tests/tracing/test_producer_spans.py`` and ``test_daemon_trace.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

import service.producer.client as client
import service.producer.replies as replies
from service import tracing as tracing_front
from service.config import load_settings
from service.contract.decode import InvalidEvent
from service.contract.records import CONTENT_TYPE_HEADER, outcome_record
from service.contract.replies import CORRELATION_HEADER, reply_route
from service.domain.events import EventType
from service.domain.outcomes import OutcomeKind
from service.logging import pseudonym
from service.producer.client import EventProducer, ProduceError
from service.producer.events import encode, new_event
from service.testing.fake_aiokafka import FakeCluster, Written, consumer_class, producer_class
from service.tracing.headers import TRACEPARENT, extract, inject
from service.tracing.sdk import build_tracing
from tests.tracing.conftest import KEY, Traced

SETTINGS = load_settings(
    bootstrap_servers="localhost:1",
    topic="events",
    reply_topic="events.replies",
    request_timeout_seconds=0.2,
    outcome_wait_seconds=5,
    max_event_bytes=2048,
)
CONSUMER = "00000000-0000-4000-8000-0000000000c1"
OTHER = "00000000-0000-4000-8000-0000000000c2"


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Tracing installed (every span sampled, exported as it ends), as tests/tracing's."""
    exporter = InMemorySpanExporter()
    tracing = build_tracing([exporter], KEY, sampler=ALWAYS_ON, batch=False)
    assert tracing is not None
    previous = tracing_front.install(tracing)
    try:
        yield Traced(tracing, exporter)
    finally:
        tracing_front.install(previous)
        tracing.shutdown()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    found = FakeCluster({"events": 3, "events.replies": 4})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(found))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(found))
    return found


@pytest.fixture
async def producer(cluster: FakeCluster) -> AsyncIterator[EventProducer]:
    async with EventProducer(SETTINGS, reply_partition=2) as found:
        yield found


def event_doc(consumer: str = CONSUMER) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(encode(new_event(EventType.UPSERT, consumer)))
    return doc


def carried(headers: Any) -> SpanContext:
    """The span context a record's headers carry."""
    return trace.get_current_span(extract(headers)).get_span_context()


def reply_to(cluster: FakeCluster, request: Written, context: SpanContext | None) -> Written:
    """The daemon's part: the outcome of ``request`` on the partition it named, with its
    correlation id and, when given, ``context`` (the daemon's event span) injected."""
    route = reply_route(request.headers, "events.replies")
    assert route is not None
    value = outcome_record(
        event_id=orjson.loads(request.value or b"{}").get("event_id"),
        consumer_uuid=CONSUMER,
        outcome=OutcomeKind.APPLIED,
        reason=None,
        generation_after=1,
        source_topic=request.topic,
        source_partition=request.partition,
        source_offset=request.offset,
    )
    headers = [(CORRELATION_HEADER, route.correlation)]
    if context is not None:
        headers = inject(headers, trace.set_span_in_context(NonRecordingSpan(context)))
    return cluster.append(route.topic, route.partition, None, value, headers)


def ids(span: ReadableSpan | SpanContext | None) -> tuple[int, int] | None:
    """(trace id, span id) of a span, a context or a parent."""
    if span is None:
        return None
    context = span.context if isinstance(span, ReadableSpan) else span
    assert context is not None
    return context.trace_id, context.span_id


# --- sends ----------------------------------------------------------------------------


async def test_a_send_is_a_producer_span_in_its_record_ended_at_the_ack(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    cluster.hold = True
    doc = event_doc()
    acked = await producer.submit(doc)
    for _ in range(10):
        await asyncio.sleep(0)
    assert traced.named("send") == []  # handed over, not acknowledged: not ended
    cluster.hold = False
    cluster.deliver()
    sent = await asyncio.wait_for(acked, 5)
    [span] = traced.spans()
    assert (span.name, span.kind, span.parent) == ("send events", SpanKind.PRODUCER, None)
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "events",
        "messaging.message.id": pseudonym(doc["event_id"], KEY),
        "messaging.kafka.message.key": pseudonym(CONSUMER, KEY),
        "messaging.destination.partition.id": str(sent.partition),
        "messaging.kafka.offset": sent.offset,
    }
    assert span.status.status_code is StatusCode.UNSET
    [record] = cluster.written("events")
    assert [name for name, _ in record.headers] == [CONTENT_TYPE_HEADER, TRACEPARENT]
    assert ids(carried(record.headers)) == ids(span)


async def test_a_send_inside_a_span_is_its_child(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    with traced.tracing.tracer.start_as_current_span("caller") as caller:
        await producer.send(event_doc())
        await producer.send(event_doc(OTHER))
    sends = traced.named("send events")
    assert len(sends) == 2
    assert all(ids(s.parent) == ids(caller.get_span_context()) for s in sends)
    records = cluster.written("events")
    assert sorted(map(str, (ids(carried(r.headers)) for r in records))) == sorted(
        map(str, (ids(s) for s in sends))
    )


async def test_a_send_the_broker_refused_ends_its_span_as_an_error(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    cluster.refuse = lambda _: KafkaConnectionError("refused")
    with pytest.raises(ProduceError):
        await producer.send(event_doc())
    [span] = traced.spans()
    assert (span.status.status_code, span.status.description) == (
        StatusCode.ERROR,
        "KafkaConnectionError",
    )
    assert [event.name for event in span.events] == ["exception"]
    assert "messaging.kafka.offset" not in (span.attributes or {})


async def test_a_hand_over_that_fails_ends_its_span_with_the_error(
    cluster: FakeCluster, producer: EventProducer, traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.up = False  # aiokafka's send itself fails (no metadata)
    with pytest.raises(ProduceError, match="KafkaConnectionError"):
        await producer.send(event_doc())
    [span] = traced.spans()
    assert (span.status.status_code, span.status.description) == (
        StatusCode.ERROR,
        "KafkaConnectionError",
    )
    cluster.up = True

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise LookupError("a bug in the hand-over")

    monkeypatch.setattr(cluster.producers[0], "send", broken)
    with pytest.raises(LookupError):  # not the broker's: raised as it is, not ProduceError
        await producer.send(event_doc())
    _, second = traced.spans()
    assert (second.status.status_code, second.status.description) == (
        StatusCode.ERROR,
        "LookupError",
    )
    assert cluster.written("events") == []


# --- request-reply ----------------------------------------------------------------------


async def test_a_reply_with_the_daemon_s_context_closes_the_trace_the_send_opened(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    doc = event_doc()
    pending = await producer.request(doc)
    [send] = traced.spans()  # one send span, ended at the ack
    assert send.name == "send events" and dict(send.attributes or {})[
        "messaging.message.id"
    ] == pseudonym(doc["event_id"], KEY)
    [record] = cluster.written("events")
    assert record.headers[0][0] == CONTENT_TYPE_HEADER
    assert reply_route(record.headers, "events.replies") is not None
    assert [name for name, _ in record.headers].count(TRACEPARENT) == 1
    assert ids(carried(record.headers)) == ids(send)
    assert send.context is not None
    daemon = SpanContext(send.context.trace_id, 0xABC, False, TraceFlags(1))
    answer = reply_to(cluster, record, daemon)
    assert (await pending.outcome(5)).kind is OutcomeKind.APPLIED
    [receive] = traced.named("receive")
    assert (receive.name, receive.kind) == ("receive events.replies", SpanKind.CONSUMER)
    assert ids(receive.parent) == (send.context.trace_id, 0xABC)
    assert [ids(link.context) for link in receive.links] == [ids(send)]
    attributes = dict(receive.attributes or {})
    assert attributes["messaging.destination.partition.id"] == "2"
    assert attributes["messaging.kafka.offset"] == answer.offset
    # answered once: the same correlation again is a stranger's, with no span
    reply_to(cluster, record, daemon)
    listener = await producer.replies()
    for _ in range(100):
        if listener.counts.foreign:
            break
        await asyncio.sleep(0.01)
    assert listener.counts.foreign == 1 and len(traced.named("receive")) == 1


async def test_a_reply_without_a_context_hangs_off_the_send_it_answers(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    pending = await producer.request(event_doc())
    [send] = traced.spans()
    [record] = cluster.written("events")
    reply_to(cluster, record, None)  # a daemon that does not trace
    await pending.outcome(5)
    [receive] = traced.named("receive")
    assert ids(receive.parent) == ids(send) and receive.links == ()


async def test_only_traced_requests_get_a_receive_span(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    listener = await producer.replies()
    untraced = listener.expect(b"untraced")  # a request sent with no span
    pending = await producer.request(event_doc())
    cluster.append("events.replies", 2, None, b"{}", [(CORRELATION_HEADER, b"untraced")])
    assert await asyncio.wait_for(untraced, 5) == b"{}"
    assert traced.named("receive") == []
    [record] = cluster.written("events")
    reply_to(cluster, record, None)
    await pending.outcome(5)
    assert len(traced.named("receive")) == 1


async def test_a_reply_after_tracing_was_turned_off_makes_no_span_and_is_kept(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    pending = await producer.request(event_doc())
    tracing_front.install(None)
    [record] = cluster.written("events")
    reply_to(cluster, record, None)
    assert (await pending.outcome(5)).kind is OutcomeKind.APPLIED
    assert traced.named("receive") == []


async def test_a_request_that_fails_ends_its_span_and_is_forgotten(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    with pytest.raises(InvalidEvent):
        await producer.request({**event_doc(), "type": "bad"})
    [invalid] = traced.spans()  # made before the hand-over, ended with its failure
    assert (invalid.status.status_code, invalid.status.description) == (
        StatusCode.ERROR,
        "InvalidEvent",
    )
    cluster.refuse = lambda _: KafkaConnectionError("refused")
    with pytest.raises(ProduceError):
        await producer.request(event_doc())
    _, refused = traced.spans()
    assert refused.status.description == "KafkaConnectionError"
    [(_, _, [record], _)] = cluster.batches
    route = reply_route(record.headers, "events.replies")
    assert route is not None  # a late reply to the refused request: a stranger's
    cluster.append(
        route.topic, route.partition, None, b"{}", [(CORRELATION_HEADER, route.correlation)]
    )
    listener = await producer.replies()
    for _ in range(100):
        if listener.counts.records_read:
            break
        await asyncio.sleep(0.01)
    assert (listener.counts.foreign, listener.counts.matched) == (1, 0)
    assert traced.named("receive") == []


async def test_a_raw_request_carries_its_send_span(
    cluster: FakeCluster, producer: EventProducer, traced: Traced
) -> None:
    pending = await producer.request_raw(b"not an event", key=b"raw")
    [send] = traced.spans()
    [record] = cluster.written("events")
    assert ids(carried(record.headers)) == ids(send)
    attributes = dict(send.attributes or {})
    assert attributes["messaging.kafka.offset"] == pending.sent.offset == record.offset
    assert "messaging.message.id" not in attributes  # not an event: no id was read
    cluster.up = False
    with pytest.raises(ProduceError):
        await producer.request_raw(b"again")
    _, failed = traced.spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]  # recorded once


# --- update -------------------------------------------------------------------------------


async def test_an_update_is_one_span_over_its_sends(
    cluster: FakeCluster, traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Reader:
        def __init__(self, settings: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def get(self, uuid: str) -> None:
            return None

    done = object()

    async def loop(sender: EventProducer, *args: Any, **kwargs: Any) -> Any:
        assert traced.named("update") == []  # the update span is still open
        await sender.send(event_doc())
        await sender.send(event_doc())
        return done

    def keep(state: Any) -> Any:
        return state

    monkeypatch.setattr(client, "ConsumerReader", Reader)
    monkeypatch.setattr(client, "run_update", loop)
    async with EventProducer(SETTINGS) as producer:
        assert await producer.update(CONSUMER, keep) is done
    [update] = traced.named("update")
    assert update.name == "update consumer"
    assert dict(update.attributes or {}) == {
        "messaging.kafka.message.key": pseudonym(CONSUMER, KEY)
    }
    sends = traced.named("send")
    assert len(sends) == 2 and all(ids(s.parent) == ids(update) for s in sends)
