"""The one gate between raw Kafka records and the apply engine: the record's boundary.

The daemon and replay must refuse exactly the same records, so they share this:
the contract's decoder, then the apply rules' own guard, then the Kafka key.  The
schema already implies the guard; should the two ever disagree, the record is a schema
violation that gets dead-lettered (or reported), never a crash inside a batch.

Everything here depends on the record's bytes only, so whatever it raises is the
record's fault (``../shared/DESIGN.md``, *Failure classes*): an exception the decoder
does not know turns into ``undecodable``, with its class name for the dead letter.
"""

from __future__ import annotations

from service.contract.decode import InvalidEvent, decode_event, undecodable
from service.domain.events import ConsumerEvent
from service.domain.outcomes import Reason
from service.domain.rules import InvalidEventError, validate


def admit(key: bytes | None, value: bytes | None, max_bytes: int) -> ConsumerEvent:
    """Decode and validate one record (its key and value); raises only ``InvalidEvent``."""
    try:
        event = decode_event(value, max_bytes=max_bytes)
        try:
            validate(event)
        except InvalidEventError as exc:
            raise InvalidEvent(Reason.SCHEMA_VIOLATION, str(exc)) from None
        check_key(key, event)
    except InvalidEvent:
        raise
    except Exception as exc:  # the boundary: any failure on a record's bytes is the record's
        raise undecodable(exc) from None
    return event


def check_key(key: bytes | None, event: ConsumerEvent) -> None:
    """The Kafka key must be the event's ``consumer_uuid`` in canonical form: per-consumer
    order rests on every event of a consumer landing on one partition."""
    if key is None:
        raise InvalidEvent(
            Reason.KEY_MISMATCH, "the record has no key (it must be the consumer_uuid)"
        )
    if key != event.consumer_uuid.encode():
        raise InvalidEvent(
            Reason.KEY_MISMATCH,
            "the key is not the consumer_uuid in canonical form (lower-case, dashed)",
        )
