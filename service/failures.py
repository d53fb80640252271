"""Whose fault is it? The one place that sorts a failure into the record's, the
infrastructure's, or ours (``../shared/DESIGN.md``, *Failure classes*).

Each class is recognised *positively*: an infrastructure failure by what the error is
(a refused or reset connection, a timeout, a broker that says "not now", a database that
is down or locked), a record's fault by the boundary it was raised in or by a broker
refusal that names the record itself (its size).  Whatever matches none of them is a
bug, and a bug stops the daemon loudly: "retry anything unknown for ever" is how one
record, or one wrong line of ours, silently stalls a partition.

The record-decoding boundary itself lives where records are decoded
(``service.apply.admission``); this module classifies what is raised *outside* it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from aiokafka import errors as kafka_errors

from service.domain.errors import InfrastructureUnavailable
from service.kafka.tls import is_certificate_failure
from service.store.errors import TransientDatabaseError, is_transient


class FailureClass(StrEnum):
    """Who is at fault, which decides what happens next."""

    #: The record's bytes (or their size): dead-letter it, go on with the partition.
    RECORD = "record"
    #: The broker or the database cannot do the work now: pause, back off, resume.
    INFRASTRUCTURE = "infrastructure"
    #: An invariant of ours broke: stop loudly, commit nothing past it.
    BUG = "bug"


#: Broker refusals that concern the record being written, not the broker's health:
#: retrying the same bytes can never succeed.
RECORD_REFUSALS: Final[tuple[type[BaseException], ...]] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
)

#: Kafka errors that mean "the broker side cannot do it now" but that aiokafka does not
#: mark ``retriable``.  The producer-state ones (out-of-order sequence, unknown producer
#: id, fenced epoch) follow a broker restart or expired batches: a fresh idempotent
#: producer, which the publisher makes after any failed write, fixes them.
_BROKER_NOT_NOW: Final[tuple[type[BaseException], ...]] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.ReplicaNotAvailableError,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.ProducerClosed,
)


def broker_unavailable(error: BaseException) -> bool:
    """True when ``error`` says the broker cannot be reached or cannot serve us now.

    A TLS certificate failure (``service.kafka.tls.is_certificate_failure``: the
    broker's certificate untrusted, expired or for another host, or ours refused) is
    the broker connection's too: it is mended outside this process (a certificate
    renewed, a CA file replaced) and nothing about the record is wrong, so the daemon
    waits, paced and not ready, and resumes without a restart once it is fixed.
    """
    if isinstance(error, RECORD_REFUSALS):
        return False
    if isinstance(error, kafka_errors.KafkaError):
        return bool(error.retriable) or isinstance(error, _BROKER_NOT_NOW)
    return isinstance(error, (ConnectionError, TimeoutError)) or is_certificate_failure(error)


def database_unavailable(error: BaseException) -> bool:
    """True when ``error`` says the database cannot be reached, is locked or asks for a
    retry (the store's own classification, which knows the dialects)."""
    return is_transient(error)


def record_refused(error: BaseException) -> bool:
    """True when the broker refused a write because of the record itself."""
    return isinstance(error, RECORD_REFUSALS)


def infrastructure_kind(error: BaseException) -> str | None:
    """``"database"`` or ``"broker"`` for an infrastructure failure, else None."""
    if isinstance(error, TransientDatabaseError):
        return "database"
    if isinstance(error, InfrastructureUnavailable):
        # The service's own "not now" errors (BrokerUnavailable, a sink's
        # SinkUnavailable) were classified where they were raised; a sink names
        # what it depends on in ``kind``, everything else here is the broker's.
        kind = getattr(error, "kind", None)
        return kind if isinstance(kind, str) else "broker"
    if broker_unavailable(error):
        return "broker"
    if database_unavailable(error):
        return "database"
    return None


def classify(error: BaseException) -> FailureClass:
    """The class of a failure raised outside a record's decoding boundary."""
    if record_refused(error):
        return FailureClass.RECORD
    if infrastructure_kind(error) is not None:
        return FailureClass.INFRASTRUCTURE
    return FailureClass.BUG


def is_infrastructure(error: BaseException) -> bool:
    """Predicate form for ``stamina.retry_context(on=...)``."""
    return infrastructure_kind(error) is not None
