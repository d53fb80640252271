"""Logs join traces: a record logged while a span is active carries its ids.

``trace_id`` (32 hex digits) and ``span_id`` (16), as tracing backends show and search
them, taken from OpenTelemetry's current context, so they name the span that was
running when the line was logged, whoever logged it (structlog or a library's stdlib
logger).  Without the OpenTelemetry API (the ``traces`` extra), or with no span
active, the record is left as it is.

A trace id is 32 hex digits, the shape the redactor takes for a ``uuid.hex`` and would
pseudonymise; a pseudonym would not find the trace.  So the ids travel past the
redactor in a type of their own (``TraceIds``, which only ``add_trace_ids`` makes, from
the context, never from what a caller logged) and ``KeepingTraceIds`` adds them back
after it.  A field named ``trace_id`` that a caller logs is redacted like any other.
What this allows, and ``docs/logging.md`` says: a producer that chose a consumer's UUID
as its trace id would see it in the daemon's log lines; ids of random traces name nothing.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any, Final

from structlog.typing import EventDict

from service.logging.redaction import Redactor

try:
    from opentelemetry.trace import get_current_span
except ModuleNotFoundError:  # the traces extra is not installed
    get_current_span = None  # type: ignore[assignment]

#: A trace id as ``KeepingTraceIds`` renders it (JSON lines or the console renderer):
#: the one 32-hex text the output may hold (the test suite's log guard skips it).
TRACE_ID_FIELD_RE: Final = re.compile(r'(?:"trace_id": "|trace_id=)[0-9a-f]{32}(?![0-9a-fA-F])')
#: Where ``add_trace_ids`` leaves the ids for ``KeepingTraceIds``.
_KEY: Final = "_trace_ids"


class TraceIds:
    """The current span's ids, rendered (only ``add_trace_ids`` makes one)."""

    __slots__ = ("span_id", "trace_id")

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = format(trace_id, "032x")
        self.span_id = format(span_id, "016x")


def add_trace_ids(_: object, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the active span's ids, if a span is active."""
    if get_current_span is None:
        return event_dict
    context = get_current_span().get_span_context()
    if context.is_valid:
        event_dict[_KEY] = TraceIds(context.trace_id, context.span_id)
    return event_dict


class KeepingTraceIds:
    """Runs ``redactor`` on an event dict, then adds the ids ``add_trace_ids`` found."""

    __slots__ = ("redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        ids = event_dict.pop(_KEY, None)
        redacted = self.redactor(logger, method_name, event_dict)
        if type(ids) is TraceIds:
            redacted["trace_id"] = ids.trace_id
            redacted["span_id"] = ids.span_id
        return redacted
