"""The record-by-record batch reader (service.kafka.batch_parser) on records as other
producers write them: null keys, values and header values, offset gaps left by
compaction, log-append times, and every field a hostile or broken producer can corrupt.
Each corruption is reported for its record alone, with the rest of the batch read."""

from __future__ import annotations

import struct

import pytest
from aiokafka.record.util import calc_crc32c

from service.kafka.batch_parser import ParsedRecord, parse_batch
from tests.unit.test_kafka_records import _field, _varint, build_batch, encode_record

FIRST_TS = 1_700_000_000_000


def raw_record(
    offset_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes | None, bytes | None]],
    *,
    ts_delta: int | None = None,
    header_count: int | None = None,
    trailing: bytes = b"",
) -> bytes:
    """One record's bytes (length prefix included), any field as given."""
    body = b"\x00" + _varint(offset_delta if ts_delta is None else ts_delta)
    body += _varint(offset_delta) + _field(key) + _field(value)
    body += _varint(len(headers) if header_count is None else header_count)
    for name, header_value in headers:
        body += _field(name) + _field(header_value)
    body += trailing
    return _varint(len(body)) + body


def cut_after_key() -> bytes:
    """A record that ends after its key (its length prefix telling the truth)."""
    body = b"\x00" + _varint(1) + _varint(1) + _field(b"k")
    return _varint(len(body)) + body


def batch_of(
    base_offset: int,
    records: bytes,
    count: int,
    *,
    attributes: int = 0,
    last_delta: int | None = None,
    max_ts: int | None = None,
) -> bytes:
    """A v2 batch around already-encoded records (valid CRC), its header as given."""
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            count - 1 if last_delta is None else last_delta,
            FIRST_TS,
            FIRST_TS + 1000 if max_ts is None else max_ts,
            -1,
            -1,
            -1,
            count,
        )
        + records
    )
    after_length = struct.pack(">ibI", 0, 2, calc_crc32c(after_crc)) + after_crc
    return struct.pack(">qi", base_offset, len(after_length)) + after_length


def test_null_keys_values_and_header_values_are_read_as_null() -> None:
    records = raw_record(0, None, None, [(b"trace", None), (b"empty", b"")]) + raw_record(
        1, b"", b"v", []
    )
    [first, second] = parse_batch(batch_of(0, records, 2))
    assert first == ParsedRecord(
        offset=0,
        timestamp=FIRST_TS,
        timestamp_type=0,
        key=None,
        value=None,
        headers=((b"trace", None), (b"empty", b"")),
    )
    assert first.decodable and first.error is None
    assert first.text_headers() == [("trace", None), ("empty", b"")]
    assert (second.key, second.value, second.headers) == (b"", b"v", ())


def test_offsets_and_times_come_from_each_records_deltas() -> None:
    """A compacted batch keeps the offsets of the records left: 0, 3, 7 of base 100."""
    records = (
        raw_record(0, b"a", b"1", [], ts_delta=0)
        + raw_record(3, b"b", b"2", [], ts_delta=25)
        + raw_record(7, b"c", b"3", [], ts_delta=-5)
    )
    parsed = list(parse_batch(batch_of(100, records, 3, last_delta=7)))
    assert [(p.offset, p.timestamp, p.timestamp_type) for p in parsed] == [
        (100, FIRST_TS, 0),
        (103, FIRST_TS + 25, 0),
        (107, FIRST_TS - 5, 0),
    ]
    assert all(p.last_offset == -1 and p.key_read and p.value_read for p in parsed)


def test_log_append_time_gives_every_record_the_batch_time() -> None:
    records = raw_record(0, b"a", b"1", [], ts_delta=3) + raw_record(1, b"b", b"2", [], ts_delta=9)
    parsed = list(parse_batch(batch_of(0, records, 2, attributes=0x08, max_ts=FIRST_TS + 77)))
    assert [(p.timestamp, p.timestamp_type) for p in parsed] == [(FIRST_TS + 77, 1)] * 2


def test_only_the_records_the_batch_counts_are_read() -> None:
    records = raw_record(0, b"a", b"1", []) + raw_record(1, b"b", b"2", [])
    assert [p.offset for p in parse_batch(batch_of(5, records, 1))] == [5]


