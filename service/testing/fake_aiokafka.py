"""aiokafka's producer and an assigned consumer without a broker, at the level of the
client API the service calls (``send``, ``create_batch``/``send_batch``,
``partitions_for``, ``assign``/``seek_to_end``/``getmany``), for the fast tests of the
Kafka sinks, their ``KafkaProducerHandle``, ``EventProducer`` and ``ReplyListener``.

``service.testing.fake_kafka`` fakes the daemon's group consumer and
``fake_edges.FakeProducer`` the sinks' producer *handle*; this module is one level
lower: the aiokafka objects those wrap, so that the wrappers' own code runs.

What is aiokafka 0.14's own, not imitated: ``FakeAIOKafkaProducer`` buffers in a real
``aiokafka.producer.message_accumulator.MessageAccumulator`` (real ``BatchBuilder``s
that say "full" at the real byte count, real batch futures, ``fail_all``), and the
records a batch carried are read back from its wire bytes (``DefaultRecordBatch``).
Copied from aiokafka 0.14 (``producer/producer.py``): ``send`` refuses a record whose
estimated size exceeds ``max_request_size`` with ``MessageSizeTooLargeError`` before
buffering it (``_serialize``); a keyless record goes to a random partition, a keyed one
by murmur2 (``DefaultPartitioner``); ``stop`` waits for every buffered batch
(``MessageAccumulator.close``), so it hangs while the broker holds them.  The "sender"
is ``FakeCluster.deliver``: each batch queued is taken as aiokafka's sender takes it
(``_pop_batch``) and acknowledged, or failed with what ``FakeCluster.refuse`` returns
for one of its records (the broker's answer: ``MessageSizeTooLargeError``,
``KafkaConnectionError``...).  With ``hold`` set, batches wait in the buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder, MessageAccumulator, MessageBatch
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from service.testing.fake_kafka import fetched_record

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Written:
    """A record as the broker stored it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


def _never(_: Written) -> BaseException | None:
    return None


