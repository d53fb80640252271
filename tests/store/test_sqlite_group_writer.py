"""SQLite's lean writer (``service.store.sqlite_writer``) under group commit, on a real file.

What must hold: several partitions' batches applied concurrently through
``GroupCommit`` share transactions, and the database ends exactly as the independent
model says one-at-a-time processing leaves it (consumers, owners and the inbox); the
rows it writes read back through the SQLAlchemy side (timestamps included); a busy
database is a ``TransientDatabaseError`` with nothing committed, and the next group
works on a fresh connection; the durable PRAGMAs are those of the engine.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.apply.applier import Applier
from service.apply.group import GroupCommit
from service.config import Settings, load_settings
from service.contract.decode import decode_event
from service.domain.outcomes import EventSource
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError
from service.store.migrate import upgrade
from service.store.reads import get_consumer
from service.store.sqlite_writer import SqliteGroupWriter
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.store.writes import RaceKind, StoreRace
from service.testing.database import consumer_state, inbox
from service.testing.model import event_doc
from service.testing.workload import expected_state, mixed_stream


@pytest.fixture
async def settings(sqlite_url: str) -> Settings:
    settings = load_settings(database_url=sqlite_url)
    await upgrade(settings)
    return settings


@pytest.fixture
async def group(settings: Settings) -> AsyncIterator[GroupCommit]:
    engine = create_engine(settings)
    units = SqlUnitOfWorkFactory(engine)
    writer = SqliteGroupWriter(settings)
    try:
        yield GroupCommit(Applier(units, settings), writer, units.write_turn)
    finally:
        await writer.close()
        await engine.dispose()


def _by_partition(stream: list[dict[str, Any]], partitions: int) -> list[list[Any]]:
    """The stream as Kafka would deliver it: by key, each key's events in order."""
    out: list[list[Any]] = [[] for _ in range(partitions)]
    for doc in stream:
        partition = zlib.crc32(doc["consumer_uuid"].encode()) % partitions
        event = decode_event(json.dumps(doc).encode(), max_bytes=65_536)
        out[partition].append((event, EventSource("events", partition, len(out[partition]))))
    return out


async def test_concurrent_partitions_end_as_the_model_says(
    group: GroupCommit, settings: Settings
) -> None:
    stream = mixed_stream(consumers=60, events=900, seed=22)
    outcomes: dict[str, str] = {}

    async def partition(items: list[Any]) -> None:
        for start in range(0, len(items), 20):
            batch = items[start : start + 20]
            for (event, _), outcome in zip(batch, await group.apply_batch(batch), strict=True):
                if outcome.kind.value != "duplicate":
                    reason = f":{outcome.reason.value}" if outcome.reason else ""
                    outcomes.setdefault(event.event_id, f"{outcome.kind.value}{reason}")

    await asyncio.gather(*(partition(items) for items in _by_partition(stream, 6)))
    model = expected_state(stream)
    assert group.groups < group.parts  # batches of several partitions shared transactions
    assert await consumer_state(settings.database_url) == model.state()
    recorded = await inbox(settings.database_url)
    assert recorded == {
        event_id: (result.split(":")[0], result.split(":")[1] if ":" in result else None)
        for event_id, result in model.outcomes.items()
    }
    assert outcomes == model.outcomes


async def test_rows_written_read_back_through_sqlalchemy(
    group: GroupCommit, settings: Settings
) -> None:
    before = datetime.now(UTC)
    doc = event_doc("00000000-0000-4000-8000-000000000001", project="p", user="u")
    event = decode_event(json.dumps(doc).encode(), max_bytes=65_536)
    (outcome,) = await group.apply_batch([(event, EventSource("events", 0, 0))])
    assert outcome.kind.value == "applied"
    engine = create_engine(settings)
    try:
        state = await get_consumer(engine, event.consumer_uuid)
    finally:
        await engine.dispose()
    assert state is not None and (state.generation, state.project_id) == (1, "p")
    assert state.created_at is not None
    assert before - timedelta(seconds=1) <= state.created_at <= datetime.now(UTC)


