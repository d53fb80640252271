"""The tolerant record parser (service.kafka.records) on hand-built batch bytes, no broker:
what aiokafka's own parser raises on becomes one UndecodableRecord, the rest arrives."""

from __future__ import annotations

import hashlib
import inspect
import struct
from pathlib import Path

import pytest
from aiokafka import TopicPartition, codec
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord

from service.kafka import records as kafka_records
from service.kafka.batch_parser import parse_batch
from service.kafka.records import (
    MissingCodec,
    TolerantMemoryRecords,
    UndecodableRecord,
)

BAD_NAME = b"\xff\xfe-origin"
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_ENCODERS = {
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}

Rec = tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def encode_record(index: int, key: bytes | None, value: bytes | None, headers: list) -> bytes:
    body = b"\x00" + _varint(index) + _varint(index)  # attributes, ts delta, offset delta
    body += _field(key) + _field(value) + _varint(len(headers))
    for name, header_value in headers:
        body += _field(name) + _field(header_value)
    return _varint(len(body)) + body


def build_batch(
    base_offset: int, records: list[Rec], codec_name: str = "none", raw_records: bytes | None = None
) -> bytes:
    """A v2 record batch with a valid CRC, as a broker returns it."""
    codec_id = CODEC_IDS[codec_name]
    payload = (
        raw_records
        if raw_records is not None
        else b"".join(encode_record(i, k, v, h) for i, (k, v, h) in enumerate(records))
    )
    if codec_id:
        payload = bytes(_ENCODERS[codec_id](payload))
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            codec_id,
            len(records) - 1,
            1_700_000_000_000,
            1_700_000_000_000 + len(records),
            -1,
            -1,
            -1,
            len(records),
        )
        + payload
    )
    crc = calc_crc32c(after_crc)
    after_length = struct.pack(">ibI", 0, 2, crc) + after_crc
    return struct.pack(">qi", base_offset, len(after_length)) + after_length


def _records(n: int, bad: set[int], first: int = 0) -> list[Rec]:
    out: list[Rec] = []
    for i in range(first, first + n):
        headers: list[tuple[bytes, bytes | None]] = [(b"content-type", b"application/json")]
        if i in bad:
            headers.append((BAD_NAME, b"x"))
        out.append((f"key-{i}".encode(), f'{{"n": {i}}}'.encode(), headers))
    return out


