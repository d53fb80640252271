"""The daemon's spans without a broker: the partition worker over in-memory sinks with
the service's tracing installed (the fast twin of ``test_daemon_trace.py``)."""

from __future__ import annotations

import json
from dataclasses import replace

from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from service.apply.applier import Applier
from service.logging import pseudonym
from service.tracing import install
from service.tracing.headers import TRACEPARENT, extract, inject
from service.tracing.sdk import build_tracing
from tests.tracing.conftest import KEY, Traced
from tests.unit.test_partition_worker import FakeHost, _consumer, _event, _record, _run


def _sent(traced: Traced, record: ConsumerRecord) -> tuple[ConsumerRecord, trace.Span]:
    """``record`` as a traced producer sends it: a ``send`` span's context in its headers."""
    span = traced.tracing.tracer.start_span("send events")
    span.end()
    headers = inject(list(record.headers), trace.set_span_in_context(span))
    return replace(record, headers=headers), span


def _carried(headers: object) -> trace.SpanContext:
    return trace.get_current_span(extract(headers)).get_span_context()  # type: ignore[arg-type]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


async def test_a_traced_batch(applier: Applier, traced: Traced) -> None:
    consumer = _consumer(1)
    host = FakeHost(applier)
    host.config = replace(host.config, group_id="g")
    valid, sent_valid = _sent(traced, _event(10, consumer))
    invalid, sent_invalid = _sent(traced, _record(11, b"not json", consumer.encode()))
    records = [valid, invalid, _event(12, _consumer(2))]
    await _run(host, records)
    assert host.fatal_errors == []
    spans = traced.spans()
    batch = _one(spans, "process events")
    attributes = dict(batch.attributes or {})
    assert attributes["messaging.batch.message_count"] == 3
    assert attributes["messaging.consumer.group.name"] == "g"
    assert (
        attributes["consumergen.batch.first_offset"],
        attributes["consumergen.batch.last_offset"],
    ) == (10, 12)
    assert [link.context.span_id for link in batch.links] == [
        sent_valid.get_span_context().span_id,
        sent_invalid.get_span_context().span_id,
    ]
    events = {
        dict(s.attributes or {})["messaging.kafka.offset"]: s
        for s in spans
        if s.name == "apply events"
    }
    assert sorted(events) == [10, 11, 12]
    # A child of the context its record carried; of the batch span when it carried none.
    assert (
        events[10].parent is not None
        and events[10].parent.span_id == sent_valid.get_span_context().span_id
    )
    assert events[10].context.trace_id == sent_valid.get_span_context().trace_id
    assert (
        events[11].parent is not None
        and events[11].parent.span_id == sent_invalid.get_span_context().span_id
    )
    assert events[12].parent is not None and events[12].parent.span_id == batch.context.span_id
    assert dict(events[10].attributes or {})["consumergen.outcome"] == "applied"
    assert dict(events[10].attributes or {})["messaging.kafka.message.key"] == pseudonym(
        consumer, KEY
    )
    assert dict(events[11].attributes or {})["consumergen.reason"] == "not_json"
    assert events[11].status.status_code is StatusCode.ERROR
    steps = {
        s.name for s in spans if s.parent is not None and s.parent.span_id == batch.context.span_id
    }
    assert steps == {"database transaction", "send dead letters", "send outcomes", "apply events"}
    # What the sinks were given carries each event span's context.
    assert host.outcomes is not None
    for message in host.outcomes.messages:
        offset = json.loads(message.value)["source"]["offset"]
        assert _carried(message.headers).span_id == events[offset].context.span_id
    [letter] = host.dead_letters.letters
    assert [name for name, _ in letter.headers].count(TRACEPARENT) == 1
    assert _carried(letter.headers).span_id == events[11].context.span_id


