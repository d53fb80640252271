"""Raw Kafka helpers for tests: write events and read topics without the service's code."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import ConsumerRecord


async def produce_docs(bootstrap: str, topic: str, docs: Sequence[dict[str, Any]]) -> None:
    """Send JSON documents keyed by consumer UUID, in order, acks=all."""
    await produce_raw(
        bootstrap,
        topic,
        [(d["consumer_uuid"].encode(), json.dumps(d).encode()) for d in docs],
    )


async def produce_raw(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


RawRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]


async def produce_large(
    bootstrap: str,
    topic: str,
    records: Sequence[RawRecord],
    *,
    compression_type: str | None = None,
    max_request_size: int = 16 * 1024 * 1024,
) -> None:
    """Send (key, value, headers, partition) records, in order, acks=all, with the
    client-side size limit raised (the topic's ``max.message.bytes`` still applies)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=compression_type,
        max_request_size=max_request_size,
    )
    await producer.start()
    try:
        for key, value, headers, partition in records:  # one at a time: each acked in order
            await (
                await producer.send(
                    topic, value=value, key=key, headers=headers, partition=partition
                )
            )
    finally:
        await producer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described[0]["partitions"])
    assert partitions, f"topic {topic} has no partitions (does it exist?)"
    return partitions


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topic: str, within: float = 30
) -> dict[int, int]:
    """The group's committed offsets of ``topic``.  On a fresh broker the group
    coordinator (the ``__consumer_offsets`` topic) takes a moment to exist: that answer,
    and only that one, is asked again, for at most ``within`` seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except GroupCoordinatorNotAvailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def commit_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Set the group's committed offsets of ``topic`` (partition -> next offset to read),
    as a member of no generation: only while no member is in the group.  Tests rewind a
    partition with it to stand for a daemon that died between a batch's acknowledged
    writes and its offset commit, so that the batch is delivered again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(partitions)
        await consumer.commit({tp: offsets[tp.partition] for tp in partitions})
    finally:
        await consumer.stop()


async def wait_all_committed(bootstrap: str, group: str, topic: str, within: float = 60) -> None:
    """Poll until the group's committed offsets reach the end of every partition."""
    ends = await end_offsets(bootstrap, topic)
    deadline = time.monotonic() + within
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = await committed_offsets(bootstrap, group, topic)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"group {group} did not catch up: committed {committed}, ends {ends}")


async def read_all(bootstrap: str, topic: str, within: float = 30) -> list[ConsumerRecord]:
    """Every record currently in ``topic`` (up to the end offsets taken at the start)."""
    ends = await end_offsets(bootstrap, topic)
    total = sum(ends.values())
    if total == 0:
        return []  # (a consumer stopped right after starting trips over an aiokafka race)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in ends])
        async with asyncio.timeout(within):
            while len(records) < total:
                batch = await consumer.getmany(timeout_ms=500)
                for chunk in batch.values():
                    records.extend(chunk)
    finally:
        await consumer.stop()
    return records
