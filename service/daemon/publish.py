"""What the daemon writes back to Kafka: dead letters and outcome records.

Both are awaited until the broker acknowledged them (acks=all, idempotent producer)
before the partition's offset is committed; a failed write is an infrastructure
failure for the caller to retry, never a reason to skip an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from service.apply.outcomes import Outcome
from service.broker import client_options
from service.config import Settings
from service.contract.decode import InvalidEvent
from service.contract.records import outcome_key, outcome_record

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.daemon.partition import DeadLetter


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

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
        self._producer = self._make()
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher not started")
        return self._producer

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter (original key, value and headers plus error headers) and wait
        for all acks; raises on the first failure so the batch is retried whole."""
        futures = [
            await self.producer.send(
                self.settings.dlq_topic,
                value=letter.record.value,
                key=letter.record.key,
                headers=letter.headers,
            )
            for letter in letters
        ]
        await asyncio.gather(*futures)

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
        futures = []
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
            key = outcome_key(outcome.event_id)
            futures.append(await self.producer.send(topic, value=value, key=key))
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
            futures.append(await self.producer.send(topic, value=value, key=None))
        await asyncio.gather(*futures)
