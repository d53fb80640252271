"""Where replayed records come from: a topic range, or a JSONL archive file.

A topic is read with its partitions *assigned explicitly*: no consumer group, no
offset commits, so a replay never moves (or even sees) the daemon's committed offsets
and cannot trigger a rebalance of the daemon's group.  The end of every partition is
its high-water mark taken when the source opens, so a replay terminates while
producers and the daemon keep writing.  Only committed transactional records are read
(``read_committed``), and a record the Kafka client cannot decode comes as a
``SourceRecord`` with ``undecodable`` set (see ``service.kafka.records``).

An archive is checked whole (every line must be an archive record) before the first
record is handed out: a malformed line is reported with its number and nothing is
replayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.config import Settings
from service.domain.errors import ConsumerGenError
from service.kafka.clients import BrokerUnavailable, client_options, consumer_options, start_bounded
from service.kafka.records import UndecodableRecord
from service.replay.ranges import PartitionRange, RangeError, RangeSpec
from service.replay.records import ArchiveLineError, SourceRecord, from_archive_line

log = structlog.stdlib.get_logger(__name__)


class SourceError(ConsumerGenError):
    """The source cannot be read as asked (missing topic, malformed archive line...)."""


class Source(Protocol):
    """What the runner needs from a source."""

    #: Records expected (an upper bound for a topic: compaction or transaction markers
    #: can leave gaps in the offsets).
    total: int

    def describe(self) -> str: ...

    def batches(self) -> AsyncIterator[list[SourceRecord]]: ...


class TopicSource:
    """A range of one topic; ``async with`` it to resolve the range, then iterate."""

    def __init__(self, settings: Settings, topic: str, spec: RangeSpec, batch_size: int) -> None:
        self.settings = settings
        self.topic = topic
        self.spec = spec
        self.batch_size = batch_size
        self.ranges: list[PartitionRange] = []
        self.total = 0
        self._consumer: AIOKafkaConsumer | None = None

    def describe(self) -> str:
        parts = ", ".join(f"{r.partition}:[{r.start},{r.end})" for r in self.ranges)
        return f"topic {self.topic} ({parts or 'no partitions'})"

    async def __aenter__(self) -> Self:
        consumer = AIOKafkaConsumer(**consumer_options(self.settings, group_id=None))
        await start_bounded(consumer, self.settings, "replay reader")
        self._consumer = consumer
        try:
            await self._resolve(consumer)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _resolve(self, consumer: AIOKafkaConsumer) -> None:
        existing = await self._partitions()
        chosen = self.spec.chosen(existing)
        tps = [TopicPartition(self.topic, p) for p in chosen]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = {tp: begins[tp] for tp in tps}
        if self.spec.from_timestamp is not None:
            starts = await self._at_time(consumer, tps, self.spec.from_timestamp, ends)
        for tp in tps:
            if tp.partition in self.spec.from_offsets:
                starts[tp] = self.spec.from_offsets[tp.partition]
            if starts[tp] < begins[tp]:
                log.warning(
                    "replay_start_before_log_start",
                    partition=tp.partition,
                    requested=starts[tp],
                    log_start=begins[tp],
                )
                starts[tp] = begins[tp]
        stops = dict(ends)
        if self.spec.to_timestamp is not None:
            at = await self._at_time(consumer, tps, self.spec.to_timestamp, ends)
            stops = {tp: min(stops[tp], at[tp]) for tp in tps}
        for tp in tps:
            last = self.spec.to_offsets.get(tp.partition)
            if last is not None:
                stops[tp] = min(stops[tp], last + 1)
        self.ranges = [
            PartitionRange(tp.partition, min(starts[tp], stops[tp]), stops[tp]) for tp in tps
        ]
        self.total = sum(r.size for r in self.ranges)

    async def _partitions(self) -> list[int]:
        """The topic's partitions, from the admin API (a group-less consumer's metadata
        does not list a topic it has not been assigned yet)."""
        admin = AIOKafkaAdminClient(**client_options(self.settings))
        await start_bounded(admin, self.settings, "admin client")
        try:
            described = await asyncio.wait_for(
                admin.describe_topics([self.topic]), self.settings.request_timeout_seconds
            )
        except TimeoutError:
            raise BrokerUnavailable(f"no answer about topic {self.topic}") from None
        finally:
            await admin.close()
        topic = described[0] if described else {}
        partitions = [p["partition"] for p in topic.get("partitions") or ()]
        if topic.get("error_code", 0) != 0 or not partitions:
            raise SourceError(f"topic {self.topic} does not exist")
        return sorted(partitions)

    @staticmethod
    async def _at_time(
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        timestamp_ms: int,
        ends: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """The first offset at or after ``timestamp_ms`` (the end when there is none)."""
        found = await consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
        return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}

    async def batches(self) -> AsyncIterator[list[SourceRecord]]:
        """Chunks of one partition each, in offset order, up to the resolved ends."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("open the source first (async with)")
        pending: dict[TopicPartition, PartitionRange] = {}
        for rng in self.ranges:
            tp = TopicPartition(self.topic, rng.partition)
            if rng.size:
                consumer.seek(tp, rng.start)
                pending[tp] = rng
            else:
                consumer.pause(tp)
        stall_limit = max(30.0, 2 * self.settings.request_timeout_seconds)
        last_progress = time.monotonic()
        while pending:
            data = await consumer.getmany(*pending, timeout_ms=500, max_records=self.batch_size)
            for tp, messages in data.items():
                wanted = pending.get(tp)
                if wanted is None or not messages:
                    continue
                last_progress = time.monotonic()
                chunk = [
                    SourceRecord(
                        topic=m.topic,
                        partition=m.partition,
                        offset=m.offset,
                        timestamp_ms=m.timestamp,
                        key=m.key,
                        value=m.value,
                        headers=tuple(m.headers or ()),
                        undecodable=m.error if isinstance(m, UndecodableRecord) else None,
                    )
                    for m in messages
                    if wanted.start <= m.offset < wanted.end
                ]
                if chunk:
                    yield chunk
            for tp, rng in list(pending.items()):
                if await consumer.position(tp) >= rng.end:
                    consumer.pause(tp)
                    del pending[tp]
            if pending and time.monotonic() - last_progress > stall_limit:
                where = ", ".join(str(tp.partition) for tp in pending)
                raise BrokerUnavailable(
                    f"no records from partition(s) {where} of {self.topic} for "
                    f"{stall_limit:g} s before the end of the range"
                )


