"""Building events on the producer's side (``service.producer.events``), without a
broker: what cannot be serialised is an ``InvalidEvent`` naming the field, a JSONL
line is completed as documented, and every path holds the event to the size limit."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.contract.decode import InvalidEvent
from service.domain.events import ConsumerEvent, EventType
from service.domain.outcomes import Reason
from service.producer.events import (
    encode,
    event_from_document,
    event_from_line,
    new_event,
    wire_value,
)

CONSUMER = "00000000-0000-4000-8000-0000000000aa"


def _event(**fields: object) -> ConsumerEvent:
    values: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "type": EventType.UPSERT,
        "consumer_uuid": CONSUMER,
        "occurred_at": datetime(2026, 1, 2, tzinfo=UTC),
    }
    values.update(fields)
    return ConsumerEvent(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            {"occurred_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
            "$.occurred_at",
            "date value out of range",
        ),
        ({"occurred_at": "yesterday"}, "$", "'str' object has no attribute 'tzinfo'"),
        ({"project_id": "a\udc80"}, "$.project_id", "unable to parse raw data as a unicode"),
        ({"user_id": b"bytes"}, "$.user_id", "Input should be a valid string"),
    ],
)
def test_what_cannot_be_serialised_is_a_schema_violation_naming_the_field(
    fields: dict[str, object], path: str, message: str
) -> None:
    with pytest.raises(InvalidEvent) as refused:
        encode(_event(**fields))
    assert refused.value.reason is Reason.SCHEMA_VIOLATION
    assert refused.value.path == path
    assert message in refused.value.message


def test_non_ascii_text_is_measured_as_the_utf8_that_is_sent() -> None:
    """``encode`` writes UTF-8 (not ``\\u`` escapes, six bytes a character): the limit
    is held against the bytes the daemon will count."""
    event = new_event(EventType.UPSERT, CONSUMER, project_id="é" * 200)
    size = len(encode(event))
    assert "é".encode() * 200 in encode(event)
    new_event(EventType.UPSERT, CONSUMER, project_id="é" * 200, max_bytes=size)
    document = event.to_document()
    assert event_from_document(document, max_bytes=size).project_id == "é" * 200
    with pytest.raises(InvalidEvent) as refused:
        event_from_document(document, max_bytes=size - 1)
    assert refused.value.reason is Reason.TOO_LARGE


def test_a_document_is_held_to_the_limit_whatever_its_form() -> None:
    document = new_event(EventType.DELETE, CONSUMER, expected_generation=2).to_document()
    raw = json.dumps(document, separators=(",", ":")).encode()
    for form in (document, raw):
        assert event_from_document(form, max_bytes=len(raw)).expected_generation == 2
        with pytest.raises(InvalidEvent) as refused:
            event_from_document(form, max_bytes=len(raw) - 1)
        assert refused.value.reason is Reason.TOO_LARGE
    assert event_from_document(document, max_bytes=None).type is EventType.DELETE


def test_a_line_is_completed_with_a_version_an_id_a_time_and_the_producer() -> None:
    before = datetime.now(UTC)
    line = json.dumps({"type": "consumer.upsert", "consumer_uuid": CONSUMER}).encode()
    event = event_from_line(line, max_bytes=4096, producer="file-writer")
    assert event.schema_version == 1 and event.producer == "file-writer"
    assert uuid.UUID(event.event_id).version == 4
    assert before - timedelta(seconds=1) <= event.occurred_at <= datetime.now(UTC)
    assert event_from_line(line, max_bytes=4096).producer is None


def test_what_a_line_says_itself_is_kept() -> None:
    given = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "consumer.delete",
        "consumer_uuid": CONSUMER,
        "occurred_at": "2025-03-04T05:06:07Z",
        "producer": "its-own",
    }
    event = event_from_line(json.dumps(given).encode(), max_bytes=4096, producer="other")
    assert event.event_id == given["event_id"] and event.producer == "its-own"
    assert event.occurred_at == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_a_line_that_is_not_an_object_is_refused_as_the_daemon_would() -> None:
    with pytest.raises(InvalidEvent) as refused:
        event_from_line(b"[1, 2]", max_bytes=4096, producer="p")
    assert refused.value.reason is Reason.SCHEMA_VIOLATION


def test_raw_bytes_are_measured_as_given_and_unlimited_without_a_limit() -> None:
    """Raw bytes are held to the limit as they are (as the daemon would measure those
    bytes), even where their compact form would fit; no limit means none."""
    compact = encode(new_event(EventType.UPSERT, CONSUMER, project_id="p" * 200))
    padded = compact + b" " * 40
    assert wire_value(padded, max_bytes=len(padded))[1] == compact
    with pytest.raises(InvalidEvent) as refused:
        wire_value(padded, max_bytes=len(padded) - 1)
    assert refused.value.reason is Reason.TOO_LARGE
    assert event_from_document(padded, max_bytes=None).project_id == "p" * 200


def test_a_completed_line_is_held_to_the_limit() -> None:
    """A line within the limit that grows past it once completed (an event id and a
    time added) is too large: the limit is the event's, not the line's."""
    line = json.dumps({"type": "consumer.upsert", "consumer_uuid": CONSUMER}).encode()
    completed = encode(event_from_line(line, max_bytes=4096))
    assert len(completed) > len(line)
    with pytest.raises(InvalidEvent) as refused:
        event_from_line(line, max_bytes=len(line))
    assert refused.value.reason is Reason.TOO_LARGE
    # (+ 7: a time whose microseconds are 0 is written without its 7-character fraction)
    assert event_from_line(line, max_bytes=len(completed) + 7).consumer_uuid == CONSUMER
