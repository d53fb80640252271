"""``decode_event``: the one gate. Only ``InvalidEvent`` ever comes out of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.decode import InvalidEvent, decode_document, decode_event
from service.domain.events import UNCONDITIONAL, EventType
from service.domain.outcomes import Reason

BASE = {
    "schema_version": 1,
    "event_id": "6F1C2B9E-3D4A-4C1E-9B7A-2E5F8D0C1A34",
    "type": "consumer.upsert",
    "consumer_uuid": "0B7E4A52-9C1D-4F3E-8A26-5D9B1C7E3F80",
    "occurred_at": "2024-05-01T14:00:00.5+02:00",
}


def test_precondition_absent_null_and_integer() -> None:
    assert decode_document(BASE).expected_generation is UNCONDITIONAL
    assert decode_document(BASE | {"expected_generation": None}).expected_generation is None
    assert decode_document(BASE | {"expected_generation": 0}).expected_generation == 0
    assert decode_document(BASE | {"expected_generation": 4.0}).expected_generation == 4
    assert type(decode_document(BASE | {"expected_generation": 4.0}).expected_generation) is int
    for boolean in (True, False):
        with pytest.raises(InvalidEvent) as caught:
            decode_document(BASE | {"expected_generation": boolean})
        assert caught.value.path == "$.expected_generation"


def test_uuids_are_canonical_and_time_keeps_its_instant() -> None:
    event = decode_document(BASE)
    assert event.event_id == "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34"
    assert event.consumer_uuid == "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
    assert event.type is EventType.UPSERT
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=2)
    # Same logical event however it was spelt: same payload hash.
    lower = decode_document(
        BASE
        | {
            "event_id": event.event_id,
            "consumer_uuid": event.consumer_uuid,
            "occurred_at": "2024-05-01T12:00:00.500Z",
        }
    )
    assert lower.payload_hash() == event.payload_hash()
    assert decode_document(
        BASE | {"occurred_at": "2024-05-01T12:00:00.5-00:30"}
    ).occurred_at.tzinfo == timezone(-timedelta(minutes=30))


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(b"\xff" * 2000, max_bytes=1024)
    assert caught.value.reason is Reason.TOO_LARGE
    assert caught.value.message == "2000 bytes, more than the limit of 1024"
    value = json.dumps(BASE).encode()
    assert decode_event(value, max_bytes=len(value)).event_id.startswith("6f1c")


def test_the_size_limit_is_inclusive_one_byte_over_is_too_large() -> None:
    value = json.dumps(BASE).encode()
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=len(value) - 1)
    assert caught.value.reason is Reason.TOO_LARGE
    assert caught.value.message == f"{len(value)} bytes, more than the limit of {len(value) - 1}"
    assert (caught.value.path, caught.value.exception) == (None, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.NOT_JSON),
        (b"", Reason.NOT_JSON),
        (b"[" * 200_000, Reason.NOT_JSON),
        (b'{"a": Infinity}', Reason.NOT_JSON),
        (b"\xc3\x28", Reason.NOT_UTF8),
    ],
)
def test_hostile_values(value: bytes | None, reason: Reason) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=1 << 20)
    assert caught.value.reason is reason


def test_messages_are_one_bounded_line_without_the_value() -> None:
    secret = "x" * 300
    with pytest.raises(InvalidEvent) as caught:
        decode_document(BASE | {"consumer_type": secret})
    assert caught.value.path == "$.consumer_type"
    assert secret not in caught.value.message
    key = "k\n" * 400 + "\ud800"
    with pytest.raises(InvalidEvent) as caught:
        decode_document(BASE | {key: 1})
    error = caught.value
    for text in (error.message, error.path or "", str(error)):
        assert "\n" not in text
        text.encode("utf-8")  # goes into a Kafka header: must be encodable
    assert len(error.message) <= 500 and len(error.path or "") <= 200
    assert str(error) == error.describe()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from([*sorted(BASE), "x"]),
            st.none() | st.integers() | st.text(max_size=40),
            max_size=8,
        ),
    )
)
def test_nothing_but_invalid_event_escapes(value: bytes) -> None:
    try:
        event = decode_event(value, max_bytes=1024)
    except InvalidEvent as exc:
        assert exc.reason in Reason
    else:
        assert event.schema_version == 1
