"""Done when (issue 23): over a real broker, for an applied, a rejected and an invalid
(dead-lettered) event, one trace id runs from the producer's ``send`` span through the
daemon's event span to the outcome the producer receives, and the outcome record, the
reply and the dead letter carry the event span's context."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from service.domain.events import EventType
from service.domain.outcomes import OutcomeKind, Reason
from service.logging import pseudonym
from service.producer import Change, EventProducer, new_event
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.kafka_io import read_all
from service.testing.polling import poll
from service.tracing.headers import extract
from tests.tracing.conftest import KEY, Traced

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


def _carried(headers: object) -> trace.SpanContext:
    return trace.get_current_span(extract(headers)).get_span_context()  # type: ignore[arg-type]


def _child_of(spans: list[ReadableSpan], parent: ReadableSpan) -> ReadableSpan:
    [child] = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    assert child.context.trace_id == parent.context.trace_id
    return child


async def test_one_trace_from_the_send_through_the_daemon_to_the_outcome(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory, traced: Traced
) -> None:
    topics = Topics(
        events=await new_topic(partitions=2, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    replies = await new_topic(partitions=2, prefix="replies")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    consumer = str(uuid.uuid4())
    create = new_event(EventType.UPSERT, consumer, expected_generation=None, project_id="p")
    again = new_event(EventType.UPSERT, consumer, expected_generation=None, project_id="p")
    async with running_daemon(settings), EventProducer(settings, reply_partition=1) as producer:
        applied = await producer.send_and_wait(create, wait_seconds=60)
        rejected = await producer.send_and_wait(again, wait_seconds=60)
        pending = await producer.request_raw(b"{not json", key=consumer.encode())
        invalid = await pending.outcome(wait_seconds=60)
    # (the daemon has stopped: every batch it took has ended its spans)
    assert (applied.kind, rejected.kind, rejected.reason, invalid.kind, invalid.reason) == (
        OutcomeKind.APPLIED,
        OutcomeKind.REJECTED,
        Reason.CONSUMER_EXISTS,
        OutcomeKind.INVALID,
        Reason.NOT_JSON,
    )
    sends = traced.named(f"send {topics.events}")
    events = traced.named(f"apply {topics.events}")
    receives = traced.named(f"receive {replies}")
    assert (len(sends), len(events), len(receives)) == (3, 3, 3)
    expected = [
        (create.event_id, "applied", None, StatusCode.UNSET),
        (again.event_id, "rejected", "consumer_exists", StatusCode.UNSET),
        (None, "invalid", "not_json", StatusCode.ERROR),
    ]
    for send, (event_id, outcome, reason, status) in zip(sends, expected, strict=True):
        assert send.parent is None and send.kind is SpanKind.PRODUCER
        event = _child_of(events, send)
        assert event.kind is SpanKind.CONSUMER
        attributes = dict(event.attributes or {})
        assert attributes["consumergen.outcome"] == outcome
        assert attributes.get("consumergen.reason") == reason
        assert event.status.status_code is status
        if event_id is not None:
            assert attributes["messaging.message.id"] == pseudonym(event_id, KEY)
            assert attributes["messaging.kafka.message.key"] == pseudonym(consumer, KEY)
        assert attributes["messaging.consumer.group.name"] == topics.group
        # The outcome in the producer's hand: a child of the daemon's event span.
        receive = _child_of(receives, event)
        assert receive.kind is SpanKind.CONSUMER
        assert [link.context.span_id for link in receive.links] == [send.context.span_id]
    # Each event span hangs off its producer's span and links its batch's span.
    batches = {s.context.span_id: s for s in traced.named(f"process {topics.events}")}
    for event in events:
        [link] = event.links
        batch = batches[link.context.span_id]
        assert dict(batch.attributes or {})["messaging.batch.message_count"] >= 1
        assert event.parent is not None
        assert event.parent.span_id in {link.context.span_id for link in batch.links}
    steps = {s.name for s in traced.spans() if s.parent and s.parent.span_id in batches}
    assert {"database transaction", "send outcomes", "send dead letters"} <= steps
    # What the daemon wrote carries the event span's context.
    for record in await read_all(kafka_bootstrap, topics.outcomes):
        carried = _carried(record.headers)
        assert carried.span_id in {e.context.span_id for e in events}
    [letter] = await read_all(kafka_bootstrap, topics.dlq)
    invalid_span = _child_of(events, sends[2])
    carried = _carried(letter.headers)
    assert (carried.trace_id, carried.span_id) == (
        invalid_span.context.trace_id,
        invalid_span.context.span_id,
    )


async def test_update_is_one_trace_over_its_attempts(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory, traced: Traced
) -> None:
    """``update()``: one ``update consumer`` span; each attempt's send is its child, and
    the daemon's event span and the outcome's receive follow under that send."""
    topics = Topics(
        events=await new_topic(partitions=1, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    replies = await new_topic(partitions=1, prefix="replies")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, reply_topic=replies)
    consumer = str(uuid.uuid4())
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.read_api is not None
        local = settings.model_copy(update={"read_api_port": daemon.read_api.port})
        async with EventProducer(local, reply_partition=0) as producer:
            result = await producer.update(
                consumer, lambda state: Change(project_id="p"), wait_seconds=60
            )
    assert result.outcome.ok and result.attempts == 1
    [update] = traced.named("update consumer")
    assert update.parent is None
    assert dict(update.attributes or {})["messaging.kafka.message.key"] == pseudonym(consumer, KEY)
    [send] = traced.named(f"send {topics.events}")
    assert send.parent is not None and send.parent.span_id == update.context.span_id
    event = _child_of(traced.named(f"apply {topics.events}"), send)
    receive = _child_of(traced.named(f"receive {replies}"), event)
    assert receive.context.trace_id == update.context.trace_id
