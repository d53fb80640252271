"""aiokafka's consumer and admin client as ``TopicSource`` (service.replay.sources) uses
them, over one topic held in memory: partitions with log starts and high-water marks,
records with times (one second apart), offsets past a gap at the end of a partition,
a partition that stalls, a topic that does not exist or is never described."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, OffsetAndTimestamp

from service.kafka.records import UndecodableRecord
from service.replay import sources

TOPIC = "events"
TS = 1_714_564_800_000


def stored(
    partition: int,
    offset: int,
    *,
    undecodable: str | None = None,
    key: bytes | None = None,
    value: bytes | None = None,
) -> ConsumerRecord:
    """Record ``offset`` of ``partition``: its time is ``TS + offset`` seconds."""
    common: dict[str, Any] = {
        "topic": TOPIC,
        "partition": partition,
        "offset": offset,
        "timestamp": TS + 1000 * offset,
        "timestamp_type": 0,
        "key": f"k{partition}-{offset}".encode() if key is None else key,
        "value": f"v{partition}-{offset}".encode() if value is None else value,
        "checksum": None,
        "serialized_key_size": 5,
        "serialized_value_size": 5,
    }
    if undecodable is not None:
        return UndecodableRecord(**common, headers=(), error=undecodable)
    return ConsumerRecord(**common, headers=[("h", f"{offset}".encode())])


@dataclass
class Log:
    """One topic: per partition, its records (offsets may have gaps) and log start."""

    records: dict[int, list[ConsumerRecord]]
    #: The topic's name (a describe of any other finds no such topic).
    topic: str = TOPIC
    log_start: dict[int, int] = field(default_factory=dict)
    #: Partitions whose fetches never return anything (a stalled leader).
    stalled: set[int] = field(default_factory=set)
    exists: bool = True
    describe_hangs: bool = False
    #: What a describe of the topic answers instead, when set (a broker's other answers).
    described: list[dict[str, Any]] | None = None
    #: Which client's start finds no broker: "consumer" or "admin".
    unreachable: str = ""
    consumers: list[Consumer] = field(default_factory=list)
    admins: list[Admin] = field(default_factory=list)

    def end(self, partition: int) -> int:
        records = self.records[partition]
        return records[-1].offset + 1 if records else self.log_start.get(partition, 0)

    def append(self, partition: int) -> None:
        self.records[partition].append(stored(partition, self.end(partition)))


class Admin:
    def __init__(self, log: Log, **options: Any) -> None:
        self.log = log
        self.options = options
        self.closed = False
        log.admins.append(self)

    async def start(self) -> None:
        if self.log.unreachable == "admin":
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")

    async def close(self) -> None:
        self.closed = True

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        if self.log.describe_hangs:
            await asyncio.Event().wait()
        if self.log.described is not None:
            return self.log.described
        if not self.log.exists or names != [self.log.topic]:
            return [{"error_code": 3, "topic": names[0], "partitions": []}]
        partitions = [{"error_code": 0, "partition": p} for p in sorted(self.log.records)]
        return [{"error_code": 0, "topic": self.log.topic, "partitions": partitions[::-1]}]


class Consumer:
    def __init__(self, log: Log, *topics: str, **options: Any) -> None:
        assert topics == ()  # no subscription: partitions are assigned
        self.log = log
        self.options = options
        self.started = False
        self.stopped = False
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.fetches: list[dict[str, Any]] = []
        log.consumers.append(self)

    async def start(self) -> None:
        if self.log.unreachable == "consumer":
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log.log_start.get(tp.partition, 0) for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log.end(tp.partition) for tp in tps}

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        found: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, at in times.items():
            later = [r for r in self.log.records[tp.partition] if r.timestamp >= at]
            found[tp] = OffsetAndTimestamp(later[0].offset, later[0].timestamp) if later else None
        return found

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.fetches.append({"tps": tps, "timeout_ms": timeout_ms, "max_records": max_records})
        await asyncio.sleep(0)
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        room = max_records or 1_000_000
        for tp in tps:
            assert tp not in self.paused
            if tp.partition in self.log.stalled:
                out[tp] = []  # aiokafka may name a partition with nothing fetched
                continue
            if room <= 0:
                continue
            position = self.positions[tp]
            found = [r for r in self.log.records[tp.partition] if r.offset >= position][:room]
            if found:
                out[tp] = found
                room -= len(found)
                self.positions[tp] = found[-1].offset + 1
            else:  # past a gap at the end (compaction, transaction markers)
                self.positions[tp] = max(position, self.log.end(tp.partition))
        return out


def install(monkeypatch: pytest.MonkeyPatch, log: Log) -> Log:
    """Make every ``TopicSource`` read ``log``."""
    monkeypatch.setattr(sources, "AIOKafkaConsumer", lambda *t, **o: Consumer(log, *t, **o))
    monkeypatch.setattr(sources, "AIOKafkaAdminClient", lambda **o: Admin(log, **o))
    return log


def two_partitions() -> Log:
    """Partition 0: offsets 0..4; partition 1: 2..5 (its log starts at 2)."""
    made = Log({0: [stored(0, o) for o in range(5)], 1: [stored(1, o) for o in range(2, 6)]})
    made.log_start[1] = 2
    return made