@pytest.mark.parametrize(
    ("record", "error", "key_read", "value_read"),
    [
        (raw_record(1, b"k", b"v", [], header_count=-2), "negative header count -2", True, True),
        (raw_record(1, b"k", b"v", [(None, b"x")]), "header #1 has a null name", True, True),
        (
            raw_record(1, b"k", b"v", [(b"ok", b"1"), (None, b"x")]),
            "header #2 has a null name",
            True,
            True,
        ),
        (
            raw_record(1, b"k", b"v", [], trailing=b"\x00\x00\x00"),
            "3 bytes left over after the record's fields",
            True,
            True,
        ),
        (
            raw_record(1, b"k", b"v", [(b"a", b"1")], header_count=2),
            "record fields run past the record's length",
            True,
            True,
        ),
        (cut_after_key(), "record fields run past the record's length", True, False),
    ],
    ids=["negative count", "null name", "second null name", "left over", "short", "no value"],
)
def test_a_corrupt_record_is_reported_alone(
    record: bytes, error: str, key_read: bool, value_read: bool
) -> None:
    records = raw_record(0, b"a", b"1", []) + record + raw_record(2, b"c", b"3", [])
    parsed = list(parse_batch(batch_of(50, records, 3)))
    assert [(p.offset, p.decodable) for p in parsed] == [(50, True), (51, False), (52, True)]
    bad = parsed[1]
    assert bad.error == error
    assert (bad.key_read, bad.value_read) == (key_read, value_read)
    assert bad.key == b"k"
    assert bad.timestamp == FIRST_TS + 1
    assert parsed[2].value == b"3"


def test_a_record_unreadable_from_its_first_field_keeps_the_batch_position() -> None:
    body = b"\x80"  # attributes: a varint that never ends inside the record
    records = (
        raw_record(0, b"a", b"1", []) + _varint(len(body)) + body + raw_record(2, b"b", b"2", [])
    )
    [first, bad, good] = parse_batch(batch_of(9, records, 3))
    assert first.offset == 9
    # Its offset delta unread, the record is placed by its position in the batch.
    assert (bad.offset, bad.timestamp, bad.error) == (
        10,
        FIRST_TS,
        "record fields run past the record's length",
    )
    assert not bad.key_read and not bad.value_read
    assert (bad.key, bad.value, bad.headers) == (None, None, ())
    assert (good.offset, good.value) == (11, b"2")


def test_a_varint_longer_than_a_varlong_is_corrupt_not_a_huge_number() -> None:
    """Kafka's varlong takes at most 10 bytes; an 11th is corruption."""
    tail = _varint(0) + _field(b"k") + _field(b"v") + _varint(0)
    longest = b"\x00" + b"\x80" * 9 + b"\x00" + tail  # ts delta 0 in 10 bytes
    too_long = b"\x00" + b"\x80" * 10 + b"\x00" + tail
    records = b"".join(_varint(len(b)) + b for b in (longest, too_long))
    records += raw_record(2, b"c", b"3", [])
    [ok, bad, good] = parse_batch(batch_of(0, records, 3))
    assert (ok.offset, ok.timestamp, ok.value, ok.decodable) == (0, FIRST_TS, b"v", True)
    assert bad.error == "record fields run past the record's length"
    assert (good.offset, good.decodable) == (2, True)


def test_a_non_utf8_header_name_is_named_by_its_position() -> None:
    record = raw_record(0, b"k", b"v", [(b"a", b"1"), (b"b", b"2"), (b"\xc3(", b"3")])
    [bad] = parse_batch(batch_of(0, record, 1))
    assert bad.error == "header #3 name is not UTF-8"
    assert bad.headers == ((b"a", b"1"), (b"b", b"2"), (b"\xc3(", b"3"))
    assert bad.key_read and bad.value_read and bad.last_offset == -1


