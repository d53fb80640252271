"""No UUID in any exported span: the exporter wrapper that pseudonymises them.

The service's own spans set pseudonyms themselves (``Tracing.pseudonym``); this wrapper
is the guard behind them, for what nobody chose to put there: an exception's message
and stack trace (``record_exception``), a status description, a library's attribute.
It rewrites every string of a finished span, its name, attributes, events, links,
status and resource, with the logs' ``Redactor`` (same key, same pseudonyms: an
operator follows one consumer from a log line to a span), and hands the copy on.

It runs in the ``BatchSpanProcessor``'s export thread, off the event loop; the spans
the SDK keeps are not modified.  Span and trace ids are binary fields, not text, and
are left alone: they are random, not identifiers of anything the service stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes

from service.logging.redaction import Redactor

#: The shortest text a UUID form can be (32 hex digits).
_SHORTEST = 32


class RedactingSpanExporter(SpanExporter):
    """Wraps ``inner``: every span it is given is redacted before ``inner`` sees it."""

    def __init__(self, inner: SpanExporter, redactor: Redactor) -> None:
        self.inner = inner
        self._redactor = redactor
        #: The last resource seen and its redacted copy (one per provider, in practice).
        self._resource: tuple[Resource, Resource] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export(self.redact(spans))

    def redact(self, spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
        """Redacted copies of ``spans``."""
        return [self._span(span) for span in spans]

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def _text(self, text: str) -> str:
        # Every UUID form is at least 32 characters: most names and values are shorter.
        return text if len(text) < _SHORTEST else self._redactor.redact_text(text)

    def _span(self, span: ReadableSpan) -> ReadableSpan:
        status = span.status
        if status.description is not None:
            status = Status(status.status_code, self._text(status.description))
        return ReadableSpan(
            name=self._text(span.name),
            context=span.context,
            parent=span.parent,
            resource=self._resource_of(span.resource),
            attributes=self._attributes(span.attributes),
            events=[
                Event(self._text(event.name), self._attributes(event.attributes), event.timestamp)
                for event in span.events
            ],
            links=[
                link
                if not link.attributes
                else Link(link.context, self._attributes(link.attributes))
                for link in span.links
            ],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _resource_of(self, resource: Resource) -> Resource:
        cached = self._resource
        if cached is not None and cached[0] is resource:
            return cached[1]
        redacted = Resource(self._attributes(resource.attributes) or {}, resource.schema_url)
        self._resource = (resource, redacted)
        return redacted

    def _attributes(self, attributes: Attributes) -> dict[str, Any] | None:
        if attributes is None:
            return None
        return {self._text(k): self._value(v) for k, v in attributes.items()}

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            return tuple(self._value(item) for item in value)
        return value


def mapping_strings(attributes: Mapping[str, Any] | None) -> list[str]:
    """Every string in an attribute mapping, keys included (for checks and tests)."""
    found: list[str] = []
    for key, value in (attributes or {}).items():
        found.append(key)
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        found += [item for item in items if isinstance(item, str)]
    return found


def span_strings(span: ReadableSpan, *, resource: bool = True) -> list[str]:
    """Every string an exporter would send of ``span``: what must hold no UUID
    (``resource=False``: the span's own, less the process's resource)."""
    found = [span.name, *mapping_strings(span.attributes)]
    if resource:
        found += mapping_strings(span.resource.attributes)
    for event in span.events:
        found += [event.name, *mapping_strings(event.attributes)]
    for link in span.links:
        found += mapping_strings(link.attributes)
    if span.status.description is not None:
        found.append(span.status.description)
    return found
