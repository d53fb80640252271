"""Reading back what the producer wrote, with a plain aiokafka consumer (no service code)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import Settings, load_settings


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


async def read_all(
    bootstrap: str, topic: str, expected: int, wait_seconds: float = 20.0
) -> list[Record]:
    """Every record of ``topic`` once ``expected`` of them arrived (fail after wait_seconds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while len(records) < expected:
            assert asyncio.get_running_loop().time() < deadline, (
                f"only {len(records)} of {expected} records in {topic}"
            )
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(
                    Record(m.partition, m.offset, m.key, m.value, tuple(m.headers)) for m in items
                )
        # Nothing more than expected: wait one more poll to catch extras.
        extra = await consumer.getmany(timeout_ms=300)
        records.extend(
            Record(m.partition, m.offset, m.key, m.value, tuple(m.headers))
            for items in extra.values()
            for m in items
        )
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def settings_for(bootstrap: str, topic: str, **overrides: object) -> Settings:
    return load_settings(
        None,
        bootstrap_servers=bootstrap,
        topic=topic,
        dlq_topic=topic + ".dlq",
        request_timeout_seconds=overrides.pop("request_timeout_seconds", 10.0),
        **overrides,
    )
