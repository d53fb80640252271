"""``BatchTrace`` on its own (``service.tracing.daemon``), fed records by hand: the batch
span and each event's span with their names, kinds, attributes, parents and links; the
outcome on each event span; the outcome messages and dead letters stamped with their
event's context (matched by offset); and every span ended once, the batch's with the
error that abandoned it.  ``test_worker_trace.py`` is the same through the worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from service.contract.decode import InvalidEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.logging import pseudonym
from service.sinks.base import DeadLetter, OutcomeMessage
from service.testing.fake_kafka import fetched_record
from service.tracing import batch_trace, install
from service.tracing.daemon import BatchTrace
from service.tracing.headers import TRACEPARENT, TRACESTATE, extract, inject
from service.tracing.sdk import Tracing, build_tracing
from tests.tracing.conftest import KEY, Traced

TP = TopicPartition("events", 3)


def context(span_id: int, *, sampled: bool = True) -> SpanContext:
    return SpanContext(
        0xABC0 + span_id, span_id, is_remote=False, trace_flags=TraceFlags(1 if sampled else 0)
    )


def record(offset: int, carried: SpanContext | None = None) -> ConsumerRecord:
    headers = [("content-type", b"application/json")]
    if carried is not None:
        headers = inject(headers, trace.set_span_in_context(NonRecordingSpan(carried)))
    return fetched_record(TP, offset, b"{}", b"k", headers)


def carried_by(headers: Any) -> SpanContext:
    return trace.get_current_span(extract(headers)).get_span_context()


def outcome(kind: OutcomeKind, reason: Reason | None = None, generation: int | None = 1) -> Any:
    return Outcome(str(uuid.uuid4()), str(uuid.uuid4()), kind, reason, generation, 1)


def message(offset: int, headers: list[tuple[str, bytes]] | None = None) -> OutcomeMessage:
    value = orjson.dumps({"source": {"topic": "events", "partition": 3, "offset": offset}})
    return OutcomeMessage(b"key", value, None, headers)


def letter(offset: int, headers: list[tuple[str, bytes]]) -> DeadLetter:
    return DeadLetter(b"k", b"{", headers, EventSource("events", 3, offset), "not_json", True)


@pytest.fixture
def sampled_by() -> Iterator[Any]:
    """A tracing with ``sampler`` (exported as each span ends), and what it exported."""
    made: list[Tracing] = []

    def build(sampler: Sampler) -> tuple[Tracing, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tracing = build_tracing([exporter], KEY, sampler=sampler, batch=False)
        assert tracing is not None
        made.append(tracing)
        return tracing, exporter

    yield build
    for tracing in made:
        tracing.shutdown()


def by_offset(spans: list[ReadableSpan]) -> dict[Any, ReadableSpan]:
    return {
        dict(s.attributes or {})["messaging.kafka.offset"]: s
        for s in spans
        if s.name == "apply events"
    }


def test_the_batch_span_and_each_event_span(traced: Traced) -> None:
    sent = context(0x11)
    batch = BatchTrace(traced.tracing, "events", 3, [record(7, sent), record(8), record(9)], "g")
    assert traced.spans() == []  # nothing ends before the batch does
    batch.end()
    [process] = traced.named("process")
    assert (process.name, process.kind) == ("process events", SpanKind.CONSUMER)
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "events",
        "messaging.destination.partition.id": "3",
        "messaging.consumer.group.name": "g",
        "messaging.batch.message_count": 3,
        "consumergen.batch.first_offset": 7,
        "consumergen.batch.last_offset": 9,
    }
    assert [link.context.span_id for link in process.links] == [0x11]  # only those carried
    assert process.status.status_code is StatusCode.UNSET
    events = by_offset(traced.spans())
    assert sorted(events) == [7, 8, 9]
    for offset, span in events.items():
        assert (span.name, span.kind) == ("apply events", SpanKind.CONSUMER)
        assert dict(span.attributes or {}) == {
            "messaging.system": "kafka",
            "messaging.operation.name": "apply",
            "messaging.operation.type": "process",
            "messaging.destination.name": "events",
            "messaging.destination.partition.id": "3",
            "messaging.consumer.group.name": "g",
            "messaging.kafka.offset": offset,
        }
    assert process.context is not None and events[7].parent is not None
    assert (events[7].parent.trace_id, events[7].parent.span_id) == (sent.trace_id, 0x11)
    assert [link.context.span_id for link in events[7].links] == [process.context.span_id]
    for offset in (8, 9):  # carried no context: children of the batch, no link
        parent = events[offset].parent
        assert parent is not None and parent.span_id == process.context.span_id
        assert events[offset].links == ()


def test_without_a_group_the_spans_name_none(traced: Traced) -> None:
    BatchTrace(traced.tracing, "events", 0, [record(1)], None).end()
    for span in traced.spans():
        assert "messaging.consumer.group.name" not in (span.attributes or {})
        assert dict(span.attributes or {})["messaging.destination.partition.id"] == "0"


def test_the_outcome_of_each_event_on_its_span(traced: Traced) -> None:
    records = [record(n) for n in range(5)]
    batch = BatchTrace(traced.tracing, "events", 3, records, "g")
    applied = outcome(OutcomeKind.APPLIED, generation=4)
    rejected = outcome(OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, generation=None)
    failed = outcome(OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED, generation=2)
    invalid = InvalidEvent(Reason.NOT_JSON, "not JSON")
    settled = [(records[0], applied), (records[1], rejected), (records[2], failed)]
    batch.decided(settled, [(records[3], invalid)])
    batch.end()
    events = by_offset(traced.spans())
    own = {
        "messaging.kafka.offset",
        "messaging.system",
        "messaging.operation.name",
        "messaging.operation.type",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.consumer.group.name",
    }

    def added(offset: int) -> dict[str, Any]:
        return {k: v for k, v in (events[offset].attributes or {}).items() if k not in own}

    assert added(0) == {
        "messaging.message.id": pseudonym(applied.event_id, KEY),
        "messaging.kafka.message.key": pseudonym(applied.consumer_uuid, KEY),
        "consumergen.outcome": "applied",
        "consumergen.generation_after": 4,
    }
    assert events[0].status.status_code is StatusCode.UNSET
    assert added(1) == {
        "messaging.message.id": pseudonym(rejected.event_id, KEY),
        "messaging.kafka.message.key": pseudonym(rejected.consumer_uuid, KEY),
        "consumergen.outcome": "rejected",
        "consumergen.reason": "generation_conflict",
    }
    assert events[1].status.status_code is StatusCode.UNSET
    assert added(2)["consumergen.outcome"] == "failed"
    assert added(2)["consumergen.generation_after"] == 2
    assert (events[2].status.status_code, events[2].status.description) == (
        StatusCode.ERROR,
        "cas_retries_exhausted",
    )
    assert added(3) == {"consumergen.outcome": "invalid", "consumergen.reason": "not_json"}
    assert (events[3].status.status_code, events[3].status.description) == (
        StatusCode.ERROR,
        "not_json",
    )
    assert added(4) == {}  # not decided in this batch: nothing said


def test_outcomes_of_events_without_a_span_are_skipped(sampled_by: Any) -> None:
    """A sampled-out root: a record that carried no context has no span; one whose
    context was not sampled has a non-recording one.  Neither takes attributes."""
    tracing, exporter = sampled_by(ParentBased(ALWAYS_OFF))
    records = [record(1), record(2, context(0x22, sampled=False)), record(3, context(0x33))]
    batch = BatchTrace(tracing, "events", 3, records, None)
    batch.decided(
        [(r, outcome(OutcomeKind.APPLIED)) for r in records[:2]],
        [(records[2], InvalidEvent(Reason.NOT_JSON, "x"))],
    )
    batch.decided([], [(records[0], InvalidEvent(Reason.NOT_JSON, "x"))])
    batch.end()
    [event] = by_offset(list(exporter.get_finished_spans())).values()
    assert dict(event.attributes or {})["consumergen.reason"] == "not_json"


def test_an_unsampled_context_gets_a_span_when_the_sampler_ignores_parents(
    sampled_by: Any,
) -> None:
    tracing, exporter = sampled_by(ALWAYS_ON)
    unsampled = context(0x44, sampled=False)
    batch = BatchTrace(tracing, "events", 3, [record(1, unsampled)], None)
    batch.end()
    [event] = by_offset(list(exporter.get_finished_spans())).values()
    assert event.parent is not None and event.parent.span_id == 0x44


def test_the_sinks_records_carry_their_event_s_context_matched_by_offset(
    traced: Traced,
) -> None:
    records = [record(10, context(0x55)), record(11)]
    batch = BatchTrace(traced.tracing, "events", 3, records, "g")
    # in another order than the records', and one of an offset the batch does not have
    messages = [message(11), message(99, [("x", b"y")]), message(10, [("x", b"y")])]
    stale = [("error.reason", b"not_json"), (TRACESTATE, b"stale=1"), *records[0].headers]
    letters = [letter(10, stale), letter(98, [])]
    dead, stamped = batch.stamp([], [], letters, messages)
    batch.end()
    events = by_offset(traced.spans())
    assert stamped is not None
    assert carried_by(stamped[0].headers).span_id == events[11].context.span_id
    assert stamped[1] == messages[1]  # not of this batch: as it came
    assert carried_by(stamped[2].headers).span_id == events[10].context.span_id
    assert [name for name, _ in stamped[2].headers or ()] == ["x", TRACEPARENT]
    assert carried_by(dead[0].headers).span_id == events[10].context.span_id
    names = [name for name, _ in dead[0].headers]
    assert names == ["error.reason", "content-type", TRACEPARENT]  # no stale tracestate
    assert dead[1] == letters[1]
    _, none = batch.stamp([], [], [], None)
    assert none is None


def test_with_no_event_span_stamping_changes_nothing(sampled_by: Any) -> None:
    tracing, exporter = sampled_by(ParentBased(ALWAYS_OFF))
    records = [record(1)]
    batch = BatchTrace(tracing, "events", 3, records, None)
    messages = [message(1)]
    letters = [letter(1, [("error.reason", b"not_json")])]
    dead, stamped = batch.stamp([(records[0], outcome(OutcomeKind.APPLIED))], [], letters, messages)
    assert (dead, stamped) == (letters, messages)
    assert batch.stamp([], [], letters, None) == (letters, None)
    batch.end()
    assert list(exporter.get_finished_spans()) == []


def test_a_step_is_a_current_child_of_the_batch_span(traced: Traced) -> None:
    batch = BatchTrace(traced.tracing, "events", 3, [record(1)], None)
    with batch.step("database transaction") as step:
        assert trace.get_current_span() is step
    batch.end()
    [process] = traced.named("process")
    [done] = traced.named("database transaction")
    assert done.parent is not None and process.context is not None
    assert done.parent.span_id == process.context.span_id


def test_every_span_ends_once_and_an_abandoned_batch_says_why(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    batch = BatchTrace(traced.tracing, "events", 3, [record(1), record(2)], None)
    batch.end(ConnectionResetError("database gone"))
    batch.end()
    batch.end(RuntimeError("again"))
    spans = traced.spans()
    assert sorted(s.name for s in spans) == ["apply events", "apply events", "process events"]
    [process] = traced.named("process")
    assert (process.status.status_code, process.status.description) == (
        StatusCode.ERROR,
        "ConnectionResetError",
    )
    assert all(s.status.status_code is StatusCode.UNSET for s in traced.named("apply"))
    # ended once: the SDK would warn of an end or a status on an ended span
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


def test_the_worker_s_one_check_makes_a_batch_trace_only_when_tracing(traced: Traced) -> None:
    made = batch_trace("events", 3, [record(5)], "g")
    assert isinstance(made, BatchTrace)
    made.end()
    [process] = traced.named("process")
    assert dict(process.attributes or {})["messaging.consumer.group.name"] == "g"
    assert dict(process.attributes or {})["consumergen.batch.first_offset"] == 5
    previous = install(None)
    try:
        assert batch_trace("events", 3, [record(5)], "g") is None
    finally:
        install(previous)


def test_an_event_without_a_span_does_not_hide_the_outcomes_after_it(sampled_by: Any) -> None:
    """A sampled-out root: the record that carried no context has no span, the one that
    carried an unsampled context a non-recording one; the sampled events after them in
    the same decision still get their outcome."""
    tracing, exporter = sampled_by(ParentBased(ALWAYS_OFF))
    records = [
        record(1),
        record(2, context(0x22, sampled=False)),
        record(3, context(0x33)),
        record(4, context(0x44)),
    ]
    batch = BatchTrace(tracing, "events", 3, records, None)
    batch.decided(
        [(r, outcome(OutcomeKind.APPLIED)) for r in records[:3]],
        [(r, InvalidEvent(Reason.NOT_JSON, "x")) for r in (records[0], records[1], records[3])],
    )
    batch.end()
    events = by_offset(list(exporter.get_finished_spans()))
    assert sorted(events) == [3, 4]
    assert dict(events[3].attributes or {})["consumergen.outcome"] == "applied"
    assert dict(events[4].attributes or {})["consumergen.outcome"] == "invalid"


def test_the_worker_s_check_names_the_batch_s_partition(traced: Traced) -> None:
    made = batch_trace("events", 7, [record(5, context(0x55))], None)
    assert made is not None
    made.end()
    spans = traced.spans()
    assert sorted(s.name for s in spans) == ["apply events", "process events"]
    for span in spans:
        assert dict(span.attributes or {})["messaging.destination.partition.id"] == "7"
