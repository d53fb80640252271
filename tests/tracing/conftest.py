"""Tracing fixtures: the service's tracing with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
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
