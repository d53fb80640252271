"""What a sink is: one async batch method, acknowledged before the offset is committed.

The daemon hands each batch's dead letters to a ``DeadLetterSink`` and its outcome
records to an ``OutcomeSink`` and commits the partition's offset only after both
returned: a sink returns only when what it was given is durable where it writes.

Failures a sink may raise:

* ``SinkUnavailable`` (an ``InfrastructureUnavailable``): it cannot write *now* (its
  server is down, slow, refusing "not now").  Nothing is committed; the daemon pauses
  the partition and offers the *same* batch again with backoff, so a sink must accept a
  batch it has already (partly) written: sinks are at-least-once.  Each sink sorts its
  own client's errors into this (the Kafka sinks through ``service.failures``); the
  daemon sees no foreign error type.
* Anything else is a bug, and stops the daemon with nothing committed past the batch.

A **record refusal** is a separate case and is not raised: a dead letter the sink can
never take for its own content (Kafka: too large even cut down to its error headers)
would block the partition for ever if it were retried.  The sink logs it at error level
with its origin (topic, partition, offset: where the original still is) and returns;
the rest of the batch is written, and the offset is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.contract.replies import ReplyRoute
from service.domain.errors import InfrastructureUnavailable
from service.domain.outcomes import EventSource

Headers = list[tuple[str, bytes]]


class SinkUnavailable(InfrastructureUnavailable):
    """A sink cannot write now; the batch is retried whole.

    ``kind`` says what is unavailable for readiness and metrics (``"broker"`` for the
    Kafka sinks; another sink names its own), the message what failed and why.
    """

    def __init__(self, message: str, *, kind: str = "sink") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record bound for the dead-letter sink: the original key and value, and the
    original headers followed by the error headers (``service.contract.records``)."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    origin: EventSource
    #: The reason value (``Reason``) that sent it here, for metrics and logs.
    reason: str
    #: True for a record that is not a valid event; False for a valid event that failed.
    invalid: bool


@dataclass(frozen=True, slots=True)
class OutcomeMessage:
    """One outcome record as the contract writes it (``contract.records.outcome_record``)."""

    #: The event id (``contract.records.outcome_key``); None when it could not be read.
    key: bytes | None
    #: The outcome record's JSON document.
    value: bytes
    #: Where its requester waits for it (``service.contract.replies``), if it asked.
    reply: ReplyRoute | None = None
    #: Headers of the outcome record and of the reply: the trace context of the event's
    #: span when tracing (``service.tracing.daemon``), else None.
    headers: Headers | None = None


class DeadLetterSink(Protocol):
    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter and return once all are durable (see the module docstring
        for what may be raised, and for a letter refused for its content)."""
        ...


class OutcomeSink(Protocol):
    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        """Write every outcome record and return once all are durable."""
        ...
