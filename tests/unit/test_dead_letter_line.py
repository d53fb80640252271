"""The fields of a dead letter's WARNING line: the reason, where it was read, and only
UUID-shaped ids (which the log redactor pseudonymises); nothing else of the record."""

from __future__ import annotations

import json

from service.daemon.batch import dead_letter_fields
from service.domain.outcomes import EventSource
from service.sinks.base import DeadLetter

CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
EVENT = "1c8f5b63-ad2e-4a4f-9b37-6e0c2d8f4a91"


def _letter(key: bytes | None, value: bytes | None, **headers: bytes) -> DeadLetter:
    return DeadLetter(
        key=key,
        value=value,
        headers=list(headers.items()),
        origin=EventSource("events", 3, 42),
        reason="schema_violation",
        invalid=True,
    )


def test_fields_name_reason_origin_and_ids() -> None:
    value = json.dumps({"event_id": EVENT.upper(), "project_id": "secret-project"}).encode()
    fields = dead_letter_fields(_letter(CONSUMER.encode(), value, **{"error.path": b"$.x"}))
    assert fields == {
        "reason": "schema_violation",
        "error_class": "invalid",
        "origin": "events/3@42",
        "consumer": CONSUMER,
        "event_id": EVENT,
        "path": "$.x",
    }


def test_what_is_not_a_uuid_stays_out() -> None:
    fields = dead_letter_fields(_letter(b"alice@example.com", b'{"event_id": "not-an-id"}'))
    assert fields["consumer"] is None and fields["event_id"] is None
    assert "alice" not in repr(fields)
    for value in (None, b"\xff\xfe", b"[1, 2]", b"{", b"x" * 100_000):
        assert dead_letter_fields(_letter(None, value))["event_id"] is None


def test_a_failed_events_letter_and_ids_padded_or_at_the_size_bound() -> None:
    """A valid event that lost every compare-and-swap is ``failed``, not ``invalid``; a key
    with blanks around its UUID still names the consumer; the event id is read from a
    value of up to 64 KiB and no further; a path that is not UTF-8 is still shown."""
    failed = DeadLetter(
        key=f" {CONSUMER.upper()}\n".encode(),
        value=json.dumps({"event_id": EVENT}).encode(),
        headers=[("error.path", b"$.\xff")],
        origin=EventSource("events", 0, 7),
        reason="cas_retries_exhausted",
        invalid=False,
    )
    fields = dead_letter_fields(failed)
    assert (fields["error_class"], fields["reason"]) == ("failed", "cas_retries_exhausted")
    assert (fields["consumer"], fields["event_id"], fields["origin"]) == (
        CONSUMER,
        EVENT,
        "events/0@7",
    )
    assert fields["path"] == "$.\ufffd"

    def padded(size: int) -> bytes:
        document = json.dumps({"event_id": EVENT, "pad": ""}).encode()
        value = document.replace(b'""', b'"' + b"x" * (size - len(document)) + b'"')
        assert len(value) == size and json.loads(value)["event_id"] == EVENT
        return value

    assert dead_letter_fields(_letter(None, padded(65_536)))["event_id"] == EVENT
    assert dead_letter_fields(_letter(None, padded(65_537)))["event_id"] is None
