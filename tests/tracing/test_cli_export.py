"""As an operator would try it (issue 23): ``consumergen produce`` in a real process, with
only the standard OTEL_* variables set and a collector listening on OTLP/HTTP, exports
its ``send`` span, with pseudonyms, and the record carries that span's context."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from opentelemetry import trace

from service.logging import find_clear_uuid
from service.testing.kafka_io import read_all
from service.tracing.headers import extract
from tests.tracing.conftest import OtlpReceiver

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]


async def test_produce_exports_its_send_span_to_the_collector(
    kafka_bootstrap: str, new_topic: TopicFactory, otlp_receiver: OtlpReceiver
) -> None:
    topic = await new_topic(partitions=1, prefix="cli-traced")
    consumer = str(uuid.uuid4())
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUMERGEN_", "OTEL_"))}
    environ |= {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CONSUMERGEN_LOG_REDACTION_KEY": "cli-key",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_SERVICE_NAME": "billing",
    }
    binary = Path(sys.executable).with_name("consumergen")
    # Not subprocess.run: this loop must keep serving the receiver meanwhile.
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "produce",
        "--consumer-uuid",
        consumer,
        "--topic",
        topic,
        "--delete",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    from log_guard import scan_external  # the plugin's own module (as pytest loaded it)

    scan_external(stderr.decode(), "consumergen produce stderr")
    assert process.returncode == 0, stderr.decode()
    assert stdout.startswith(b"sent "), stdout
    [(span, resource)] = otlp_receiver.spans()
    assert span.name == f"send {topic}"
    assert span.kind == span.SPAN_KIND_PRODUCER
    assert resource["service.name"] == "billing"
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["messaging.kafka.message.key"].startswith("uuid:")
    assert find_clear_uuid(str(otlp_receiver.requests)) is None
    [record] = await read_all(kafka_bootstrap, topic)
    carried = trace.get_current_span(extract(record.headers)).get_span_context()
    assert carried.trace_id.to_bytes(16, "big") == span.trace_id
    assert carried.span_id.to_bytes(8, "big") == span.span_id