async def test_a_busy_database_is_transient_and_the_next_group_works(
    group: GroupCommit, settings: Settings
) -> None:
    writer = group.writer
    assert isinstance(writer, SqliteGroupWriter)
    writer._busy_timeout_ms = 50
    holder = sqlite3.connect(writer.path, isolation_level=None)
    doc = event_doc("00000000-0000-4000-8000-000000000002", project="p", user="u")
    event = decode_event(json.dumps(doc).encode(), max_bytes=65_536)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TransientDatabaseError):
            await group.apply_batch([(event, EventSource("events", 0, 0))])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await consumer_state(settings.database_url) == {}
    (outcome,) = await group.apply_batch([(event, EventSource("events", 0, 0))])
    assert outcome.kind.value == "applied"


async def test_the_writer_uses_the_durable_pragmas(group: GroupCommit) -> None:
    writer = group.writer
    assert isinstance(writer, SqliteGroupWriter)

    def pragmas(group_tx: Any) -> tuple[int, str]:
        connection = group_tx._connection
        return (
            connection.execute("PRAGMA synchronous").fetchone()[0],
            connection.execute("PRAGMA journal_mode").fetchone()[0],
        )

    assert await writer.run_group(pragmas) == (2, "wal")  # FULL, WAL


async def test_a_part_that_raises_is_undone_alone(group: GroupCommit, settings: Settings) -> None:
    """The savepoint of ``SqliteGroup.part``: what a raced part wrote goes, what the other
    parts of the same transaction wrote stays."""
    writer = group.writer
    assert isinstance(writer, SqliteGroupWriter)
    insert = "INSERT INTO projects (external_id, created_at) VALUES (?, '2026-01-01 00:00:00')"

    def work(group_tx: Any) -> None:
        for name in ("kept-1", "undone", "kept-2"):
            try:
                with group_tx.part() as unit:
                    unit._connection.execute(insert, (name,))
                    if name == "undone":
                        raise StoreRace(RaceKind.CONSUMER)
            except StoreRace:
                pass

    await writer.run_group(work)
    with sqlite3.connect(writer.path) as connection:
        names = {row[0] for row in connection.execute("SELECT external_id FROM projects")}
    assert names == {"kept-1", "kept-2"}


async def test_a_failed_row_is_replaced_by_the_writer_when_the_event_applies(
    group: GroupCommit, settings: Settings
) -> None:
    """An event recorded ``failed`` (CAS retries exhausted) and delivered again applies
    now: the writer replaces its inbox row in the group's own transaction (the
    statement binds ``outcome = 'failed'`` itself; its parameter must go along)."""
    writer = group.writer
    assert isinstance(writer, SqliteGroupWriter)
    doc = event_doc("00000000-0000-4000-8000-000000000003", project="p", user="u")
    event = decode_event(json.dumps(doc).encode(), max_bytes=65_536)
    with sqlite3.connect(writer.path) as connection:
        connection.execute(
            "INSERT INTO processed_events (event_id, consumer_uuid, event_type, payload_hash,"
            " outcome, reason, generation_after, attempts, source_topic, source_partition,"
            " source_offset, processed_at) VALUES (?, ?, ?, ?, 'failed',"
            " 'cas_retries_exhausted', NULL, 3, 'events', 0, 0, '2026-01-01 00:00:00.000000')",
            (event.event_id, event.consumer_uuid, event.type.value, event.payload_hash()),
        )
    (outcome,) = await group.apply_batch([(event, EventSource("events", 0, 1))])
    assert (outcome.kind.value, outcome.generation_after) == ("applied", 1)
    assert (await inbox(settings.database_url))[event.event_id] == ("applied", None)
    assert group.applier.stats.batch_fallbacks == 0  # the group's writer did it, no fallback
