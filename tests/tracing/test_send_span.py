"""The producer's ``send`` span without a broker: it ends when aiokafka's delivery future
resolves (partition and offset on an ack, the error otherwise), exactly once; and the
reply's ``receive`` span hangs off the reply's context, or off the send without one."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from service.logging import pseudonym
from service.tracing.headers import inject
from service.tracing.spans import SendSpan, reply_received
from tests.tracing.conftest import KEY, Traced


async def test_a_send_span_ends_at_the_ack(traced: Traced) -> None:
    span = SendSpan(traced.tracing, "events")
    event_id, consumer = str(uuid.uuid4()), str(uuid.uuid4())
    span.describe(event_id, consumer)
    delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    span.settle_on(delivery)
    await asyncio.sleep(0)
    assert traced.spans() == []  # not before the ack
    delivery.set_result(SimpleNamespace(topic="events", partition=3, offset=41))
    await asyncio.sleep(0)
    [done] = traced.spans()
    assert dict(done.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "events",
        "messaging.message.id": pseudonym(event_id, KEY),
        "messaging.kafka.message.key": pseudonym(consumer, KEY),
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
    }
    span.fail(RuntimeError("late"))  # ended once: nothing more is recorded
    assert len(traced.spans()) == 1 and done.status.status_code is StatusCode.UNSET


async def test_a_failed_or_cancelled_send_is_an_error(traced: Traced) -> None:
    loop = asyncio.get_running_loop()
    failed, cancelled = loop.create_future(), loop.create_future()
    SendSpan(traced.tracing, "events").settle_on(failed)
    SendSpan(traced.tracing, "events").settle_on(cancelled)
    failed.set_exception(ConnectionResetError("broker went away"))
    cancelled.cancel()
    await asyncio.sleep(0)
    first, second = traced.spans()
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ConnectionResetError"
    assert [event.name for event in first.events] == ["exception"]
    assert (second.status.status_code, second.status.description) == (
        StatusCode.ERROR,
        "cancelled",
    )


async def test_a_hand_over_that_raises_ends_the_span_with_the_error(traced: Traced) -> None:
    span = SendSpan(traced.tracing, "events")
    span.fail(asyncio.CancelledError())
    span.fail(RuntimeError("again"))
    [done] = traced.spans()
    assert done.status.description == "CancelledError"


def test_the_headers_carry_the_send_span_and_replace_another_context(traced: Traced) -> None:
    other = SpanContext(1, 2, False, TraceFlags(1))
    headers = inject([("content-type", b"x")], trace.set_span_in_context(NonRecordingSpan(other)))
    span = SendSpan(traced.tracing, "events")
    sent = span.headers([*headers, ("tracestate", b"a=b")])
    names = [name for name, _ in sent]
    assert names == ["content-type", "traceparent"]
    ctx = span.context
    assert dict(sent)["traceparent"] == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode()
    )


def test_the_receive_span_is_a_child_of_the_replys_context_linked_to_the_send(
    traced: Traced,
) -> None:
    sent = SendSpan(traced.tracing, "events")
    daemon = SpanContext(sent.context.trace_id, 0xABC, False, TraceFlags(1))
    reply = inject(
        [("kafka_correlationId", b"c")], trace.set_span_in_context(NonRecordingSpan(daemon))
    )
    reply_received(traced.tracing, "replies", 1, 7, reply, sent.context)
    [receive] = traced.named("receive replies")
    assert receive.parent is not None and receive.parent.span_id == 0xABC
    assert receive.context.trace_id == sent.context.trace_id
    assert [link.context.span_id for link in receive.links] == [sent.context.span_id]


def test_without_a_context_in_the_reply_the_receive_span_is_a_child_of_the_send(
    traced: Traced,
) -> None:
    sent = SendSpan(traced.tracing, "events")
    reply_received(traced.tracing, "replies", 0, 0, [("kafka_correlationId", b"c")], sent.context)
    [receive] = traced.named("receive replies")
    assert receive.parent is not None and receive.parent.span_id == sent.context.span_id
    assert receive.links == ()


def sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the SDK logged: it warns of an end, a status or an attribute on an ended span."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_a_send_ended_by_its_ack_is_not_ended_again_by_a_late_failure(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    span = SendSpan(traced.tracing, "events")
    delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    span.settle_on(delivery)
    delivery.set_result(SimpleNamespace(topic="events", partition=0, offset=1))
    await asyncio.sleep(0)
    span.fail(RuntimeError("late"))
    [done] = traced.spans()
    assert done.status.status_code is StatusCode.UNSET and done.events == ()
    assert sdk_warnings(caplog) == []  # the operator's log has no "ended span" warning


async def test_a_failed_hand_over_is_not_ended_again_by_its_delivery(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    span = SendSpan(traced.tracing, "events")
    delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    span.settle_on(delivery)
    span.fail(ConnectionResetError("hand-over failed"))
    span.fail(RuntimeError("again"))
    delivery.set_result(SimpleNamespace(topic="events", partition=0, offset=1))
    await asyncio.sleep(0)
    [done] = traced.spans()
    assert (done.status.status_code, done.status.description) == (
        StatusCode.ERROR,
        "ConnectionResetError",
    )
    assert "messaging.kafka.offset" not in dict(done.attributes or {})
    assert sdk_warnings(caplog) == []


async def test_a_failed_send_records_the_error_itself(traced: Traced) -> None:
    """The exception event names the error's class and message (what an operator reads
    in the trace), whether the hand-over raised or the broker refused the record."""
    SendSpan(traced.tracing, "events").fail(ConnectionResetError("hand-over failed"))
    refused: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    SendSpan(traced.tracing, "events").settle_on(refused)
    refused.set_exception(ValueError("record too large"))
    await asyncio.sleep(0)
    recorded = [
        (
            dict(event.attributes or {}).get("exception.type"),
            dict(event.attributes or {}).get("exception.message"),
        )
        for span in traced.spans()
        for event in span.events
    ]
    assert recorded == [
        ("ConnectionResetError", "hand-over failed"),
        ("ValueError", "record too large"),
    ]


def test_the_receive_span_describes_the_reply_record(traced: Traced) -> None:
    sent = SendSpan(traced.tracing, "events")
    reply_received(traced.tracing, "replies", 2, 7, None, sent.context)
    [receive] = traced.named("receive")
    assert receive.name == "receive replies" and receive.kind is SpanKind.CONSUMER
    assert dict(receive.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "receive",
        "messaging.operation.type": "receive",
        "messaging.destination.name": "replies",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 7,
    }