@dataclass
class FakeCluster:
    """Topics (name -> partition count), what was written to each partition, and the
    broker's behaviour: ``up``, ``hold`` (acknowledge nothing yet), ``refuse``."""

    topics: dict[str, int]
    up: bool = True
    hold: bool = False
    #: The broker's answer to a record of a batch: an error fails the whole batch.
    refuse: Callable[[Written], BaseException | None] = _never
    #: The producers' ``max_batch_size`` when their options do not set it.
    batch_size: int = 16_384
    logs: dict[tuple[str, int], list[Written]] = field(default_factory=dict)
    producers: list[FakeAIOKafkaProducer] = field(default_factory=list)
    consumers: list[FakeAIOKafkaConsumer] = field(default_factory=list)
    #: Every batch delivered or failed, as (topic, partition, records, error).
    batches: list[tuple[str, int, list[Written], BaseException | None]] = field(
        default_factory=list
    )
    _data: asyncio.Event | None = None

    def log(self, topic: str, partition: int) -> list[Written]:
        return self.logs.setdefault((topic, partition), [])

    def written(self, topic: str) -> list[Written]:
        """Every record of ``topic``, partition by partition."""
        return [w for (t, _), log in sorted(self.logs.items()) if t == topic for w in log]

    def append(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Written:
        log = self.log(topic, partition)
        record = Written(topic, partition, len(log), key, value, list(headers))
        log.append(record)
        self.data().set()
        return record

    def data(self) -> asyncio.Event:
        if self._data is None:
            self._data = asyncio.Event()
        return self._data

    def deliver(self) -> None:
        """Acknowledge (or fail) every batch the producers buffered, in buffer order."""
        for producer in self.producers:
            producer.deliver()

    def reachable(self) -> None:
        if not self.up:
            raise KafkaConnectionError("fake broker is down")


def producer_class(cluster: FakeCluster) -> Callable[..., FakeAIOKafkaProducer]:
    """A stand-in for the ``AIOKafkaProducer`` class, bound to ``cluster``."""
    return lambda **options: FakeAIOKafkaProducer(cluster, **options)


class FakeAIOKafkaProducer:
    """The part of ``AIOKafkaProducer`` the service uses (see the module docstring)."""

    def __init__(self, cluster: FakeCluster, **options: Any) -> None:
        self.cluster = cluster
        self.options = options
        self.started = False
        self.stopped = False
        self._max_request_size: int = options.get("max_request_size", 1_048_576)
        self._timeout = options.get("request_timeout_ms", 40_000) / 1000
        self._message_accumulator = MessageAccumulator(
            None, options.get("max_batch_size", cluster.batch_size), 0, self._timeout
        )
        self._partitioner = DefaultPartitioner()
        cluster.producers.append(self)

    async def start(self) -> None:
        self.cluster.reachable()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        await self._message_accumulator.close()

    async def partitions_for(self, topic: str) -> set[int]:
        self.cluster.reachable()
        return set(range(self.cluster.topics[topic]))

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        headers = headers or []
        partitions = sorted(await self.partitions_for(topic))
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        if partition is None:
            partition = self._partitioner(key, partitions, partitions)
        tp = TopicPartition(topic, partition)
        future: asyncio.Future[Any] = await self._message_accumulator.add_message(
            tp, key, value, self._timeout, headers=headers
        )
        self._soon()
        return future

    def create_batch(self) -> BatchBuilder:
        return self._message_accumulator.create_builder()

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        assert partition in await self.partitions_for(topic), "Unrecognized partition"
        future: asyncio.Future[Any] = await self._message_accumulator.add_batch(
            batch, TopicPartition(topic, partition), self._timeout
        )
        self._soon()
        return future

    def _soon(self) -> None:
        if not self.cluster.hold:
            asyncio.get_running_loop().call_soon(self.deliver)

    def deliver(self) -> None:
        if self.cluster.hold:
            return
        accumulator = self._message_accumulator
        for tp in list(accumulator._batches):
            while accumulator._batches.get(tp):
                self._settle(accumulator._pop_batch(tp))

    def _settle(self, batch: MessageBatch) -> None:
        cluster = self.cluster
        tp = batch.tp
        records = [
            Written(
                tp.topic, tp.partition, -1, r.key, r.value, [(k, bytes(v)) for k, v in r.headers]
            )
            for r in DefaultRecordBatch(batch.get_data_buffer())
        ]
        error = None if cluster.up else KafkaConnectionError("fake broker is down")
        for record in records:
            error = error or cluster.refuse(record)
        if error is not None:
            cluster.batches.append((tp.topic, tp.partition, records, error))
            batch.failure(error)
            return
        base = len(cluster.log(tp.topic, tp.partition))
        stored = [
            cluster.append(tp.topic, tp.partition, r.key, r.value, r.headers) for r in records
        ]
        cluster.batches.append((tp.topic, tp.partition, stored, None))
        batch.done(base)


class FakeClient:
    """``AIOKafkaConsumer._client``: the cluster's metadata, asked for on demand."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    async def fetch_all_metadata(self) -> FakeClient:
        self.cluster.reachable()
        return self

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.cluster.topics.get(topic)
        return None if count is None else set(range(count))


def consumer_class(cluster: FakeCluster) -> Callable[..., FakeAIOKafkaConsumer]:
    """A stand-in for the ``AIOKafkaConsumer`` class, bound to ``cluster``."""
    return lambda *topics, **options: FakeAIOKafkaConsumer(cluster, **options)


class FakeAIOKafkaConsumer:
    """The part of ``AIOKafkaConsumer`` an assigned reader uses (no group)."""

    def __init__(self, cluster: FakeCluster, **options: Any) -> None:
        self.cluster = cluster
        self.options = options
        self._client = FakeClient(cluster)
        self.started = False
        self.stopped = False
        self._positions: dict[TopicPartition, int | None] = {}
        cluster.consumers.append(self)

    async def start(self) -> None:
        self.cluster.reachable()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self._positions = {tp: None for tp in tps}

    async def seek_to_end(self, tp: TopicPartition) -> None:
        self._positions[tp] = None  # resolved by the next position(), as aiokafka's reset

    async def position(self, tp: TopicPartition) -> int:
        if self._positions[tp] is None:
            self.cluster.reachable()
            self._positions[tp] = len(self.cluster.log(tp.topic, tp.partition))
        position = self._positions[tp]
        assert position is not None
        return position

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records past the position at once, else wait up to ``timeout_ms`` for some."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            self.cluster.data().clear()
            found = {tp: self._take(tp) for tp in tps}
            found = {tp: records for tp, records in found.items() if records}
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the wait ends (the reader's task would never stop).
            waiter = asyncio.ensure_future(self.cluster.data().wait())
            try:
                done, _ = await asyncio.wait([waiter], timeout=remaining)
            finally:
                waiter.cancel()
            if not done:
                return {}

    def _take(self, tp: TopicPartition) -> list[ConsumerRecord]:
        if not self.cluster.up:
            return []
        start = self._positions[tp]
        assert start is not None, "position not resolved"
        log = self.cluster.log(tp.topic, tp.partition)[start:]
        self._positions[tp] = start + len(log)
        return [
            fetched_record(tp, w.offset, w.value, w.key, w.headers)
            for w in log
        ]
