"""Building events and validating them exactly as the daemon will.

Every event a producer sends goes through ``checked``: it is serialised and decoded again
with ``decode_event``, so the producer accepts precisely what the daemon accepts (size
limit included) and a bad event fails at the caller, not later in a dead-letter topic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.contract.decode import (
    InvalidEvent,
    check_size,
    decode_document,
    decode_event,
    load_json,
)
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.domain.outcomes import Reason


def new_event(
    type: EventType,
    consumer_uuid: str,
    *,
    expected_generation: Precondition = UNCONDITIONAL,
    project_id: str | None = None,
    user_id: str | None = None,
    consumer_type: str | None = None,
    producer: str | None = None,
    max_bytes: int | None = None,
) -> ConsumerEvent:
    """A fresh, validated event: new random ``event_id``, ``occurred_at`` now (UTC)."""
    event = ConsumerEvent(
        event_id=str(uuid.uuid4()),
        type=type,
        consumer_uuid=consumer_uuid,
        occurred_at=datetime.now(UTC),
        expected_generation=expected_generation,
        project_id=project_id,
        user_id=user_id,
        consumer_type=consumer_type,
        producer=producer,
    )
    return checked(event, max_bytes=max_bytes)


def checked(event: ConsumerEvent, *, max_bytes: int | None) -> ConsumerEvent:
    """The event as the daemon will see it (UUIDs canonical), or ``InvalidEvent``."""
    return decode_event(encode(event), max_bytes=max_bytes or 2**62)


def encode(event: ConsumerEvent) -> bytes:
    """Serialise, turning what ``to_json_bytes`` cannot represent into ``InvalidEvent``.

    A value built in Python can hold what JSON or UTF-8 cannot (a naive or out-of-range
    datetime, a lone surrogate): validate the document first for a precise error path.
    """
    try:
        doc = event.to_document()
    except (OverflowError, ValueError) as exc:
        raise InvalidEvent(Reason.SCHEMA_VIOLATION, str(exc), "$.occurred_at") from None
    except (AttributeError, TypeError) as exc:
        raise InvalidEvent(Reason.SCHEMA_VIOLATION, str(exc), "$") from None
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        decode_document(doc)  # raises with the offending field's path
        raise InvalidEvent(Reason.SCHEMA_VIOLATION, "not serialisable as JSON", "$") from None


def event_from_document(doc: Mapping[str, Any] | bytes, *, max_bytes: int | None) -> ConsumerEvent:
    """A complete event document (parsed, or raw bytes) from elsewhere, validated."""
    if isinstance(doc, bytes | bytearray):
        return decode_event(bytes(doc), max_bytes=max_bytes or 2**62)
    return checked(decode_document(dict(doc)), max_bytes=max_bytes)


def event_from_line(line: bytes, *, max_bytes: int, producer: str | None = None) -> ConsumerEvent:
    """One JSONL line: a full event document, where ``schema_version``, ``event_id`` and
    ``occurred_at`` may be left out and are then filled in (1, a fresh UUID, now), and
    ``producer`` too when one is given here.

    Give ``event_id`` in the file to make re-sending the file idempotent.
    """
    check_size(len(line), max_bytes)
    doc = load_json(line)
    if isinstance(doc, dict):
        doc.setdefault("schema_version", 1)
        doc.setdefault("event_id", str(uuid.uuid4()))
        doc.setdefault("occurred_at", datetime.now(UTC).isoformat().replace("+00:00", "Z"))
        if producer is not None:
            doc.setdefault("producer", producer)
    return checked(decode_document(doc), max_bytes=max_bytes)


def wire_value(
    event: ConsumerEvent | Mapping[str, Any] | bytes, *, max_bytes: int
) -> tuple[ConsumerEvent, bytes]:
    """The event as it is sent (its canonical bytes) and as the daemon will read them:
    round-tripped through ``decode_event`` and held to the daemon's own size rule on
    exactly those bytes (``check_size``: ``max_bytes`` accepted, one more refused)."""
    if isinstance(event, ConsumerEvent):
        first = encode(event)
    else:
        first = encode(event_from_document(event, max_bytes=max_bytes))
    checked = decode_event(first, max_bytes=2**62)
    value = checked.to_json_bytes()
    check_size(len(value), max_bytes)
    return checked, value
