"""W3C trace context (``traceparent``, ``tracestate``) in Kafka record headers.

Through OpenTelemetry's propagator API (``opentelemetry.propagate``: W3C trace context
and baggage by default, ``OTEL_PROPAGATORS`` to change it), with a getter and a setter
for Kafka's header form, a list of ``(str, bytes)``.  The getter is tolerant because a
record's headers are the record's, not ours: bytes that are not UTF-8 decode with
replacement characters, which no propagator accepts, so a malformed header is simply
"no context", never an exception.  The setter replaces a header of the same name (a
record republished by ``replay`` carries its original ``traceparent``).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence, Sequence
from typing import Final

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

Headers = Sequence[tuple[str, bytes | None]]

#: The W3C trace context headers.
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"


class KafkaHeaderGetter(Getter[Headers]):
    """Reads a header of a Kafka record (every value of that name, as text)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [
            bytes(value).decode("utf-8", "replace")
            for name, value in carrier
            if name == key and value is not None
        ]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


class KafkaHeaderSetter(Setter[MutableSequence[tuple[str, bytes]]]):
    """Sets a header of a record to be sent, replacing any of the same name."""

    def set(self, carrier: MutableSequence[tuple[str, bytes]], key: str, value: str) -> None:
        carrier[:] = [(name, old) for name, old in carrier if name != key]
        carrier.append((key, value.encode()))


GETTER: Final = KafkaHeaderGetter()
SETTER: Final = KafkaHeaderSetter()


def without_trace_context(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` less ``traceparent`` and ``tracestate`` (before injecting a new context,
    so that no ``tracestate`` of another trace is left beside the new ``traceparent``)."""
    return [(name, value) for name, value in headers if name not in (TRACEPARENT, TRACESTATE)]


def inject(
    headers: Iterable[tuple[str, bytes]], context: Context | None = None
) -> list[tuple[str, bytes]]:
    """A copy of ``headers`` with ``context`` (default: the current one) injected."""
    carrier = list(headers)
    propagate.inject(carrier, context=context, setter=SETTER)
    return carrier


def extract(headers: Headers | None) -> Context:
    """The context a record's headers carry (an empty one when they carry none)."""
    return propagate.extract(headers or (), getter=GETTER)
