"""Tolerant record parsing at the Kafka client edge: a record aiokafka cannot decode
becomes an ``UndecodableRecord`` instead of an exception out of ``getmany()``.

Why: the broker stores bytes it never interprets (a header *name* that is not UTF-8,
for one), while aiokafka decodes every record of a fetched batch eagerly and raises
``UnicodeDecodeError`` (or ``CorruptRecordException``) out of ``getmany()``.  The
position then never moves past the record: the daemon crash-loops and every replay
of the range fails.  One hostile record must not stop the service.

How: batches are still parsed by aiokafka's fast (C) parser.  When it raises part-way
through a batch, the same batch bytes are re-read by ``parse_batch`` below, record by
record, each record delimited by its own length prefix, so that a record that cannot
be decoded is skipped whole and reported as an ``UndecodableRecord`` (its topic,
partition, offset, and whatever of key, value and headers could be read) while the
other records of the batch, and every other batch, partition and fetch, arrive as
usual.  Records the fast parser already handed out are not handed out twice.

Installation replaces two names in ``aiokafka.consumer.fetcher`` (``MemoryRecords``,
which keeps each batch's bytes for the fallback, and ``PartitionRecords``, which turns
an unreadable record into an ``UndecodableRecord``), in ``install`` and nowhere else.
It depends on aiokafka internals: ``install`` refuses any aiokafka outside
``CHECKED_AIOKAFKA`` and ``tests/test_kafka_records.py`` fails when the internals it
relies on change.  Every consumer is built through ``service.kafka.clients.consumer_options``,
which installs it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

from aiokafka import codec
from aiokafka.structs import ConsumerRecord
from packaging.version import Version

from service.contract.decode import InvalidEvent
from service.domain.errors import ConfigurationError
from service.domain.outcomes import Reason

#: The aiokafka versions whose fetcher internals this module was checked against.
CHECKED_AIOKAFKA: Final = (Version("0.14.0"), Version("0.15"))

#: Compression codecs a Kafka record batch may use, with the probe aiokafka uses.
CODECS: Final = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}

_BATCH_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD: Final = 12  # BaseOffset int64 + Length int32
_MAGIC_OFFSET: Final = 16
_CODEC_MASK: Final = 0x07
_LOG_APPEND_TIME_MASK: Final = 0x08
_CONTROL_MASK: Final = 0x20


class KafkaClientUnfit(ConfigurationError, RuntimeError):
    """The installed Kafka client cannot read every record: the message says why."""


class MissingCodec(KafkaClientUnfit):
    """A compression codec's library is not installed: records using it cannot be read."""


class IncompatibleAiokafka(KafkaClientUnfit):
    """The installed aiokafka is not one whose internals this module was checked against."""


@dataclass
class UndecodableRecord(ConsumerRecord):  # type: ignore[misc]
    """A record aiokafka could not decode; ``headers`` is empty, ``raw_headers`` holds
    the headers that could be read, names as bytes.  ``key``/``value`` are None when
    they could not be read either (``key_read``/``value_read`` tell absent from unread).
    ``error`` says, in one line and without quoting the bytes, what could not be read.
    ``last_offset`` is the record's offset, or for a batch that could not be read at all
    (decompression failed) the last offset of the batch, every offset of which is then
    covered by this one value."""

    error: str = ""
    raw_headers: tuple[tuple[bytes, bytes | None], ...] = ()
    key_read: bool = False
    value_read: bool = False
    last_offset: int = -1

    @property
    def coordinates(self) -> str:
        span = (
            f"{self.offset}"
            if self.last_offset <= self.offset
            else (f"{self.offset}..{self.last_offset}")
        )
        return f"{self.topic}/{self.partition}@{span}"


def undecodable_event(record: UndecodableRecord) -> InvalidEvent:
    """The ``InvalidEvent`` (reason ``undecodable``) a reader reports for ``record``."""
    return InvalidEvent(Reason.UNDECODABLE, f"the Kafka record cannot be decoded: {record.error}")


# -- the pure parser ------------------------------------------------------------------------
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


# -- the aiokafka side ----------------------------------------------------------------------
class _FallbackRecord:
    """What the batch wrapper yields for a record the fast parser could not read."""

    __slots__ = ("parsed",)

    def __init__(self, parsed: ParsedRecord) -> None:
        self.parsed = parsed

    @property
    def offset(self) -> int:
        return self.parsed.offset


#: What the fast parser raises for a record it cannot decode.
_RECORD_ERRORS: Final = (UnicodeDecodeError, ValueError, IndexError, struct.error)


class _TolerantBatch:
    """A v2 batch: aiokafka's fast batch object, re-read by ``parse_batch`` after the
    fast parser raised.  Attribute reads (offsets, producer id, flags, CRC) go to the
    fast batch, which parsed the header when it was made."""

    def __init__(self, fast: Any, raw: bytes) -> None:
        self._fast = fast
        self._raw = raw
        self._fallback: Iterator[ParsedRecord] | None = None
        self._yielded: int | None = None  # the last offset handed out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __iter__(self) -> _TolerantBatch:
        return self

    def __next__(self) -> Any:
        if self._fallback is None:
            from aiokafka.errors import CorruptRecordException

            try:
                record = next(self._fast)
            except StopIteration:
                raise
            except (*_RECORD_ERRORS, CorruptRecordException):
                self._fallback = parse_batch(self._raw)
            else:
                self._yielded = record.offset
                return record
        for parsed in self._fallback:
            if self._yielded is not None and parsed.offset <= self._yielded:
                continue
            self._yielded = max(parsed.offset, parsed.last_offset)
            return _FallbackRecord(parsed)
        raise StopIteration


