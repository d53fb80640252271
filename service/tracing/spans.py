"""The spans the service makes, named and described by OpenTelemetry's messaging
semantic conventions (``send {topic}``, ``receive {topic}``, ``process {topic}``;
``messaging.*`` attributes).  Every identifier is a pseudonym: event ids and consumer
UUIDs go through ``Tracing.pseudonym`` before they become an attribute.

Producer side: ``SendSpan`` is one event's ``send`` (a PRODUCER span, a child of the
current span or a new root), injected into the record's headers and ended at the
broker's acknowledgement; ``reply_received`` is the ``receive`` span of an outcome
record, a child of the context the reply carries (the daemon's event span), so the
producer's wait closes the trace its send opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, StatusCode

from service.tracing.headers import Headers, extract, inject, without_trace_context
from service.tracing.sdk import Tracing

SYSTEM: Final = "messaging.system"
OPERATION_NAME: Final = "messaging.operation.name"
OPERATION_TYPE: Final = "messaging.operation.type"
DESTINATION: Final = "messaging.destination.name"
PARTITION: Final = "messaging.destination.partition.id"
OFFSET: Final = "messaging.kafka.offset"
MESSAGE_ID: Final = "messaging.message.id"
MESSAGE_KEY: Final = "messaging.kafka.message.key"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
BATCH_COUNT: Final = "messaging.batch.message_count"
#: The service's own attributes.
OUTCOME: Final = "consumergen.outcome"
REASON: Final = "consumergen.reason"
GENERATION_AFTER: Final = "consumergen.generation_after"
KAFKA: Final = "kafka"


def messaging(operation: str, kind: str, topic: str) -> dict[str, Any]:
    """The attributes every messaging span has."""
    return {SYSTEM: KAFKA, OPERATION_NAME: operation, OPERATION_TYPE: kind, DESTINATION: topic}


class SendSpan:
    """One event's ``send`` span: started before the hand-over, ended at the ack."""

    __slots__ = ("_ended", "_span", "_tracing")

    def __init__(self, tracing: Tracing, topic: str, links: Sequence[Link] = ()) -> None:
        self._tracing = tracing
        self._ended = False
        self._span: Span = tracing.tracer.start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes=messaging("send", "send", topic),
            links=links,
        )

    @classmethod
    def republishing(cls, tracing: Tracing, topic: str, original: Headers) -> SendSpan:
        """The ``send`` of a record sent again (``replay --republish``): a span of the
        current trace (or a new root) linked to the context the record carried."""
        carried = trace.get_current_span(extract(original)).get_span_context()
        return cls(tracing, topic, [Link(carried)] if carried.is_valid else [])

    @property
    def context(self) -> SpanContext:
        return self._span.get_span_context()

    def headers(self, headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """``headers`` with this span's trace context (any other one removed)."""
        return inject(without_trace_context(headers), trace.set_span_in_context(self._span))

    def describe(self, event_id: str, consumer_uuid: str) -> None:
        """The event's id and key, as pseudonyms."""
        if self._span.is_recording():
            self._span.set_attribute(MESSAGE_ID, self._tracing.pseudonym(event_id))
            self._span.set_attribute(MESSAGE_KEY, self._tracing.pseudonym(consumer_uuid))

    def settle_on(self, delivery: asyncio.Future[Any]) -> None:
        """End the span when aiokafka's delivery future resolves (ack or error)."""
        delivery.add_done_callback(self._settled)

    def fail(self, error: BaseException) -> None:
        """The hand-over itself failed: record it and end (once)."""
        if self._ended:
            return
        self._ended = True
        self._span.record_exception(error)
        self._span.set_status(StatusCode.ERROR, type(error).__name__)
        self._span.end()

    def _settled(self, delivery: asyncio.Future[Any]) -> None:
        if self._ended:
            return
        self._ended = True
        if delivery.cancelled():
            self._span.set_status(StatusCode.ERROR, "cancelled")
        elif (error := delivery.exception()) is not None:
            self._span.record_exception(error)
            self._span.set_status(StatusCode.ERROR, type(error).__name__)
        else:
            meta = delivery.result()
            self._span.set_attribute(PARTITION, str(meta.partition))
            self._span.set_attribute(OFFSET, meta.offset)
        self._span.end()


@contextmanager
def update_span(tracing: Tracing, consumer_uuid: str) -> Iterator[Span]:
    """The span of one read-modify-write loop (``EventProducer.update``), current while
    it runs, so that each attempt's ``send`` and ``receive`` are its children."""
    with tracing.tracer.start_as_current_span(
        "update consumer", attributes={MESSAGE_KEY: tracing.pseudonym(consumer_uuid)}
    ) as span:
        yield span


def reply_received(
    tracing: Tracing,
    topic: str,
    partition: int,
    offset: int,
    headers: Headers | None,
    sent: SpanContext | None,
) -> None:
    """The ``receive`` span of an outcome record: a child of the reply's trace context
    (the daemon's event span), linked to the send it answers; without a context in the
    reply (a daemon that does not trace), a child of the send itself."""
    parent = extract(headers)
    links: list[Link] = []
    if trace.get_current_span(parent).get_span_context().is_valid:
        if sent is not None:
            links.append(Link(sent))
    elif sent is not None:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(sent))
    attributes = messaging("receive", "receive", topic)
    attributes[PARTITION] = str(partition)
    attributes[OFFSET] = offset
    span = tracing.tracer.start_span(
        f"receive {topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    )
    span.end()
