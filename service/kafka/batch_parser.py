"""A pure reader of Kafka record batches (message format v2), record by record.

aiokafka's own parser reads a whole batch or raises; this one delimits every record by
its own length prefix, so that one record it cannot decode (a header name that is not
UTF-8, a corrupt field) is reported alone while the records around it are read.  It is
the fallback of ``service.kafka.records``; it never talks to a broker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiokafka import codec

_BATCH_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
LOG_OVERHEAD: Final = 12  # BaseOffset int64 + Length int32
MAGIC_OFFSET: Final = 16
_CODEC_MASK: Final = 0x07
_LOG_APPEND_TIME_MASK: Final = 0x08
_CONTROL_MASK: Final = 0x20


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    """One record of a v2 batch as ``parse_batch`` read it; ``error`` is None when the
    record is decodable the way aiokafka decodes it (header names UTF-8)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]
    error: str | None = None
    key_read: bool = True
    value_read: bool = True
    last_offset: int = -1

    @property
    def decodable(self) -> bool:
        return self.error is None

    def text_headers(self) -> list[tuple[str, bytes | None]]:
        """The headers as aiokafka gives them (only for a decodable record)."""
        return [(name.decode("utf-8"), value) for name, value in self.headers]


class _Truncated(Exception):
    """The bytes end inside a field."""


def _varint(buffer: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """A zig-zag varint (Kafka's signed varint/varlong) at ``pos``; (value, next pos)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise _Truncated


def _bytes(buffer: bytes | memoryview, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buffer, pos, end)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise _Truncated
    return bytes(buffer[pos : pos + length]), pos + length


def _decompress(codec_id: int, data: bytes) -> bytes:
    if codec_id == 0:
        return data
    if codec_id == 1:
        return bytes(codec.gzip_decode(data))
    if codec_id == 2:
        return bytes(codec.snappy_decode(data))
    if codec_id == 3:
        return bytes(codec.lz4_decode(data))
    if codec_id == 4:
        return bytes(codec.zstd_decode(data))
    raise ValueError(f"unknown compression codec {codec_id}")


def parse_batch(batch: bytes | memoryview) -> Iterator[ParsedRecord]:
    """Every record of one v2 record batch (its bytes from BaseOffset on), in order.

    Never raises for a record's content: a record that cannot be decoded is yielded
    with ``error`` set and the parse goes on with the next record (each record is
    delimited by its length prefix).  A batch whose records cannot be reached at all
    (unknown codec, failed decompression, truncated header) yields one record with
    ``error`` set at the batch's base offset, ``last_offset`` its last offset.
    """
    data = bytes(batch)
    if len(data) < _BATCH_HEADER.size:
        raise ValueError("not a record batch: shorter than its header")
    (
        base_offset,
        _length,
        _epoch,
        magic,
        _crc,
        attributes,
        last_delta,
        first_ts,
        max_ts,
        _pid,
        _pepoch,
        _seq,
        count,
    ) = _BATCH_HEADER.unpack_from(data)
    if magic != 2:
        raise ValueError(f"not a v2 record batch (magic {magic})")
    ts_type = 1 if attributes & _LOG_APPEND_TIME_MASK else 0
    try:
        body = _decompress(attributes & _CODEC_MASK, data[_BATCH_HEADER.size :])
    except Exception as exc:  # any codec library failure means: this batch is unreadable
        yield ParsedRecord(
            base_offset,
            max_ts if ts_type else first_ts,
            ts_type,
            None,
            None,
            (),
            error=f"the batch cannot be decompressed: {type(exc).__name__}",
            key_read=False,
            value_read=False,
            last_offset=base_offset + last_delta,
        )
        return
    pos = 0
    end = len(body)
    for index in range(count):
        try:
            length, start = _varint(body, pos, end)
        except _Truncated:
            length, start = -1, end
        record_end = start + length
        if length < 0 or record_end > end:
            # The length prefix itself is unusable: nothing further can be delimited.
            offset = base_offset + index
            yield ParsedRecord(
                offset,
                first_ts,
                ts_type,
                None,
                None,
                (),
                error="record length prefix is corrupt; rest of the batch unreadable",
                key_read=False,
                value_read=False,
                last_offset=base_offset + last_delta,
            )
            return
        yield _parse_record(body, start, record_end, base_offset, first_ts, max_ts, ts_type, index)
        pos = record_end


def _parse_record(
    body: bytes,
    pos: int,
    end: int,
    base_offset: int,
    first_ts: int,
    max_ts: int,
    ts_type: int,
    index: int,
) -> ParsedRecord:
    offset = base_offset + index  # until the offset delta is read
    timestamp = first_ts
    key: bytes | None = None
    value: bytes | None = None
    key_read = value_read = False
    headers: list[tuple[bytes, bytes | None]] = []
    try:
        _attributes, pos = _varint(body, pos, end)
        ts_delta, pos = _varint(body, pos, end)
        timestamp = max_ts if ts_type else first_ts + ts_delta
        offset_delta, pos = _varint(body, pos, end)
        offset = base_offset + offset_delta
        key, pos = _bytes(body, pos, end)
        key_read = True
        value, pos = _bytes(body, pos, end)
        value_read = True
        count, pos = _varint(body, pos, end)
        if count < 0:
            raise _Corrupt(f"negative header count {count}")
        for number in range(count):
            name, pos = _bytes(body, pos, end)
            if name is None:
                raise _Corrupt(f"header #{number + 1} has a null name")
            header_value, pos = _bytes(body, pos, end)
            headers.append((name, header_value))
        if pos != end:
            raise _Corrupt(f"{end - pos} bytes left over after the record's fields")
    except _Truncated:
        error = "record fields run past the record's length"
    except _Corrupt as exc:
        error = str(exc)
    else:
        for number, (name, _) in enumerate(headers, start=1):
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                error = f"header #{number} name is not UTF-8"
                break
        else:
            return ParsedRecord(offset, timestamp, ts_type, key, value, tuple(headers))
    return ParsedRecord(
        offset,
        timestamp,
        ts_type,
        key,
        value,
        tuple(headers),
        error=error,
        key_read=key_read,
        value_read=value_read,
    )


class _Corrupt(Exception):
    """A field holds a value the format does not allow."""
