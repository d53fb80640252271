"""``TopicSource`` (service.replay.sources) over aiokafka's consumer and admin client
faked at the calls it makes: partitions assigned by hand (no group), the range resolved
once against the log start and the high-water mark at open (so a replay ends while
producers write), offsets and times as the operator gave them, chunks of one partition
in offset order, undecodable records passed on, a stalled partition an outage.  The
broker's own answers to the same calls: tests/replay/test_kafka_edge.py and
test_replay_topic.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from aiokafka import TopicPartition

from service.config import Settings, load_settings
from service.kafka.clients import BrokerUnavailable
from service.replay import sources
from service.replay.ranges import PartitionRange, RangeError, RangeSpec
from service.replay.records import SourceRecord
from service.replay.sources import SourceError, TopicSource
from tests.log_lines import logged
from tests.replay.fake_topic import TOPIC, TS, Log, install, stored, two_partitions

T = TypeVar("T")


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    return install(monkeypatch, two_partitions())


def settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {"bootstrap_servers": "kafka:9092", "request_timeout_seconds": 0.5}
    return load_settings(**(values | extra))


async def read(
    spec: RangeSpec, batch_size: int = 100, **extra: Any
) -> tuple[TopicSource, list[list[SourceRecord]]]:
    async with TopicSource(settings(**extra), TOPIC, spec, batch_size) as source:
        chunks = [chunk async for chunk in source.batches()]
    return source, chunks


def flat(chunks: list[list[T]]) -> list[T]:
    return [item for chunk in chunks for item in chunk]


def offsets(chunks: list[list[SourceRecord]]) -> list[list[tuple[int, int]]]:
    return [[(r.partition, r.offset) for r in chunk] for chunk in chunks]


async def test_the_whole_topic_from_each_log_start_to_its_end(log: Log) -> None:
    source, chunks = await read(RangeSpec(from_beginning=True))
    assert source.ranges == [PartitionRange(0, 0, 5), PartitionRange(1, 2, 6)]
    assert source.total == 9
    assert source.describe() == "topic events (0:[0,5), 1:[2,6))"
    assert sorted(r for chunk in offsets(chunks) for r in chunk) == [
        *((0, o) for o in range(5)),
        *((1, o) for o in range(2, 6)),
    ]
    assert all(len({p for p, _ in chunk}) == 1 for chunk in offsets(chunks))
    first = chunks[0][0]
    assert first == SourceRecord(
        topic=TOPIC,
        partition=first.partition,
        offset=first.offset,
        timestamp_ms=TS + 1000 * first.offset,
        key=f"k{first.partition}-{first.offset}".encode(),
        value=f"v{first.partition}-{first.offset}".encode(),
        headers=(("h", f"{first.offset}".encode()),),
        undecodable=None,
    )
    [consumer] = log.consumers
    assert consumer.started and consumer.stopped
    assert consumer.options["group_id"] is None
    assert consumer.options["isolation_level"] == "read_committed"
    assert consumer.options["enable_auto_commit"] is False
    assert consumer.assigned == [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    assert {f["timeout_ms"] for f in consumer.fetches} == {500}
    assert {f["max_records"] for f in consumer.fetches} == {100}
    # Each partition paused once read to its end: nothing more is fetched for it.
    assert consumer.paused == {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    [admin] = log.admins
    assert admin.closed
    assert admin.options["bootstrap_servers"] == ["kafka:9092"]


async def test_chunks_are_at_most_the_batch_size(log: Log) -> None:
    _, chunks = await read(RangeSpec(partitions=frozenset({0})), batch_size=2)
    assert offsets(chunks) == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)]]


async def test_records_written_after_the_open_are_not_read(log: Log) -> None:
    async with TopicSource(settings(), TOPIC, RangeSpec(from_beginning=True), 100) as source:
        log.append(0)
        log.append(1)
        chunks = [chunk async for chunk in source.batches()]
    assert source.total == 9
    assert max(o for p, o in flat(offsets(chunks)) if p == 0) == 4
    assert max(o for p, o in flat(offsets(chunks)) if p == 1) == 5


async def test_offsets_as_given_and_the_end_inclusive(log: Log) -> None:
    spec = RangeSpec.from_options(from_offset=["0:1", "1:3"], to_offset=["0:2", "1:99"])
    source, chunks = await read(spec)
    assert source.ranges == [PartitionRange(0, 1, 3), PartitionRange(1, 3, 6)]
    assert sorted(flat(offsets(chunks))) == [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]


async def test_a_start_before_the_log_start_begins_at_the_log_start(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source, _ = await read(RangeSpec.from_options(from_offset=["1:0"]))
    assert source.ranges == [PartitionRange(1, 2, 6)]
    [warning] = [e for e in logged(caplog) if e["event"] == "replay_start_before_log_start"]
    assert (warning["partition"], warning["requested"], warning["log_start"]) == (1, 0, 2)
    assert warning["level"] == "warning"
    caplog.clear()
    await read(RangeSpec.from_options(from_offset=["1:2"]))
    assert [e for e in logged(caplog) if e["event"] == "replay_start_before_log_start"] == []


async def test_a_start_past_the_end_reads_nothing_and_pauses_the_partition(log: Log) -> None:
    source, chunks = await read(RangeSpec.from_options(from_offset=["0:9"]))
    assert source.ranges == [PartitionRange(0, 5, 5)] and source.total == 0
    assert chunks == []
    consumer = log.consumers[0]
    assert consumer.paused == {TopicPartition(TOPIC, 0)} and consumer.fetches == []


async def test_times_are_resolved_to_offsets(log: Log) -> None:
    spec = RangeSpec(from_timestamp=TS + 1500, to_timestamp=TS + 4000)
    source, chunks = await read(spec)
    # Partition 0: from its record 2 (the first at or after) to before record 4.
    # Partition 1: from record 2, its log start; to before record 4.
    assert source.ranges == [PartitionRange(0, 2, 4), PartitionRange(1, 2, 4)]
    assert sorted(flat(offsets(chunks))) == [(0, 2), (0, 3), (1, 2), (1, 3)]


async def test_times_after_the_last_record_are_the_end(log: Log) -> None:
    late = RangeSpec(from_timestamp=TS + 60_000)
    source, chunks = await read(late)
    assert source.ranges == [PartitionRange(0, 5, 5), PartitionRange(1, 6, 6)] and chunks == []
    until = RangeSpec(from_beginning=True, to_timestamp=TS + 60_000)
    source, _ = await read(until)
    assert source.ranges == [PartitionRange(0, 0, 5), PartitionRange(1, 2, 6)]


async def test_the_earlier_of_a_time_and_an_offset_ends_the_range(log: Log) -> None:
    spec = RangeSpec(
        from_beginning=True, to_timestamp=TS + 4000, to_offsets={0: 1, 1: 4}, partitions=frozenset()
    )
    source, _ = await read(spec)
    assert source.ranges == [PartitionRange(0, 0, 2), PartitionRange(1, 2, 4)]


async def test_a_start_offset_wins_over_a_start_time_on_its_partition(log: Log) -> None:
    spec = RangeSpec(from_timestamp=TS + 3000, from_offsets={1: 2})
    source, _ = await read(spec)
    assert source.ranges == [PartitionRange(1, 2, 6)]


async def test_unknown_partitions_and_topics_are_refused_and_everything_closed(
    log: Log,
) -> None:
    with pytest.raises(RangeError, match=r"^unknown partition 7: the topic has partitions 0, 1$"):
        await read(RangeSpec(partitions=frozenset({7})))
    assert log.consumers[-1].stopped and log.admins[-1].closed
    log.exists = False
    with pytest.raises(SourceError, match=r"^topic events does not exist$"):
        await read(RangeSpec(from_beginning=True))
    assert log.consumers[-1].stopped and log.admins[-1].closed


async def test_a_topic_without_partitions_does_not_exist(log: Log) -> None:
    log.records.clear()
    with pytest.raises(SourceError, match=r"^topic events does not exist$"):
        await read(RangeSpec(from_beginning=True))


async def test_a_broker_that_does_not_describe_the_topic_is_an_outage(log: Log) -> None:
    log.describe_hangs = True
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BrokerUnavailable, match=r"^no answer about topic events$"):
        await read(RangeSpec(from_beginning=True))
    assert loop.time() - began < 5
    assert log.admins[-1].closed and log.consumers[-1].stopped


async def test_records_past_the_end_of_a_fetch_are_not_handed_out(log: Log) -> None:
    _, chunks = await read(RangeSpec.from_options(from_offset=["0:1"], to_offset=["0:2"]))
    assert offsets(chunks) == [[(0, 1), (0, 2)]]


async def test_a_gap_at_the_end_of_the_range_still_ends_it(log: Log) -> None:
    """Compaction (or a transaction marker) leaves offsets without records: the
    position, not the last record, says when a partition is done."""
    log.records[0] = [stored(0, 0), stored(0, 1)]
    log.records[0].append(stored(0, 4))
    _, chunks = await read(RangeSpec.from_options(from_offset=["0:0"], to_offset=["0:3"]))
    assert offsets(chunks) == [[(0, 0), (0, 1)]]


async def test_an_undecodable_record_is_handed_on_as_such(log: Log) -> None:
    log.records[0][2] = stored(0, 2, undecodable="header #1 name is not UTF-8")
    _, chunks = await read(RangeSpec(partitions=frozenset({0})))
    records = flat(chunks)
    assert [r.undecodable for r in records] == [
        None,
        None,
        "header #1 name is not UTF-8",
        None,
        None,
    ]
    assert records[2].headers == ()


async def test_a_partition_that_stops_delivering_is_an_outage(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other partitions' records are all handed out first; then the stalled one
    is an outage once nothing came for the bound (30 s, or twice the request timeout)."""
    log.stalled.add(0)
    clock = itertools.count(0, 7)  # each reading of the clock: 7 s later
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    got: list[SourceRecord] = []
    with pytest.raises(BrokerUnavailable) as caught:
        async with TopicSource(
            settings(request_timeout_seconds=20), TOPIC, RangeSpec(from_beginning=True), 100
        ) as source:
            async for chunk in source.batches():
                got.extend(chunk)
    assert str(caught.value) == (
        "no records from partition(s) 0 of events for 40 s before the end of the range"
    )
    assert [(r.partition, r.offset) for r in got] == [(1, o) for o in range(2, 6)]
    assert log.consumers[0].stopped


