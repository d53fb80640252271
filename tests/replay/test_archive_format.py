"""The archive format and the range rules, without a broker."""

from __future__ import annotations

import base64
import json

import pytest

from service.replay import RangeError, RangeSpec, SourceRecord, from_archive_line, to_archive_line

EVENT = b'{"schema_version":1,"event_id":"e","type":"consumer.upsert"}'


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"key", EVENT, (("content-type", b"application/json"),)),
        (None, None, ()),
        (b"\xff\xfe", b"\x00\x01 not json", (("bin", b"\xff"),)),
        (b"k", b'{"a": 1, "a": 2}', ()),  # duplicate keys: kept as bytes, not guessed
        (b"k", b'"just a string"', ()),
    ],
)
def test_round_trip(key, value, headers) -> None:
    record = SourceRecord("t", 3, 42, 1_714_564_800_123, key, value, headers)
    line = to_archive_line(record)
    back = from_archive_line(line, "other")
    assert (back.topic, back.partition, back.offset, back.timestamp_ms) == (
        "t",
        3,
        42,
        record.timestamp_ms,
    )
    assert back.key == key and back.headers == headers
    if value is not None and json.loads(line).get("value_base64"):
        assert back.value == value
    elif value is not None:
        assert json.loads(back.value) == json.loads(value)
    else:
        assert back.value is None


def test_json_values_are_readable_and_others_flagged() -> None:
    doc = json.loads(to_archive_line(SourceRecord("t", 0, 1, None, b"k", EVENT)))
    assert doc["value"]["event_id"] == "e" and "value_base64" not in doc
    raw = json.loads(to_archive_line(SourceRecord("t", 0, 1, None, b"k", b"\xff")))
    assert raw["value_base64"] is True and base64.b64decode(raw["value"]) == b"\xff"


def test_range_rules() -> None:
    spec = RangeSpec.from_options(from_offset=["1:5"], to_offset=["1:9"])
    assert spec.chosen([0, 1, 2]) == [1]
    assert spec.accepts(1, 5, None) and spec.accepts(1, 9, None)
    assert not spec.accepts(1, 4, None) and not spec.accepts(1, 10, None)
    assert not spec.accepts(0, 6, None)
    assert RangeSpec.from_options(from_beginning=True).chosen([0, 1]) == [0, 1]
    with pytest.raises(RangeError, match="unknown partition 3"):
        RangeSpec.from_options(from_beginning=True, partitions=[3]).chosen([0, 1, 2])
    with pytest.raises(RangeError, match="not in --partition"):
        RangeSpec.from_options(from_offset=["2:0"], partitions=[1])
    with pytest.raises(RangeError, match="given twice"):
        RangeSpec.from_options(from_offset=["2:0", "2:5"])
    times = RangeSpec.from_options(
        from_timestamp="2024-05-01T00:00:00Z", to_timestamp="2024-05-02T00:00:00+00:00"
    )
    assert times.accepts(0, 0, times.from_timestamp) and not times.accepts(0, 0, times.to_timestamp)


@pytest.mark.parametrize(
    "value",
    [
        b'{"expected_generation":' + b"9" * 4301 + b"}",
        b'{"a":[-' + b"9" * 5000 + b',1e400,{"b":-1e999}],"c":"' + b"9" * 4301 + b'"}',
    ],
)
def test_numbers_too_large_for_python_are_archived_as_written(value: bytes) -> None:
    """Inline, digit for digit (not base64), and read back to the same bytes."""
    line = to_archive_line(SourceRecord("t", 0, 7, None, b"k", value))
    assert '"value_base64"' not in line
    assert value.decode() in line
    assert from_archive_line(line, "t").value == value
