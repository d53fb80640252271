"""The launched servers are real: Kafka speaks the protocol aiokafka uses, PostgreSQL speaks SQL."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.embedded.postgres import PostgresCluster

pytestmark = pytest.mark.asyncio


@pytest.mark.kafka
async def test_produce_and_consume_with_manual_commit(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic(partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = {}
        for i in range(30):
            meta = await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
            sent[f"v{i}"] = (meta.partition, meta.offset)
    finally:
        await producer.stop()
    # Same key, same partition: the ordering guarantee the service relies on.
    by_key: dict[str, set[int]] = {}
    for i in range(30):
        by_key.setdefault(f"k{i % 5}", set()).add(sent[f"v{i}"][0])
    assert all(len(parts) == 1 for parts in by_key.values())

    group = f"g-{topic}"

    async def consume_all() -> list[str]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        seen: list[str] = []
        try:
            async with asyncio.timeout(30):
                while len(seen) < 30:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        seen.extend(r.value.decode() for r in records)
            await consumer.commit()
            committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
        finally:
            await consumer.stop()
        assert sum(v or 0 for v in committed.values()) == 30
        return seen

    first = await consume_all()
    assert sorted(first) == sorted(sent)
    # After the manual commit a new member of the group gets nothing again.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        again = await consumer.getmany(timeout_ms=2000)
        assert sum(len(v) for v in again.values()) == 0
        positions = [await consumer.position(TopicPartition(topic, p)) for p in range(3)]
        assert sum(positions) == 30
    finally:
        await consumer.stop()


@pytest.mark.postgres
async def test_postgres_through_sqlalchemy_asyncpg(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
            await conn.execute(text("CREATE TABLE probe (id int primary key, v text)"))
            await conn.execute(text("INSERT INTO probe VALUES (1, :v)"), {"v": "x'; drop"})
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM probe"))).scalar_one() == "x'; drop"
    finally:
        await engine.dispose()
    assert version.startswith("15.")


async def test_sqlite_file_through_aiosqlite(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE probe (id integer primary key)"))
            await conn.execute(text("INSERT INTO probe VALUES (1), (2)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM probe"))).scalar_one() == 2
    finally:
        await engine.dispose()
    assert sqlite_url.endswith(".sqlite3")


async def _durability(url: str) -> dict[str, str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                name: (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            }
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_benchmark_cluster_is_durable_and_test_cluster_is_fast(
    postgres_url: str, postgres_cluster
) -> None:
    """The benchmarks compare with a user's (durable) PostgreSQL, so their switch must
    really reach the server; the tests keep the fast settings."""
    if postgres_cluster is not None:  # a server of our own (not CONSUMERGEN_TEST_POSTGRES_URL)
        assert await _durability(postgres_url) == postgres_cluster.durability_settings
        assert set(postgres_cluster.durability_settings.values()) == {"off"}
    folder = Path(tempfile.mkdtemp(prefix="consumergen-pg-durable-"))
    durable = PostgresCluster(folder, durable=True)
    try:
        durable.start()
        shown = await _durability(durable.url())
    finally:
        durable.remove()
    assert shown == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