async def test_a_short_request_timeout_still_waits_30_s_for_a_stalled_partition(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.stalled.add(0)
    now = [0.0]
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def advance() -> None:
        for _ in range(1000):
            await asyncio.sleep(0)
            now[0] += 0.5

    ticker = asyncio.create_task(advance())
    with pytest.raises(BrokerUnavailable, match=r"for 30 s before the end"):
        await read(RangeSpec(partitions=frozenset({0})))
    assert now[0] > 30
    ticker.cancel()


async def test_the_source_must_be_opened_first(log: Log) -> None:
    source = TopicSource(settings(), TOPIC, RangeSpec(from_beginning=True), 10)
    assert source.describe() == "topic events (no partitions)"
    assert source.total == 0 and source.ranges == []
    with pytest.raises(RuntimeError, match=r"^open the source first \(async with\)$"):
        async for _ in source.batches():
            pass
    await source.close()  # closing what was never opened does nothing
    assert log.consumers == []


@pytest.mark.parametrize(
    ("client", "named"), [("consumer", "replay reader"), ("admin", "admin client")]
)
async def test_a_client_that_cannot_connect_is_named(log: Log, client: str, named: str) -> None:
    log.unreachable = client
    with pytest.raises(BrokerUnavailable) as caught:
        await read(RangeSpec(from_beginning=True))
    assert str(caught.value) == (
        f"cannot connect the {named} to Kafka at kafka:9092: KafkaConnectionError: "
        "Unable to bootstrap from [('kafka', 9092)]"
    )
    assert log.consumers[0].stopped


@pytest.mark.parametrize(
    ("described", "exists"),
    [
        ([], False),
        ([{"error_code": 29, "topic": TOPIC, "partitions": [{"partition": 0}]}], False),
        ([{"topic": TOPIC, "partitions": [{"partition": 0}]}], True),  # no error code: none
    ],
    ids=["no answer", "an error with partitions", "no error code"],
)
async def test_what_a_describe_says_about_the_topic(
    log: Log, described: list[dict[str, Any]], exists: bool
) -> None:
    log.described = described
    if exists:
        source, _ = await read(RangeSpec(from_beginning=True))
        assert [r.partition for r in source.ranges] == [0]
    else:
        with pytest.raises(SourceError, match=r"^topic events does not exist$"):
            await read(RangeSpec(from_beginning=True))


async def test_a_stall_is_more_than_the_bound_without_records(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clock readings 8 s apart, records last at 8 s, the bound 40 s: the fetch whose
    check reads 48 s (40 s without records) goes on, the next one (48 s) ends it."""
    log.stalled.add(0)
    clock = itertools.count(0, 8)
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    with pytest.raises(BrokerUnavailable, match=r"partition\(s\) 0 of events for 40 s"):
        await read(RangeSpec(from_beginning=True), request_timeout_seconds=20)
    assert len(log.consumers[0].fetches) == 6


async def test_every_stalled_partition_is_named(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    log.stalled.update({0, 1})
    clock = itertools.count(0, 20)
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    with pytest.raises(BrokerUnavailable) as caught:
        await read(RangeSpec(from_beginning=True))
    assert str(caught.value) == (
        "no records from partition(s) 0, 1 of events for 30 s before the end of the range"
    )
