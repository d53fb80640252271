"""What the daemon writes back to Kafka: dead letters and outcome records.

Both are awaited until the broker acknowledged them (acks=all, idempotent producer)
before the partition's offset is committed; a failed write is an infrastructure
failure for the caller to retry, never a reason to skip an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from service.apply.outcomes import Outcome
from service.broker import BrokerUnavailable, client_options, start_bounded
from service.config import Settings
from service.contract.decode import InvalidEvent
from service.contract.records import outcome_key, outcome_record

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.daemon.partition import DeadLetter


class Publisher:
    """The daemon's producer, replaced after any failed write.

    A write that failed (timed out while the broker was away, or was refused with
    ``OutOfOrderSequenceNumber`` because earlier batches of this idempotent producer
    expired) leaves the producer's sequence numbers out of step with the broker, and
    its sender keeps hammering the broker for metadata while batches are pending.  So
    the producer is dropped at once and a fresh one (new producer id, nothing pending)
    is started by the next attempt, which the caller paces with its backoff.
    """

    def __init__(self, settings: Settings, broker_reachable: Callable[[], bool] | None = None):
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._broker_reachable = broker_reachable or (lambda: True)

    @property
    def outcomes_enabled(self) -> bool:
        return self.settings.outcomes_topic is not None

    def _make(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=max(1_048_576, self.settings.max_event_bytes + 65_536),
        )

    async def start(self) -> None:
        """Connect, bounded by the request timeout; raises ``BrokerUnavailable`` (with the
        half-started producer closed) when the broker cannot be reached."""
        producer = self._make()
        await start_bounded(producer, self.settings, "dead-letter producer")
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await asyncio.wait_for(producer.stop(), self.settings.request_timeout_seconds)

    async def stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()

    async def _ready(self) -> AIOKafkaProducer:
        """The producer to write with, (re)started if the last write failed; fails fast
        (as an infrastructure error) while the daemon's probe finds the broker away."""
        if not self._broker_reachable():
            raise KafkaConnectionError("broker unreachable; not writing until it is back")
        if self._producer is None:
            try:
                await self.start()
            except BrokerUnavailable as exc:
                raise KafkaConnectionError(str(exc)) from None
        assert self._producer is not None
        return self._producer

    async def _written(self, sends: Callable[[AIOKafkaProducer], Awaitable[None]]) -> None:
        producer = await self._ready()
        try:
            await sends(producer)
        except Exception:
            await self.stop_quietly()  # see the class docstring
            raise

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher not started")
        return self._producer

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter (original key, value and headers plus error headers) and wait
        for all acks; raises on the first failure so the batch is retried whole."""

        async def sends(producer: AIOKafkaProducer) -> None:
            futures = [
                await producer.send(
                    self.settings.dlq_topic,
                    value=letter.record.value,
                    key=letter.record.key,
                    headers=letter.headers,
                )
                for letter in letters
            ]
            await asyncio.gather(*futures)

        await self._written(sends)

    async def outcomes(
        self,
        applied: Sequence[tuple[ConsumerRecord, Outcome]],
        invalid: Sequence[tuple[ConsumerRecord, InvalidEvent]],
    ) -> None:
        """One record per event, keyed by event id (no key when the id was unreadable)."""
        topic = self.settings.outcomes_topic
        if topic is None:
            return
        now = datetime.now(UTC)
        records: list[tuple[bytes, bytes | None]] = []
        for record, outcome in applied:
            value = outcome_record(
                event_id=outcome.event_id,
                consumer_uuid=outcome.consumer_uuid,
                outcome=outcome.kind,
                reason=outcome.reason,
                generation_after=outcome.generation_after,
                original_outcome=outcome.original,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                processed_at=now,
            )
            records.append((value, outcome_key(outcome.event_id)))
        for record, error in invalid:
            value = outcome_record(
                event_id=None,
                consumer_uuid=None,
                outcome="invalid",
                reason=error.reason,
                generation_after=None,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                processed_at=now,
                message=error.message,
            )
            records.append((value, None))

        async def sends(producer: AIOKafkaProducer) -> None:
            await _send_batched(producer, topic, records)

        await self._written(sends)


_PARTITIONER = DefaultPartitioner()


async def _send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> None:
    """Send with one batch builder per partition and wait for every ack.

    ``send()`` per record (a coroutine, a future, an accumulator lookup each) cost about
    as much CPU as building the record itself; the outcomes are one record per event,
    so this is on the daemon's hot path.  Keyed records land on the partition the
    default partitioner would choose, exactly as ``send()`` would put them.
    """
    partitions = list(await producer.partitions_for(topic))
    builders: dict[int, BatchBuilder] = {}
    futures: list[asyncio.Future[object]] = []
    for value, key in records:
        if key is None:
            partition = random.choice(partitions)
        else:
            partition = _PARTITIONER(key, partitions, partitions)
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError("an outcome record larger than a whole batch")
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*futures)
