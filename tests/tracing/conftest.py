"""Tracing fixtures: the service's tracing with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from service import tracing as tracing_front
from service.tracing.sdk import Tracing, build_tracing

#: The pseudonym key of these tests' spans.
KEY = b"tracing-tests-key"


@dataclass
class Traced:
    """The installed tracing and what it exported."""

    tracing: Tracing
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name.startswith(prefix)]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Tracing installed for the service (every span sampled, exported as it ends)."""
    exporter = InMemorySpanExporter()
    tracing = build_tracing([exporter], KEY, sampler=ALWAYS_ON, batch=False)
    assert tracing is not None
    previous = tracing_front.install(tracing)
    try:
        yield Traced(tracing, exporter)
    finally:
        tracing_front.install(previous)
        tracing.shutdown()


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace endpoint in the test, as a user's collector receives spans."""

    endpoint: str = ""
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[tuple[SpanMessage, dict[str, str]]]:
        """Every span received, with its resource's (string) attributes."""
        return [
            (span, {a.key: a.value.string_value for a in resource_spans.resource.attributes})
            for message in self.requests
            for resource_spans in message.resource_spans
            for scope in resource_spans.scope_spans
            for span in scope.spans
        ]


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """``POST /v1/traces`` on a free port of this test's loop (so a process under test
    must not be waited for synchronously: the loop serves the receiver)."""
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
