"""The daemon's spans of one batch (``BatchTrace``), made only while tracing is on.

Per batch, a ``process {topic}`` CONSUMER span (messaging system, destination,
partition, first and last offsets, batch size, consumer group) linked to the context
each record carried; per record, an ``apply {topic}`` span that is a child of the
record's context (the producer's ``send``; of the batch span when the record carried
none) from admission to the outcome, with the outcome, reason and generation as
attributes; and, as children of the batch span, one span per step the worker names
(the database transaction, the dead-letter and outcome writes).  The outcome records,
the replies and the dead letters carry the ``traceparent`` of their event's span, so a
producer waiting for the reply closes the trace its send opened.

The worker makes one ``BatchTrace`` per batch when ``service.tracing.active()`` says
so, and none otherwise: with tracing off there is no work per event at all.  A record
that carried no context in a batch whose span is not sampled gets no span and no
headers either (nothing would be recorded or followed); under a parent-based sampler (the
default), a record whose context is not sampled gets no span of its own and its context
is passed on as it came, so that the trace still reaches the reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, StatusCode

from service.domain.outcomes import Outcome, OutcomeKind
from service.sinks.base import DeadLetter, OutcomeMessage
from service.tracing.headers import extract, inject, without_trace_context
from service.tracing.sdk import Tracing
from service.tracing.spans import (
    BATCH_COUNT,
    CONSUMER_GROUP,
    GENERATION_AFTER,
    MESSAGE_ID,
    MESSAGE_KEY,
    OFFSET,
    OUTCOME,
    PARTITION,
    REASON,
    messaging,
)

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.contract.decode import InvalidEvent

FIRST_OFFSET = "consumergen.batch.first_offset"
LAST_OFFSET = "consumergen.batch.last_offset"


class BatchTrace:
    """The spans of one batch of one partition (see the module docstring)."""

    __slots__ = ("_batch", "_context", "_ended", "_events", "_tracing")

    def __init__(
        self,
        tracing: Tracing,
        topic: str,
        partition: int,
        batch: Sequence[ConsumerRecord],
        group: str | None,
    ) -> None:
        self._tracing = tracing
        self._ended = False
        tracer = tracing.tracer
        contexts = [extract(record.headers) for record in batch]
        carried = [trace.get_current_span(c).get_span_context() for c in contexts]
        common: dict[str, Any] = {PARTITION: str(partition)}
        if group is not None:
            common[CONSUMER_GROUP] = group
        attributes = messaging("process", "process", topic) | common
        attributes |= {
            BATCH_COUNT: len(batch),
            FIRST_OFFSET: batch[0].offset,
            LAST_OFFSET: batch[-1].offset,
        }
        self._batch: Span = tracer.start_span(
            f"process {topic}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(c) for c in carried if c.is_valid],
        )
        self._context = trace.set_span_in_context(self._batch)
        batch_link = [Link(self._batch.get_span_context())]
        recording = self._batch.is_recording()
        skip_unsampled = tracing.parent_based
        self._events: dict[int, Span] = {}
        for record, context, parent in zip(batch, contexts, carried, strict=True):
            if not parent.is_valid and not recording:
                continue  # no trace to follow or to record: no span, no headers
            if skip_unsampled and parent.is_valid and not parent.trace_flags.sampled:
                # Nothing under it would be recorded: no span; its context goes on as it
                # came (to the outcome record, the reply, the dead letter).
                self._events[record.offset] = NonRecordingSpan(parent)
                continue
            event = messaging("apply", "process", topic) | common
            event[OFFSET] = record.offset
            self._events[record.offset] = tracer.start_span(
                f"apply {topic}",
                context=context if parent.is_valid else self._context,
                kind=SpanKind.CONSUMER,
                attributes=event,
                links=batch_link if parent.is_valid else (),
            )

    @contextmanager
    def step(self, name: str) -> Iterator[Span]:
        """A span of one step of the batch (a child of the batch span, current inside)."""
        with self._tracing.tracer.start_as_current_span(name, context=self._context) as span:
            yield span

    def decided(
        self,
        settled: Sequence[tuple[ConsumerRecord, Outcome]],
        invalid: Sequence[tuple[ConsumerRecord, InvalidEvent]],
    ) -> None:
        """Each event's outcome on its span (ids and keys as pseudonyms)."""
        pseudonym = self._tracing.pseudonym
        for record, outcome in settled:
            span = self._events.get(record.offset)
            if span is None or not span.is_recording():
                continue
            span.set_attribute(MESSAGE_ID, pseudonym(outcome.event_id))
            span.set_attribute(MESSAGE_KEY, pseudonym(outcome.consumer_uuid))
            span.set_attribute(OUTCOME, outcome.kind.value)
            if outcome.reason is not None:
                span.set_attribute(REASON, outcome.reason.value)
            if outcome.generation_after is not None:
                span.set_attribute(GENERATION_AFTER, outcome.generation_after)
            if outcome.kind is OutcomeKind.FAILED:
                span.set_status(StatusCode.ERROR, "cas_retries_exhausted")
        for record, error in invalid:
            span = self._events.get(record.offset)
            if span is None or not span.is_recording():
                continue
            span.set_attribute(OUTCOME, OutcomeKind.INVALID.value)
            span.set_attribute(REASON, error.reason.value)
            span.set_status(StatusCode.ERROR, error.reason.value)

    def stamp(
        self,
        settled: Sequence[tuple[ConsumerRecord, Outcome]],
        invalid: Sequence[tuple[ConsumerRecord, InvalidEvent]],
        dead: Sequence[DeadLetter],
        messages: Sequence[OutcomeMessage] | None,
    ) -> tuple[list[DeadLetter], list[OutcomeMessage] | None]:
        """The batch is decided: outcomes on the event spans, and the dead letters and
        outcome messages with their event span's trace context (the one call the
        worker makes between applying a batch and writing its sinks)."""
        if not self._events:
            return list(dead), None if messages is None else list(messages)
        self.decided(settled, invalid)
        stamped = None if messages is None else self.outcome_messages(messages)
        return self.dead_letters(dead), stamped

    def _headers(
        self, offset: int, headers: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        span = self._events[offset]
        return inject(without_trace_context(headers), trace.set_span_in_context(span))

    def outcome_messages(self, messages: Sequence[OutcomeMessage]) -> list[OutcomeMessage]:
        """``messages`` with the trace context of each one's event span.  A message is
        matched to its record by the source offset the outcome record names (the batch
        is one partition's), not by its place in the list, which the worker may order or
        filter as it needs."""
        events = self._events
        stamped = []
        for message in messages:
            offset = orjson.loads(message.value)["source"]["offset"]
            if offset in events:
                headers = self._headers(offset, message.headers or ())
                message = dataclasses.replace(message, headers=headers)
            stamped.append(message)
        return stamped

    def dead_letters(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """``letters`` with the trace context of their event's span in place of the one
        their record carried."""
        return [
            dataclasses.replace(letter, headers=self._headers(letter.origin.offset, letter.headers))
            if letter.origin.offset in self._events
            else letter
            for letter in letters
        ]

    def end(self, error: BaseException | None = None) -> None:
        """End every span (once): at the commit, or when the batch is abandoned."""
        if self._ended:
            return
        self._ended = True
        for span in self._events.values():
            span.end()
        if error is not None:
            self._batch.set_status(StatusCode.ERROR, type(error).__name__)
        self._batch.end()