async def test_untraced_the_sinks_get_no_trace_headers(applier: Applier) -> None:
    host = FakeHost(applier)
    await _run(host, [_event(0, _consumer(3)), _record(1, b"{}")])
    assert host.fatal_errors == []
    assert host.outcomes is not None
    assert [m.headers for m in host.outcomes.messages] == [None, None]
    assert TRACEPARENT not in dict(host.dead_letters.letters[0].headers)


async def test_an_unsampled_batch_traces_only_the_records_that_carry_a_context(
    applier: Applier, traced: Traced
) -> None:
    """Parent-based sampling with the daemon's own roots off (as at 1%, for the 99%): a
    record without a context costs no span and gets no header; one whose producer
    sampled it is recorded all the same, and its context reaches the outcome."""
    exporter = InMemorySpanExporter()
    unsampled = build_tracing([exporter], KEY, sampler=ParentBased(ALWAYS_OFF), batch=False)
    assert unsampled is not None
    previous = install(unsampled)
    try:
        host = FakeHost(applier)
        sent, send = _sent(traced, _event(20, _consumer(5)))
        await _run(host, [_event(19, _consumer(4)), sent])
    finally:
        install(previous)
        unsampled.shutdown()
    assert host.fatal_errors == []
    spans = list(exporter.get_finished_spans())
    assert [s.name for s in spans if s.name.startswith("apply")] == ["apply events"]
    [event] = [s for s in spans if s.name == "apply events"]
    assert event.parent is not None and event.parent.span_id == send.get_span_context().span_id
    assert not [s for s in spans if s.name == "process events"]  # the root was not sampled
    assert host.outcomes is not None
    by_offset = {json.loads(m.value)["source"]["offset"]: m for m in host.outcomes.messages}
    assert by_offset[19].headers is None
    assert _carried(by_offset[20].headers).span_id == event.context.span_id


async def test_an_unsampled_context_is_passed_on_without_a_span(applier: Applier) -> None:
    """Parent-based sampling (the default): a record whose producer did not sample it
    costs no daemon span; its own context goes on to the outcome record."""
    exporter = InMemorySpanExporter()
    tracing = build_tracing([exporter], KEY, sampler=ParentBased(ALWAYS_ON), batch=False)
    assert tracing is not None
    unsampled = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
    record = _event(30, _consumer(6))
    headers = inject([], trace.set_span_in_context(NonRecordingSpan(unsampled)))
    previous = install(tracing)
    try:
        host = FakeHost(applier)
        await _run(host, [replace(record, headers=headers)])
    finally:
        install(previous)
        tracing.shutdown()
    assert host.fatal_errors == []
    spans = list(exporter.get_finished_spans())
    assert [s.name for s in spans if s.name.startswith("apply")] == []
    [batch] = [s for s in spans if s.name == "process events"]  # the batch, a sampled root
    assert [link.context.span_id for link in batch.links] == [0x5678]
    assert host.outcomes is not None
    [message] = host.outcomes.messages
    carried = _carried(message.headers)
    assert (carried.trace_id, carried.span_id, carried.trace_flags.sampled) == (
        0x1234,
        0x5678,
        False,
    )


async def test_a_failing_batchs_span_names_its_partition_and_the_error(
    applier: Applier, traced: Traced
) -> None:
    """A batch that fails (here a bug in the applier) still ends its span, marked as an
    error with the error's class, and the span says which partition the batch was of
    (what an operator filters the failing batches of a partition by)."""

    async def broken(items: object) -> None:
        raise RuntimeError("a bug in the applier")

    host = FakeHost(applier)
    host.applier = type("Broken", (), {"apply_batch": staticmethod(broken)})()
    await _run(host, [_event(40, _consumer(7))])
    assert [type(exc) for exc in host.fatal_errors] == [RuntimeError]
    batch = _one(traced.spans(), "process events")
    assert dict(batch.attributes or {})["messaging.destination.partition.id"] == "0"
    assert (batch.status.status_code, batch.status.description) == (
        StatusCode.ERROR,
        "RuntimeError",
    )
