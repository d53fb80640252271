"""What the tolerant parser (service.kafka.records) hands out through aiokafka's own
``PartitionRecords`` for records other producers wrote: every field of an unreadable
record that could be read, the records after it as aiokafka would give them, legacy
(v0/v1) message sets untouched, partial batches at the end of a fetch left for the next
one; and the checks that refuse an aiokafka whose internals changed."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from service.domain.outcomes import Reason
from service.kafka import records as kafka_records
from service.kafka.records import (
    IncompatibleAiokafka,
    KafkaClientUnfit,
    TolerantMemoryRecords,
    UndecodableRecord,
    undecodable_event,
)
from tests.unit.test_kafka_batch_parser import batch_of, raw_record
from tests.unit.test_kafka_records import BAD_NAME, build_batch

TS = 1_700_000_000_000


def fetched(data: bytes, fetch_offset: int = 0) -> tuple[list[ConsumerRecord], int]:
    """What aiokafka's fetcher hands out for ``data``, and the next fetch offset.

    The ``PartitionRecords`` subclass is built here, by the function ``install`` builds
    it with, rather than taken from ``fetcher`` (built once per process): so that a
    mutation of that function, switched on after ``install`` ran, is what is tested."""
    kafka_records.install()
    partition_records = kafka_records._make_partition_records(
        kafka_records._ORIGINALS["PartitionRecords"]
    )
    records = partition_records(
        TopicPartition("t", 3),
        TolerantMemoryRecords(data),
        [],
        fetch_offset,
        None,
        None,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    out = list(records)
    return out, records.next_fetch_offset


def test_the_installed_classes_are_the_ones_built_here() -> None:
    kafka_records.install()
    assert fetcher.MemoryRecords is TolerantMemoryRecords
    built = kafka_records._make_partition_records(kafka_records._ORIGINALS["PartitionRecords"])
    assert fetcher.PartitionRecords.__mro__[1:] == built.__mro__[1:]
    assert fetcher.PartitionRecords.__qualname__ == built.__qualname__


def test_an_unreadable_record_carries_every_field_that_could_be_read() -> None:
    data = build_batch(
        7,
        [
            (None, b"v", [(b"ok", b"1"), (BAD_NAME, None)]),
            (b"k", None, [(b"h", b"2")]),
        ],
    )
    (bad, after), next_offset = fetched(data)
    assert isinstance(bad, UndecodableRecord)
    assert (bad.topic, bad.partition, bad.offset, bad.last_offset) == ("t", 3, 7, 7)
    assert (bad.timestamp, bad.timestamp_type, bad.checksum) == (TS, 0, None)
    assert (bad.key, bad.value, bad.headers) == (None, b"v", ())
    assert (bad.serialized_key_size, bad.serialized_value_size) == (-1, 1)
    assert bad.raw_headers == ((b"ok", b"1"), (BAD_NAME, None))
    assert bad.key_read and bad.value_read
    assert bad.error == "header #2 name is not UTF-8"
    assert bad.coordinates == "t/3@7"
    # The next record, read by the fallback, is what aiokafka itself would give.
    assert type(after) is ConsumerRecord
    assert (after.offset, after.timestamp, after.timestamp_type) == (8, TS + 1, 0)
    assert (after.key, after.value, after.headers) == (b"k", None, (("h", b"2"),))
    assert (after.serialized_key_size, after.serialized_value_size) == (1, -1)
    assert next_offset == 9


def test_an_undecompressable_batch_is_one_record_covering_its_offsets() -> None:
    # Three records said to be gzip-compressed, the bytes not gzip (the CRC is right).
    batch = batch_of(5, b"not gzip at all", 3, attributes=1)
    out, next_offset = fetched(batch + build_batch(8, [(b"n", b"8", [])]))
    assert [r.offset for r in out] == [5, 8] and next_offset == 9
    bad = out[0]
    assert isinstance(bad, UndecodableRecord)
    assert (bad.offset, bad.last_offset, bad.coordinates) == (5, 7, "t/3@5..7")
    assert (bad.key, bad.value, bad.key_read, bad.value_read) == (None, None, False, False)
    assert (bad.serialized_key_size, bad.serialized_value_size) == (-1, -1)
    assert type(out[1]) is ConsumerRecord


def test_records_handed_out_before_the_failure_are_not_handed_out_again() -> None:
    records = [(f"k{i}".encode(), f"{i}".encode(), [(b"h", b"x")]) for i in range(5)]
    records[3] = (b"k3", b"3", [(BAD_NAME, b"x")])
    out, next_offset = fetched(build_batch(0, records))
    assert [(r.offset, isinstance(r, UndecodableRecord)) for r in out] == [
        (0, False),
        (1, False),
        (2, False),
        (3, True),
        (4, False),
    ]
    assert next_offset == 5


def test_undecodable_event_is_an_invalid_event_of_its_own_reason() -> None:
    record = UndecodableRecord(
        topic="t",
        partition=0,
        offset=1,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=None,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=(),
        error="header #1 name is not UTF-8",
    )
    invalid = undecodable_event(record)
    assert invalid.reason is Reason.UNDECODABLE
    assert invalid.message == "the Kafka record cannot be decoded: header #1 name is not UTF-8"
    assert record.coordinates == "t/0@1"  # last_offset unset (-1): the one offset


def legacy_message_set(count: int) -> bytes:
    builder = LegacyRecordBatchBuilder(1, 0, 1 << 20)
    for offset in range(count):
        builder.append(offset, TS + offset, f"k{offset}".encode(), f"v{offset}".encode())
    return bytes(builder.build())


def test_a_legacy_message_set_is_read_by_aiokafka_alone() -> None:
    kafka_records.install()
    data = legacy_message_set(2)
    tolerant = TolerantMemoryRecords(data)
    batch = tolerant.next_batch()
    assert not isinstance(batch, kafka_records._TolerantBatch)
    out, _ = fetched(data)
    assert [(r.offset, r.key, r.value) for r in out] == [(0, b"k0", b"v0"), (1, b"k1", b"v1")]


def test_the_message_set_hands_out_whole_batches_only() -> None:
    kafka_records.install()
    first = build_batch(0, [(b"a", b"1", [])])
    second = build_batch(1, [(b"b", b"2", [])])
    data = first + second[:-3]  # a fetch may end inside a batch
    records = TolerantMemoryRecords(data)
    assert records.size_in_bytes() == len(data)
    assert records.has_next()
    batch = records.next_batch()
    assert isinstance(batch, kafka_records._TolerantBatch)
    assert batch.base_offset == 0  # attributes are the fast batch's
    assert [r.offset for r in batch] == [0]
    assert not records.has_next()
    assert records.next_batch() is None
    exact = TolerantMemoryRecords(first + second)
    assert [exact.next_batch().base_offset, exact.next_batch().base_offset] == [0, 1]
    assert not exact.has_next()
    assert not TolerantMemoryRecords(first[:11]).has_next()
    out, _ = fetched(data)
    assert [r.offset for r in out] == [0]


def test_the_installed_aiokafka_is_accepted_and_others_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka_records.install()
    assert kafka_records.installed()
    kafka_records.check_aiokafka()
    for version in ("0.13.9", "0.15.0", "1.0"):
        monkeypatch.setattr(
            kafka_records, "metadata", SimpleNamespace(version=lambda _, v=version: v)
        )
        with pytest.raises(IncompatibleAiokafka) as caught:
            kafka_records.check_aiokafka()
        assert str(caught.value) == (
            f"aiokafka {version} is installed; service.kafka.records was checked against "
            ">=0.14.0,<0.15 only (it replaces fetcher internals): re-check and re-pin"
        )
        assert isinstance(caught.value, KafkaClientUnfit)
    for version in ("0.14.0", "0.14.9"):
        monkeypatch.setattr(
            kafka_records, "metadata", SimpleNamespace(version=lambda _, v=version: v)
        )
        kafka_records.check_aiokafka()


@pytest.mark.parametrize("name", ["MemoryRecords", "PartitionRecords"])
def test_an_aiokafka_without_the_replaced_names_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    kafka_records.install()
    monkeypatch.delattr(fetcher, name)
    with pytest.raises(IncompatibleAiokafka, match=rf"^aiokafka.consumer.fetcher.{name} is gone$"):
        kafka_records.check_aiokafka()


@pytest.mark.parametrize("method", ["_unpack_records", "_consumer_record"])
def test_an_aiokafka_without_the_methods_relied_on_is_refused(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    kafka_records.install()
    original = kafka_records._ORIGINALS["PartitionRecords"]
    monkeypatch.delattr(original, method)
    with pytest.raises(
        IncompatibleAiokafka, match=rf"^aiokafka PartitionRecords.{method} is gone$"
    ):
        kafka_records.check_aiokafka()


def test_install_twice_wraps_once() -> None:
    kafka_records.install()
    installed = fetcher.PartitionRecords
    kafka_records.install()
    assert fetcher.PartitionRecords is installed
    assert fetcher.PartitionRecords.__mro__[1] is kafka_records._ORIGINALS["PartitionRecords"]
    assert kafka_records._ORIGINALS["MemoryRecords"].__name__ == "MemoryRecords"


def test_a_batch_never_hands_out_an_offset_at_or_below_one_it_handed_out() -> None:
    """The batch wrapper itself (aiokafka's fetcher also skips offsets below its
    position): what the fast parser gave is not given again by the fallback, and a
    hostile batch whose offsets go back does not hand out the earlier offset."""
    kafka_records.install()
    records = (
        raw_record(0, b"a", b"0", [(b"h", b"0")])
        + raw_record(1, b"b", b"1", [(BAD_NAME, b"1")])
        + raw_record(5, b"c", b"5", [])
        + raw_record(3, b"d", b"3", [])  # back below 5
        + raw_record(6, b"e", b"6", [])
    )
    batch = TolerantMemoryRecords(batch_of(10, records, 5, last_delta=6)).next_batch()
    assert isinstance(batch, kafka_records._TolerantBatch)
    assert [r.offset for r in batch] == [10, 11, 15, 16]


def test_a_missing_codec_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kafka_records.CODECS, "snappy", lambda: False)
    with pytest.raises(kafka_records.MissingCodec) as caught:
        kafka_records.check_codecs()
    assert str(caught.value) == (
        "cannot decode Kafka batches compressed with snappy: the library is not installed "
        "(install aiokafka[snappy,lz4,zstd], i.e. cramjam)"
    )
    assert isinstance(caught.value, KafkaClientUnfit)


def test_a_batch_header_claiming_nothing_is_corrupt_as_aiokafka_says() -> None:
    """A record set ending in a bare 12-byte batch header of length 0: aiokafka's own
    reader calls it corrupt; the tolerant one hands it to aiokafka, not drops it."""
    kafka_records.install()
    first = build_batch(0, [(b"a", b"1", [])])
    records = TolerantMemoryRecords(first + struct.pack(">qi", 1, 0))
    assert records.next_batch() is not None
    assert records.has_next()
    with pytest.raises(CorruptRecordException):
        records.next_batch()


def test_install_replaces_the_two_names_and_keeps_the_originals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``install`` on an aiokafka as imported (it ran once already in this process: the
    originals are put back for the test, and again after it)."""
    kafka_records.install()
    originals = dict(kafka_records._ORIGINALS)
    monkeypatch.setattr(kafka_records, "_ORIGINALS", {})
    monkeypatch.setattr(fetcher, "MemoryRecords", originals["MemoryRecords"])
    monkeypatch.setattr(fetcher, "PartitionRecords", originals["PartitionRecords"])
    assert not kafka_records.installed()
    kafka_records.check_aiokafka()  # before install: the fetcher's own class is checked
    kafka_records.install()
    assert kafka_records.installed()
    assert originals == kafka_records._ORIGINALS
    assert fetcher.MemoryRecords is TolerantMemoryRecords
    assert fetcher.PartitionRecords.__name__ == "TolerantPartitionRecords"
    assert fetcher.PartitionRecords.__mro__[1] is originals["PartitionRecords"]


def test_before_install_the_fetchers_class_is_the_one_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka_records.install()
    monkeypatch.setattr(kafka_records, "_ORIGINALS", {})
    kafka_records.check_aiokafka()
    monkeypatch.setattr(fetcher, "PartitionRecords", object)
    with pytest.raises(IncompatibleAiokafka, match=r"PartitionRecords._unpack_records is gone"):
        kafka_records.check_aiokafka()
