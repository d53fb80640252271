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
``CHECKED_AIOKAFKA`` and ``tests/unit/test_kafka_records.py`` fails when the internals it
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
from service.kafka.batch_parser import LOG_OVERHEAD, MAGIC_OFFSET, ParsedRecord, parse_batch

#: The aiokafka versions whose fetcher internals this module was checked against.
CHECKED_AIOKAFKA: Final = (Version("0.14.0"), Version("0.15"))

#: Compression codecs a Kafka record batch may use, with the probe aiokafka uses.
CODECS: Final = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}


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
        if remaining < LOG_OVERHEAD:
            return None
        length = struct.unpack_from(">i", self._buffer, self._pos + 8)[0]
        end = self._pos + LOG_OVERHEAD + length
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
        if len(raw) > MAGIC_OFFSET and raw[MAGIC_OFFSET] >= 2:
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
