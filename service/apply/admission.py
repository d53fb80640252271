"""The one gate between raw Kafka values and the apply engine.

The daemon and replay must refuse exactly the same records, so they share this:
the contract's decoder, then the apply rules' own guard.  The schema already implies
the guard; should the two ever disagree, the record is a schema violation that gets
dead-lettered (or reported), never a crash inside a batch.
"""

from __future__ import annotations

from service.apply.rules import InvalidEventError, validate
from service.contract.decode import InvalidEvent, InvalidReason, decode_event
from service.contract.event import ConsumerEvent


def admit(value: bytes | None, max_bytes: int) -> ConsumerEvent:
    """Decode and validate one record value; raises only ``InvalidEvent``."""
    event = decode_event(value, max_bytes=max_bytes)
    try:
        validate(event)
    except InvalidEventError as exc:
        raise InvalidEvent(InvalidReason.SCHEMA_VIOLATION, str(exc)) from None
    return event
