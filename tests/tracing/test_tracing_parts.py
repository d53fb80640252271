"""The tracing package's smaller parts without a broker: the Kafka header getter and
setter, the redacting exporter's copy (everything but text as the SDK made it, one
resource per provider), the strings the span guard looks at, the tracer's scope, the
batching processor, a republished record's ``send`` span, and the front's install and
shutdown."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from service import __version__
from service import tracing as tracing_front
from service.config import ConfigError, Settings
from service.logging import Redactor, pseudonym
from service.tracing.headers import GETTER, SETTER, TRACEPARENT, inject
from service.tracing.redaction import RedactingSpanExporter, mapping_strings, span_strings
from service.tracing.sdk import build_tracing, exporter_classes
from service.tracing.spans import SendSpan
from tests.tracing.conftest import KEY, Traced

# --- headers -----------------------------------------------------------------------------


def test_the_getter_reads_every_value_of_a_name_as_text() -> None:
    carrier: list[tuple[str, bytes | None]] = [
        ("traceparent", b"one"),
        ("other", b"x"),
        ("traceparent", None),
        ("traceparent", bytearray(b"tw\xffo")),  # type: ignore[list-item]
    ]
    assert GETTER.get(carrier, "traceparent") == ["one", "tw\ufffdo"]
    assert GETTER.get(carrier, "missing") is None
    assert GETTER.get([("traceparent", None)], "traceparent") is None
    assert GETTER.keys(carrier) == ["traceparent", "other", "traceparent", "traceparent"]


def test_the_setter_replaces_a_header_of_the_same_name_at_the_end() -> None:
    carrier = [("traceparent", b"old"), ("a", b"1"), ("traceparent", b"older")]
    SETTER.set(carrier, "traceparent", "new\u00e9")
    assert carrier == [("a", b"1"), ("traceparent", "new\u00e9".encode())]


def test_inject_without_a_context_takes_the_current_span(traced: Traced) -> None:
    with traced.tracing.tracer.start_as_current_span("current") as span:
        headers = inject([("a", b"1")])
    ctx = span.get_span_context()
    assert headers == [
        ("a", b"1"),
        (
            TRACEPARENT,
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode(),
        ),
    ]


# --- the redacting exporter ----------------------------------------------------------------


class Recording(SpanExporter):
    """An exporter that keeps what it was given and what it was asked."""

    def __init__(self) -> None:
        self.exported: list[ReadableSpan] = []
        self.calls: list[tuple[str, Any]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.calls.append(("force_flush", timeout_millis))
        return False


def test_the_copy_keeps_everything_but_text_as_the_sdk_made_it() -> None:
    inner = InMemorySpanExporter()
    resource = Resource({"service.name": "s"}, "https://opentelemetry.io/schemas/1.21.0")
    tracing = build_tracing([inner], KEY, sampler=ALWAYS_ON, resource=resource, batch=False)
    assert tracing is not None
    linked = SpanContext(0x1, 0x2, False, TraceFlags(1))
    with tracing.tracer.start_as_current_span("parent") as parent:
        span = tracing.tracer.start_span(
            "child",
            kind=SpanKind.PRODUCER,
            links=[Link(linked), Link(linked, {"n": 3})],
            attributes={"count": 7, "flags": [True, False], "ratios": (0.5,)},
        )
        span.add_event("event", {"n": 1})
        span.end()
    given = [s for s in inner.get_finished_spans() if s.name == "child"]
    tracing.shutdown()
    original = span
    [copy] = given
    assert copy.context == original.get_span_context()
    assert copy.parent is not None and copy.parent.span_id == parent.get_span_context().span_id
    assert copy.kind is SpanKind.PRODUCER
    assert (copy.start_time, copy.end_time) == (original.start_time, original.end_time)  # type: ignore[attr-defined]
    assert copy.instrumentation_scope == original.instrumentation_scope  # type: ignore[attr-defined]
    assert dict(copy.attributes or {}) == {"count": 7, "flags": (True, False), "ratios": (0.5,)}
    [event] = copy.events
    assert (event.name, dict(event.attributes or {})) == ("event", {"n": 1})
    assert event.timestamp == original.events[0].timestamp  # type: ignore[attr-defined]
    assert [(link.context, dict(link.attributes or {})) for link in copy.links] == [
        (linked, {}),
        (linked, {"n": 3}),
    ]
    assert copy.resource.attributes == resource.attributes
    assert copy.resource.schema_url == resource.schema_url
    assert copy.status.description is None


def test_each_provider_s_resource_is_redacted_once_and_kept_apart() -> None:
    consumer = str(uuid.uuid4())
    inner = Recording()
    guard = RedactingSpanExporter(inner, Redactor(KEY))
    spans = []
    for name in (f"first {consumer}", "second"):
        resource = Resource({"service.name": name})
        tracing = build_tracing([], KEY, sampler=ALWAYS_ON, resource=resource, batch=False)
        assert tracing is not None
        for _ in range(2):
            span = tracing.tracer.start_span("s")
            span.end()
            spans.append(span)
    guard.export(spans)  # type: ignore[arg-type]
    names = [s.resource.attributes["service.name"] for s in inner.exported]
    mine = pseudonym(consumer, KEY)
    assert names == [f"first {mine}", f"first {mine}", "second", "second"]
    assert inner.exported[0].resource is inner.exported[1].resource  # redacted once
    assert inner.exported[2].resource is inner.exported[3].resource


def test_the_exporter_passes_flush_and_shutdown_on() -> None:
    inner = Recording()
    guard = RedactingSpanExporter(inner, Redactor(KEY))
    assert guard.force_flush(1234) is False
    guard.shutdown()
    assert inner.calls == [("force_flush", 1234), ("shutdown", None)]
    assert RedactingSpanExporter(inner, Redactor(KEY)).force_flush() is False
    assert inner.calls[-1] == ("force_flush", 30_000)


def test_the_strings_the_guard_looks_at() -> None:
    assert mapping_strings(None) == []
    assert mapping_strings({"a": "x", "b": 1, "c": ("y", 2, "z")}) == ["a", "x", "b", "c", "y", "z"]
    inner = InMemorySpanExporter()
    resource = Resource({"service.name": "svc"})
    tracing = build_tracing([inner], KEY, sampler=ALWAYS_ON, resource=resource, batch=False)
    assert tracing is not None
    span = tracing.tracer.start_span(
        "name", attributes={"k": "v"}, links=[Link(SpanContext(1, 2, False), {"lk": "lv"})]
    )
    span.add_event("ev", {"ek": "evalue"})
    span.set_status(trace.StatusCode.ERROR, "why")
    span.end()
    [done] = inner.get_finished_spans()
    own = ["name", "k", "v", "ev", "ek", "evalue", "lk", "lv", "why"]
    assert span_strings(done, resource=False) == own
    with_resource = span_strings(done)
    assert with_resource[:3] == ["name", "k", "v"] and "svc" in with_resource
    assert set(with_resource) - set(own) == set(mapping_strings(done.resource.attributes))
    tracing.shutdown()


# --- the SDK set-up ------------------------------------------------------------------------


def test_the_service_s_spans_name_its_scope_and_version(traced: Traced) -> None:
    traced.tracing.tracer.start_span("s").end()
    [span] = traced.spans()
    assert span.instrumentation_scope is not None
    assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == (
        "consumergen",
        __version__,
    )


def test_the_service_batches_its_exports_until_flushed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    inner = InMemorySpanExporter()
    tracing = build_tracing([inner], KEY, sampler=ALWAYS_ON)
    assert tracing is not None
    tracing.tracer.start_span("batched").end()
    assert inner.get_finished_spans() == ()  # not exported as it ended
    assert tracing.force_flush() is True
    assert [s.name for s in inner.get_finished_spans()] == ["batched"]
    tracing.shutdown()


def test_a_given_sampler_and_resource_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing = build_tracing([], KEY, sampler=ALWAYS_ON, resource=Resource({"x": "y"}))
    assert tracing is not None
    assert tracing.provider.sampler is ALWAYS_ON and not tracing.parent_based
    assert tracing.provider.resource.attributes == {"x": "y"}
    tracing.shutdown()


def test_an_exporter_the_sdk_cannot_serve_is_named_with_the_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError) as raised:
        exporter_classes()
    text = str(raised.value)
    assert text.startswith(
        "OTEL_TRACES_EXPORTER='zipkin' (OTEL_EXPORTER_OTLP_PROTOCOL='http/json'): "
    )
    assert text.endswith(
        "; the traces extra ships the OTLP/HTTP exporter (otlp with http/protobuf) and console"
    )
    assert "zipkin" in text[len("OTEL_TRACES_EXPORTER='zipkin' (") :]


def test_an_unknown_exporter_with_no_protocol_set_says_the_protocol_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The protocol the SDK was told is named as the operator set it: nothing (the
    service's ``http/protobuf`` default is only lent to the SDK while it reads)."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError) as raised:
        exporter_classes()
    assert str(raised.value).startswith(
        "OTEL_TRACES_EXPORTER='zipkin' (OTEL_EXPORTER_OTLP_PROTOCOL=''): "
    )


# --- spans ---------------------------------------------------------------------------------


def test_a_republished_record_s_send_is_linked_to_the_context_it_carried(traced: Traced) -> None:
    carried = SpanContext(0xAB, 0xCD, False, TraceFlags(1))
    headers = inject([("content-type", b"x")], trace.set_span_in_context(NonRecordingSpan(carried)))
    with traced.tracing.tracer.start_as_current_span("replay") as replay:
        linked = SendSpan.republishing(traced.tracing, "events", headers)
        plain = SendSpan.republishing(traced.tracing, "events", [("content-type", b"x")])
    for send in (linked, plain):
        send.fail(RuntimeError("ended here"))
    first, second = traced.named("send")
    assert first.name == "send events" and first.kind is SpanKind.PRODUCER
    assert [(link.context.trace_id, link.context.span_id) for link in first.links] == [(0xAB, 0xCD)]
    assert second.links == ()
    for span in (first, second):  # of the current trace, not of the carried one
        assert span.parent is not None
        assert span.parent.span_id == replay.get_span_context().span_id


# --- the front -------------------------------------------------------------------------------


def test_shutdown_exports_what_is_buffered_and_turns_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    inner = InMemorySpanExporter()
    tracing = build_tracing([inner], KEY, sampler=ALWAYS_ON)
    assert tracing is not None
    previous = tracing_front.install(tracing)
    try:
        tracing.tracer.start_span("buffered").end()
        tracing_front.shutdown_tracing()
        assert tracing_front.active() is None
        assert [s.name for s in inner.get_finished_spans()] == ["buffered"]
        tracing_front.shutdown_tracing()  # nothing installed: nothing to do
    finally:
        tracing_front.install(previous)


def test_without_opentelemetry_importable_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """As installed without the ``traces`` extra (the SDK's package cannot be imported):
    not an error, tracing off, even with an exporter named."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    # What an import sees without the package: its parent cannot be imported.
    monkeypatch.delitem(sys.modules, "opentelemetry.sdk.trace")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    previous = tracing_front.install(None)
    try:
        assert tracing_front.extra_installed() is False
        assert tracing_front.configure_tracing(Settings()) is None
        assert tracing_front.active() is None
    finally:
        tracing_front.install(previous)


def test_configure_uses_the_logs_redaction_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    previous = tracing_front.install(None)
    try:
        tracing = tracing_front.configure_tracing(Settings(log_redaction_key="the-key"))
        assert tracing is not None
        consumer = str(uuid.uuid4())
        assert tracing.pseudonym(consumer) == pseudonym(consumer, "the-key")
        tracing_front.shutdown_tracing()
    finally:
        tracing_front.install(previous)
