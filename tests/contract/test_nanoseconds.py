"""``occurred_at`` to the nanosecond: the exact instant is hashed, and every timestamp
with at most 6 fractional digits hashes byte for byte as before (existing inbox rows
keep matching their redeliveries)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.decode import decode_event
from service.domain.events import UNCONDITIONAL, ConsumerEvent

BASE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
    "type": "consumer.upsert",
    "consumer_uuid": "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",
}


# --- the reference: payload_hash as it was before nanoseconds (copied, frozen) ----------


def _reference_rfc3339(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def reference_hash(event: ConsumerEvent) -> str:
    doc: dict[str, Any] = {
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "type": event.type.value,
        "consumer_uuid": event.consumer_uuid,
        "occurred_at": _reference_rfc3339(event.occurred_at),
    }
    if event.expected_generation is not UNCONDITIONAL:
        doc["expected_generation"] = event.expected_generation
    for name in ("project_id", "user_id", "consumer_type", "producer"):
        value = getattr(event, name)
        if value is not None:
            doc[name] = value
    doc.pop("producer", None)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def decoded(occurred_at: str, **fields: Any) -> ConsumerEvent:
    value = json.dumps(BASE | {"occurred_at": occurred_at} | fields).encode()
    return decode_event(value, max_bytes=1 << 20)


def spell(moment: datetime, digits: int, zone: str) -> str:
    """RFC 3339 with ``digits`` fraction digits (0-6) and the zone as given."""
    text = moment.replace(tzinfo=None).isoformat(timespec="microseconds")
    whole, fraction = text.split(".")
    return whole + ("." + fraction[:digits] if digits else "") + zone


zones = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+02:00", "-05:30", "+23:59", "-23:59"])


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2998, 12, 31)),
    digits=st.integers(0, 6),
    pad=st.integers(0, 3),
    zone=zones,
    expected=st.one_of(st.none(), st.integers(0, 2**53 - 1)),
    producer=st.one_of(
        st.none(),
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
            min_size=1,
            max_size=20,
        ),
    ),
)
def test_up_to_microseconds_the_hash_is_byte_identical_to_the_old_one(
    moment: datetime,
    digits: int,
    pad: int,
    zone: str,
    expected: int | None,
    producer: str | None,
) -> None:
    text = spell(moment, digits, zone)
    if pad and digits:  # trailing zeros up to 9 digits: the same instant, the same bytes
        text = text[: -len(zone)] + "0" * min(pad, 9 - digits) + zone
    fields: dict[str, Any] = {"expected_generation": expected}
    if producer is not None:
        fields["producer"] = producer
    event = decoded(text, **fields)
    assert event.occurred_at_nanos == 0
    assert event.payload_hash() == reference_hash(event)


def test_nanoseconds_make_another_content() -> None:
    a = decoded("2024-05-01T12:00:00.123456789Z")
    b = decoded("2024-05-01T12:00:00.123456788Z")
    micro = decoded("2024-05-01T12:00:00.123456Z")
    assert (a.occurred_at_nanos, b.occurred_at_nanos) == (789, 788)
    assert a.occurred_at == b.occurred_at == micro.occurred_at
    assert len({a.payload_hash(), b.payload_hash(), micro.payload_hash()}) == 3
    assert a != b


@pytest.mark.parametrize(
    ("text", "canonical", "nanos"),
    [
        ("2024-05-01T12:00:00.1234567Z", "2024-05-01T12:00:00.123456700Z", 700),
        ("2024-05-01T12:00:00.12345678Z", "2024-05-01T12:00:00.123456780Z", 780),
        ("2024-05-01T14:00:00.000000001+02:00", "2024-05-01T12:00:00.000000001Z", 1),
        ("2024-05-01T12:00:00.999999999z", "2024-05-01T12:00:00.999999999Z", 999),
        ("1970-01-01T00:00:00.000000500-00:00", "1970-01-01T00:00:00.000000500Z", 500),
        ("2024-05-01T12:00:00.123456000Z", "2024-05-01T12:00:00.123456Z", 0),
        ("2024-05-01T12:00:00.000000000Z", "2024-05-01T12:00:00Z", 0),
    ],
)
def test_the_canonical_spelling_keeps_the_exact_instant(
    text: str, canonical: str, nanos: int
) -> None:
    event = decoded(text)
    assert event.occurred_at_nanos == nanos
    assert event.to_document()["occurred_at"] == canonical
    again = decode_event(event.to_json_bytes(), max_bytes=1 << 20)
    assert again == event
    assert again.payload_hash() == event.payload_hash()


def test_one_instant_in_two_zones_hashes_the_same() -> None:
    utc = decoded("2024-05-01T12:00:00.123456789Z")
    east = decoded("2024-05-01T14:00:00.123456789+02:00")
    assert utc.payload_hash() == east.payload_hash()


def test_a_python_built_event_without_nanoseconds_is_unchanged() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    event = ConsumerEvent(
        event_id=BASE["event_id"],
        type=decoded("2024-05-01T12:00:00Z").type,
        consumer_uuid=BASE["consumer_uuid"],
        occurred_at=moment,
    )
    assert event.to_document()["occurred_at"] == "2024-05-01T12:00:00.000005Z"
    assert event.payload_hash() == reference_hash(event)