class ArchiveSource:
    """A JSONL archive (see ``service.replay.records``), filtered by the range."""

    def __init__(self, path: Path, default_topic: str, spec: RangeSpec, batch_size: int) -> None:
        self.path = path
        self.default_topic = default_topic
        self.spec = spec
        self.batch_size = batch_size
        self.total = 0

    def describe(self) -> str:
        return f"archive {self.path}"

    def _records(self) -> Iterator[SourceRecord]:
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = from_archive_line(raw.decode("utf-8"), self.default_topic)
                except UnicodeDecodeError:
                    raise SourceError(f"{self.path} line {number}: not UTF-8 text") from None
                except ArchiveLineError as exc:
                    raise SourceError(f"{self.path} line {number}: {exc}") from None
                if self.spec.accepts(record.partition, record.offset, record.timestamp_ms):
                    yield record

    def scan(self) -> int:
        """Check every line (``SourceError`` at the first bad one); count what is read."""
        self.total = sum(1 for _ in self._records())
        return self.total

    async def batches(self) -> AsyncIterator[list[SourceRecord]]:
        """Chunks in file order (``archive`` writes each partition in offset order)."""
        chunk: list[SourceRecord] = []
        for record in self._records():
            chunk.append(record)
            if len(chunk) >= self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


__all__ = ["ArchiveSource", "RangeError", "Source", "SourceError", "TopicSource"]
