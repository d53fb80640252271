"""W3C trace context in Kafka headers: inject/extract round trip, tolerant extraction,
and the logs joining the traces (trace_id, span_id while a span is active)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from service.config import Settings
from service.logging import TRACE_ID_FIELD_RE, configure_logging, find_clear_uuid
from service.tracing.headers import TRACEPARENT, TRACESTATE, extract, inject
from tests.tracing.conftest import Traced

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


def _context(sampled: bool = True) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=flags)


def test_inject_then_extract_gives_back_the_same_span_context() -> None:
    ctx = trace.set_span_in_context(NonRecordingSpan(_context()))
    headers = inject([("content-type", b"application/json")], ctx)
    assert headers[0] == ("content-type", b"application/json")
    assert dict(headers)[TRACEPARENT] == b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    found = trace.get_current_span(extract(headers)).get_span_context()
    assert (found.trace_id, found.span_id, found.is_remote) == (TRACE_ID, SPAN_ID, True)
    assert found.trace_flags.sampled


def test_the_sampling_decision_travels() -> None:
    headers = inject([], trace.set_span_in_context(NonRecordingSpan(_context(sampled=False))))
    assert dict(headers)[TRACEPARENT].endswith(b"-00")
    assert not trace.get_current_span(extract(headers)).get_span_context().trace_flags.sampled


def test_tracestate_travels_and_a_second_inject_replaces_the_first() -> None:
    first = SpanContext(
        TRACE_ID, SPAN_ID, False, TraceFlags(1), trace.TraceState([("vendor", "v1")])
    )
    headers = inject([], trace.set_span_in_context(NonRecordingSpan(first)))
    assert dict(headers)[TRACESTATE] == b"vendor=v1"
    second = SpanContext(TRACE_ID + 1, SPAN_ID + 1, False, TraceFlags(1))
    again = inject(headers, trace.set_span_in_context(NonRecordingSpan(second)))
    assert [name for name, _ in again].count(TRACEPARENT) == 1
    found = trace.get_current_span(extract(again)).get_span_context()
    assert found.trace_id == TRACE_ID + 1


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [(TRACEPARENT, b"\xff\xfe not utf-8")],
        [(TRACEPARENT, None)],
        [(TRACEPARENT, b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        [(TRACEPARENT, b"garbage")],
        [(TRACESTATE, b"only=state")],
    ],
)
def test_a_record_without_a_valid_context_extracts_to_none_and_never_raises(
    headers: list[tuple[str, bytes | None]] | None,
) -> None:
    assert not trace.get_current_span(extract(headers)).get_span_context().is_valid


def test_nothing_is_injected_without_a_valid_context() -> None:
    assert inject([("a", b"1")]) == [("a", b"1")]


def _log_line(stream: io.StringIO) -> dict[str, object]:
    [line] = stream.getvalue().splitlines()
    return json.loads(line)


def test_log_records_carry_the_active_span_ids(traced: Traced, restore_log_guard: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream, warn_missing_key=False)
    with traced.tracing.tracer.start_as_current_span("work") as span:
        structlog.stdlib.get_logger("t").info("inside")
    ctx = span.get_span_context()
    line = _log_line(stream)
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


def test_library_records_carry_them_too(traced: Traced, restore_log_guard: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream, warn_missing_key=False)
    with traced.tracing.tracer.start_as_current_span("work") as span:
        logging.getLogger("aiokafka").warning("from a library")
    assert _log_line(stream)["span_id"] == format(span.get_span_context().span_id, "016x")


def test_no_ids_without_an_active_span(restore_log_guard: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream, warn_missing_key=False)
    structlog.stdlib.get_logger("t").info("outside")
    line = _log_line(stream)
    assert "trace_id" not in line and "span_id" not in line


def test_a_trace_id_a_caller_logs_is_redacted_and_the_real_one_wins(
    traced: Traced, restore_log_guard: None
) -> None:
    """Only the active span's id passes the redactor: a 32-hex value logged under the
    same name (a uuid.hex) is pseudonymised, and outside a span stays so."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream, warn_missing_key=False)
    planted = "0123456789abcdef0123456789abcdef"
    structlog.stdlib.get_logger("t").info("outside", trace_id=planted)
    with traced.tracing.tracer.start_as_current_span("work") as span:
        structlog.stdlib.get_logger("t").info("inside", trace_id=planted)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert str(first["trace_id"]).startswith("uuid:")
    assert second["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert planted not in stream.getvalue()


def test_the_trace_id_field_is_the_only_32_hex_text_the_guard_skips() -> None:
    trace_hex = format(TRACE_ID, "032x")
    line = json.dumps({"event": "x", "trace_id": trace_hex, "span_id": "00f067aa0ba902b7"})
    assert find_clear_uuid(line) is not None  # a trace id looks like a uuid.hex...
    assert find_clear_uuid(TRACE_ID_FIELD_RE.sub("trace_id", line)) is None  # ...skipped here
    for elsewhere in (
        json.dumps({"event": "x", "other": trace_hex}),
        json.dumps({"event": "x", "trace_id": trace_hex + "ab"}),
        json.dumps({"event": "x", "trace_id": trace_hex.upper()}),
    ):
        assert find_clear_uuid(TRACE_ID_FIELD_RE.sub("trace_id", elsewhere)) is not None


def test_the_ids_replace_their_carrier_in_the_line(traced: Traced, restore_log_guard: None) -> None:
    """``add_trace_ids`` leaves the ids for ``KeepingTraceIds`` under a key of its own,
    which does not reach the output: the line has ``trace_id`` and ``span_id`` only."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream, warn_missing_key=False)
    with traced.tracing.tracer.start_as_current_span("work"):
        structlog.stdlib.get_logger("t").info("inside", other="x")
    line = _log_line(stream)
    assert set(line) - {"timestamp", "level", "logger", "event", "other"} == {
        "trace_id",
        "span_id",
    }