@pytest.mark.parametrize(
    "prefix",
    [_varint(-3), b"\xff" * 11, b"\x80"],
    ids=["negative", "over 64 bits", "cut short"],
)
def test_an_unusable_length_prefix_ends_the_batch_in_one_value(prefix: bytes) -> None:
    records = encode_record(0, b"a", b"1", []) + prefix
    parsed = list(parse_batch(batch_of(20, records, 4, last_delta=6, attributes=0x08)))
    assert len(parsed) == 2
    bad = parsed[1]
    assert (bad.offset, bad.last_offset) == (21, 26)
    assert bad.error == "record length prefix is corrupt; rest of the batch unreadable"
    assert (bad.timestamp, bad.timestamp_type) == (FIRST_TS, 1)
    assert (bad.key, bad.value, bad.headers) == (None, None, ())
    assert bad.key_read is False and bad.value_read is False


@pytest.mark.parametrize("codec_id", [5, 6, 7])
def test_an_unknown_codec_makes_the_batch_one_undecodable_value(codec_id: int) -> None:
    records = encode_record(0, b"a", b"1", []) + encode_record(1, b"b", b"2", [])
    [bad] = parse_batch(batch_of(40, records, 2, attributes=codec_id))
    assert (bad.offset, bad.last_offset) == (40, 41)
    assert bad.error == "the batch cannot be decompressed: ValueError"
    assert (bad.timestamp, bad.timestamp_type) == (FIRST_TS, 0)
    assert (bad.key, bad.value, bad.headers) == (None, None, ())
    assert bad.key_read is False and bad.value_read is False


def test_an_undecompressable_log_append_batch_carries_the_batch_time() -> None:
    records = b"not gzip at all"
    [bad] = parse_batch(batch_of(0, records, 3, attributes=0x08 | 1, max_ts=FIRST_TS + 9))
    assert (bad.timestamp, bad.timestamp_type, bad.last_offset) == (FIRST_TS + 9, 1, 2)
    assert bad.error is not None and bad.error.startswith("the batch cannot be decompressed: ")


def test_what_is_not_a_v2_batch_is_refused() -> None:
    batch = build_batch(0, [(b"k", b"v", [])])
    with pytest.raises(ValueError, match=r"^not a record batch: shorter than its header$"):
        list(parse_batch(batch[:60]))
    assert len(list(parse_batch(batch[:61]))) == 1  # the header's 61 bytes are enough
    legacy = bytearray(batch)
    legacy[16] = 1
    with pytest.raises(ValueError, match=r"^not a v2 record batch \(magic 1\)$"):
        list(parse_batch(bytes(legacy)))


def test_a_memoryview_is_read_like_bytes() -> None:
    batch = build_batch(3, [(b"k", b"v", [(b"h", b"1")])])
    assert list(parse_batch(memoryview(batch))) == list(parse_batch(batch))


@pytest.mark.parametrize("size", [63, 64, 300, 70_000])
def test_long_fields_are_read_whole(size: int) -> None:
    """Lengths past one varint byte (64 and more, zig-zag) and offsets and times far
    from the batch's base, as any producer writes them."""
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    header = (b"n" * size, b"v" * (size // 2))
    records = raw_record(0, b"k" * size, value, [header], ts_delta=123_456_789) + raw_record(
        300, b"k", b"v", [], ts_delta=-1_000_000
    )
    [long, far] = parse_batch(batch_of(5, records, 2, last_delta=300))
    assert long.decodable and (long.key, long.value, long.headers) == (
        b"k" * size,
        value,
        (header,),
    )
    assert long.timestamp == FIRST_TS + 123_456_789
    assert (far.offset, far.timestamp) == (305, FIRST_TS - 1_000_000)


def test_an_empty_record_is_one_unreadable_record_and_the_batch_goes_on() -> None:
    """A length prefix of 0 delimits a record (an empty one, which cannot hold its
    fields): that record is unreadable, the prefix is not corrupt, the rest is read."""
    records = raw_record(0, b"a", b"1", []) + _varint(0) + raw_record(2, b"c", b"3", [])
    [first, empty, last] = parse_batch(batch_of(0, records, 3))
    assert (first.offset, first.decodable) == (0, True)
    assert (empty.offset, empty.error) == (1, "record fields run past the record's length")
    assert empty.last_offset == -1
    assert (last.offset, last.value, last.decodable) == (2, b"3", True)