def _partition_records(data: bytes, fetch_offset: int = 0) -> list[ConsumerRecord]:
    kafka_records.install()
    records = fetcher.PartitionRecords(
        TopicPartition("t", 3),
        fetcher.MemoryRecords(data),
        [],
        fetch_offset,
        None,
        None,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    out = list(records)
    assert records.next_fetch_offset == out[-1].offset + 1 if out else True
    return out


def test_aiokafka_alone_raises_on_a_non_utf8_header_name() -> None:
    """The reason for the module: if this stops raising, aiokafka changed (re-check)."""
    batch = build_batch(0, _records(3, bad={1}))
    native = MemoryRecords(batch).next_batch()
    assert native is not None
    with pytest.raises(UnicodeDecodeError):
        list(native)


def test_parse_batch_middle_record_bad() -> None:
    parsed = list(parse_batch(build_batch(10, _records(3, bad={1}))))
    assert [p.offset for p in parsed] == [10, 11, 12]
    assert [p.decodable for p in parsed] == [True, False, True]
    bad = parsed[1]
    assert bad.error == "header #2 name is not UTF-8"
    assert (bad.key, bad.value) == (b"key-1", b'{"n": 1}')
    assert bad.headers == ((b"content-type", b"application/json"), (BAD_NAME, b"x"))
    assert parsed[2].text_headers() == [("content-type", b"application/json")]


@pytest.mark.parametrize("codec_name", list(CODEC_IDS))
def test_every_codec_other_records_and_batches_still_arrive(codec_name: str) -> None:
    data = build_batch(0, _records(3, bad={1}), codec_name) + build_batch(
        3, _records(2, bad=set(), first=3), codec_name
    )
    got = _partition_records(data)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    assert [isinstance(r, UndecodableRecord) for r in got] == [False, True, False, False, False]
    bad = got[1]
    assert isinstance(bad, UndecodableRecord)
    assert (bad.topic, bad.partition, bad.offset) == ("t", 3, 1)
    assert (bad.key, bad.value, bad.headers) == (b"key-1", b'{"n": 1}', ())
    assert bad.key_read and bad.value_read
    assert "not UTF-8" in bad.error
    assert bad.coordinates == "t/3@1"
    for record in (got[0], got[2], got[4]):
        assert type(record) is ConsumerRecord
        assert record.headers == (("content-type", b"application/json"),)
        assert record.value == f'{{"n": {record.offset}}}'.encode()


def test_first_and_last_records_bad_and_fetch_offset_inside_the_batch() -> None:
    data = build_batch(0, _records(4, bad={0, 3}))
    got = _partition_records(data)
    assert [(r.offset, isinstance(r, UndecodableRecord)) for r in got] == [
        (0, True),
        (1, False),
        (2, False),
        (3, True),
    ]
    # A fetch from offset 2 (records before it were consumed already) skips 0 and 1.
    assert [r.offset for r in _partition_records(data, fetch_offset=2)] == [2, 3]


def test_corrupt_fields_inside_a_record_skip_that_record_only() -> None:
    good = encode_record(0, b"a", b"1", [])
    # Record 1 says its key is 100 bytes long, inside a record of a few bytes.
    body = b"\x00" + _varint(1) + _varint(1) + _varint(100) + b"xy"
    broken = _varint(len(body)) + body
    last = encode_record(2, b"c", b"3", [])
    batch = build_batch(0, [(b"", b"", [])] * 3, raw_records=good + broken + last)
    parsed = list(parse_batch(batch))
    assert [(p.offset, p.decodable) for p in parsed] == [(0, True), (1, False), (2, True)]
    assert parsed[1].error == "record fields run past the record's length"
    assert not parsed[1].key_read
    assert parsed[2].value == b"3"


def test_a_corrupt_length_prefix_ends_the_batch_with_one_undecodable_value() -> None:
    good = encode_record(0, b"a", b"1", [])
    batch = build_batch(0, [(b"", b"", [])] * 3, raw_records=good + _varint(10_000) + b"zz")
    parsed = list(parse_batch(batch))
    assert [(p.offset, p.decodable) for p in parsed] == [(0, True), (1, False)]
    assert parsed[1].last_offset == 2


def test_undecompressable_batch_is_one_undecodable_value_covering_it() -> None:
    batch = bytearray(build_batch(5, _records(3, bad=set()), "gzip"))
    batch[-8:] = b"\x00" * 8  # break the gzip trailer (CRC only checks the batch bytes)
    parsed = list(parse_batch(bytes(batch)))
    assert len(parsed) == 1
    assert (parsed[0].offset, parsed[0].last_offset) == (5, 7)
    assert "decompressed" in (parsed[0].error or "")


def test_missing_codec_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_records.check_codecs()  # every codec library is a declared dependency
    monkeypatch.setitem(kafka_records.CODECS, "zstd", lambda: False)
    monkeypatch.setitem(kafka_records.CODECS, "lz4", lambda: False)
    with pytest.raises(MissingCodec, match="lz4, zstd"):
        kafka_records.check_codecs()


#: sha256[:16] of the aiokafka 0.14 sources the tolerant layer relies on.  A change in
#: any of them means service.kafka.records must be re-checked (and CHECKED_AIOKAFKA moved).
_RELIED_ON = {
    "__init__": "8ec1c2ae6ea1af87",
    "__next__": "63ac34a08c309098",
    "_unpack_records": "b803e6d46480732c",
    "_consumer_record": "e668541600b047ab",
}


def test_aiokafka_internals_are_the_ones_checked() -> None:
    kafka_records.install()
    kafka_records.check_aiokafka()
    assert fetcher.PartitionRecords.__name__ == "TolerantPartitionRecords"
    assert fetcher.MemoryRecords is TolerantMemoryRecords
    original = fetcher.PartitionRecords.__mro__[1]
    for name, digest in _RELIED_ON.items():
        source = inspect.getsource(getattr(original, name))
        assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, (
            f"aiokafka PartitionRecords.{name} changed: re-check service/kafka/records.py"
        )
    fetch = inspect.getsource(fetcher.Fetcher)
    # Both names are looked up in the fetcher module at fetch time (so replacing them works).
    assert fetch.count("MemoryRecords(part_data[-1])") == 1
    assert fetch.count("PartitionRecords(") == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [(["run"], 2), (["archive", "--from-beginning", "--output", "-"], 1)],
)
def test_a_missing_codec_stops_the_cli_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], code: int
) -> None:
    from click.testing import CliRunner

    from service.cli import cli

    monkeypatch.setitem(kafka_records.CODECS, "snappy", lambda: False)
    (tmp_path / "db.sqlite3").touch()  # `run` creates no database; an empty one will do
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached
        "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        "CONSUMERGEN_LOG_REDACTION_KEY": "unit",
    }
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "compressed with snappy" in result.stderr
    assert "Traceback" not in result.stderr