class TolerantMemoryRecords:
    """``aiokafka``'s ``MemoryRecords`` (a fetched message set), keeping each batch's
    bytes so that a batch the fast parser fails on can be re-read."""

    def __init__(self, bytes_data: bytes) -> None:
        self._buffer = bytes_data
        self._pos = 0

    def size_in_bytes(self) -> int:
        return len(self._buffer)

    def _next_end(self) -> int | None:
        remaining = len(self._buffer) - self._pos
        if remaining < _LOG_OVERHEAD:
            return None
        length = struct.unpack_from(">i", self._buffer, self._pos + 8)[0]
        end = self._pos + _LOG_OVERHEAD + length
        return end if end <= len(self._buffer) else None

    def has_next(self) -> bool:
        return self._next_end() is not None

    def next_batch(self) -> Any:
        end = self._next_end()
        if end is None:
            return None
        raw = bytes(self._buffer[self._pos : end])
        self._pos = end
        fast = _ORIGINALS["MemoryRecords"](raw).next_batch()
        if len(raw) > _MAGIC_OFFSET and raw[_MAGIC_OFFSET] >= 2:
            return _TolerantBatch(fast, raw)
        return fast  # v0/v1 message sets carry no headers: nothing to tolerate


_ORIGINALS: dict[str, Any] = {}


def _make_partition_records(base: type) -> type:
    class TolerantPartitionRecords(base):  # type: ignore[misc]
        """``PartitionRecords`` that hands an unreadable record out as an
        ``UndecodableRecord`` (never through the key/value deserializers)."""

        def _consumer_record(self, tp: Any, record: Any) -> Any:
            if not isinstance(record, _FallbackRecord):
                return super()._consumer_record(tp, record)
            parsed = record.parsed
            if parsed.decodable:
                return super()._consumer_record(tp, _Decoded(parsed))
            return UndecodableRecord(
                topic=tp.topic,
                partition=tp.partition,
                offset=parsed.offset,
                timestamp=parsed.timestamp,
                timestamp_type=parsed.timestamp_type,
                key=parsed.key,
                value=parsed.value,
                checksum=None,
                serialized_key_size=len(parsed.key) if parsed.key is not None else -1,
                serialized_value_size=len(parsed.value) if parsed.value is not None else -1,
                headers=(),
                error=parsed.error or "",
                raw_headers=parsed.headers,
                key_read=parsed.key_read,
                value_read=parsed.value_read,
                last_offset=max(parsed.offset, parsed.last_offset),
            )

    return TolerantPartitionRecords


class _Decoded:
    """A decodable record from the fallback parser, shaped like aiokafka's records."""

    __slots__ = ("headers", "key", "offset", "timestamp", "timestamp_type", "value")
    checksum = None

    def __init__(self, parsed: ParsedRecord) -> None:
        self.offset = parsed.offset
        self.timestamp = parsed.timestamp
        self.timestamp_type = parsed.timestamp_type
        self.key = parsed.key
        self.value = parsed.value
        self.headers = parsed.text_headers()


def check_aiokafka() -> None:
    """``IncompatibleAiokafka`` unless the fetcher internals are the ones relied on."""
    version = Version(metadata.version("aiokafka"))
    low, high = CHECKED_AIOKAFKA
    if not low <= version < high:
        raise IncompatibleAiokafka(
            f"aiokafka {version} is installed; service.kafka.records was checked against "
            f">={low},<{high} only (it replaces fetcher internals): re-check and re-pin"
        )
    from aiokafka.consumer import fetcher

    for name in ("MemoryRecords", "PartitionRecords"):
        if not hasattr(fetcher, name):
            raise IncompatibleAiokafka(f"aiokafka.consumer.fetcher.{name} is gone")
    records = _ORIGINALS.get("PartitionRecords", fetcher.PartitionRecords)
    for method in ("_unpack_records", "_consumer_record"):
        if not callable(getattr(records, method, None)):
            raise IncompatibleAiokafka(f"aiokafka PartitionRecords.{method} is gone")


def check_codecs() -> None:
    """``MissingCodec`` naming every compression codec whose library is missing."""
    missing = [name for name, present in CODECS.items() if not present()]
    if missing:
        raise MissingCodec(
            f"cannot decode Kafka batches compressed with {', '.join(missing)}: the "
            "library is not installed (install aiokafka[snappy,lz4,zstd], i.e. cramjam)"
        )


def install() -> None:
    """Make every aiokafka consumer of this process parse records tolerantly (idempotent;
    ``IncompatibleAiokafka`` when the internals are not the ones checked)."""
    from aiokafka.consumer import fetcher

    if _ORIGINALS:
        return
    check_aiokafka()
    _ORIGINALS["MemoryRecords"] = fetcher.MemoryRecords
    _ORIGINALS["PartitionRecords"] = fetcher.PartitionRecords
    fetcher.MemoryRecords = TolerantMemoryRecords
    fetcher.PartitionRecords = _make_partition_records(_ORIGINALS["PartitionRecords"])


def installed() -> bool:
    return bool(_ORIGINALS)


__all__ = [
    "CHECKED_AIOKAFKA",
    "IncompatibleAiokafka",
    "KafkaClientUnfit",
    "MissingCodec",
    "ParsedRecord",
    "TolerantMemoryRecords",
    "UndecodableRecord",
    "check_aiokafka",
    "check_codecs",
    "install",
    "installed",
    "parse_batch",
    "undecodable_event",
]
