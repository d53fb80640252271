"""Reading the store: the rows as their one domain type, for deciding and for operators.

``load_inbox`` and ``load_consumers`` are the reads of a unit of work (one statement
per table for a whole batch, inside the caller's transaction).  ``get_consumer``,
``recent_events``, ``applied_counts`` and ``consumers_by_uuid`` serve ``show`` and
``verify`` on read-only connections of their own.  They live together because they
share the one mapping of each row to its type (``ConsumerState``, ``ProcessedEvent``),
and the consumer SELECT with its owner joins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.consumer import ConsumerState
from service.domain.events import EventType
from service.domain.inbox import ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.store.dialects import dialect_for
from service.store.engine import read_only
from service.store.schema import consumer_types, consumers, processed_events, projects, users


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _consumer_select() -> Select[Any]:
    c = consumers
    return select(
        c.c.uuid,
        c.c.generation,
        c.c.deleted_at,
        c.c.last_event_id,
        c.c.created_at,
        c.c.updated_at,
        projects.c.external_id.label("project_id"),
        users.c.external_id.label("user_id"),
        consumer_types.c.name.label("consumer_type"),
    ).select_from(
        c.join(projects, projects.c.id == c.c.project_id)
        .join(users, users.c.id == c.c.user_id)
        .outerjoin(consumer_types, consumer_types.c.id == c.c.consumer_type_id)
    )


#: What ``load_consumers`` reads: ``_consumer_select`` without the timestamps.
DECIDING: Final = select(
    consumers.c.uuid,
    consumers.c.generation,
    consumers.c.deleted_at.is_not(None).label("deleted"),
    consumers.c.last_event_id,
    projects.c.external_id.label("project_id"),
    users.c.external_id.label("user_id"),
    consumer_types.c.name.label("consumer_type"),
).select_from(
    consumers.join(projects, projects.c.id == consumers.c.project_id)
    .join(users, users.c.id == consumers.c.user_id)
    .outerjoin(consumer_types, consumer_types.c.id == consumers.c.consumer_type_id)
)


def deciding_states(rows: Iterable[Sequence[Any]]) -> dict[str, ConsumerState]:
    """``DECIDING``'s rows as states by UUID: one conversion for every driver that runs
    it (SQLAlchemy's rows here, ``sqlite3``'s tuples in ``store.sqlite_writer``)."""
    return {
        uuid: ConsumerState(
            uuid=uuid,
            generation=generation,
            deleted=bool(deleted),
            project_id=project_id,
            user_id=user_id,
            consumer_type=consumer_type,
            last_event_id=last_event_id,
        )
        for uuid, generation, deleted, last_event_id, project_id, user_id, consumer_type in rows
    }


def _consumer(row: Any) -> ConsumerState:
    return ConsumerState(
        uuid=row.uuid,
        generation=row.generation,
        deleted=row.deleted_at is not None,
        project_id=row.project_id,
        user_id=row.user_id,
        consumer_type=row.consumer_type,
        last_event_id=row.last_event_id,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        deleted_at=_utc(row.deleted_at),
    )


def inbox_rows(rows: Iterable[Sequence[Any]]) -> dict[str, ProcessedEvent]:
    """Inbox rows selected as (event_id, consumer_uuid, payload_hash, outcome, reason,
    generation_after), by event id: one reading for every driver's rows (SQLAlchemy's,
    sqlite3's, asyncpg's Records)."""
    return {
        event_id: ProcessedEvent(
            event_id=event_id,
            consumer_uuid=consumer_uuid,
            payload_hash=payload_hash,
            outcome=OutcomeKind(outcome),
            reason=Reason(reason) if reason is not None else None,
            generation_after=generation_after,
        )
        for event_id, consumer_uuid, payload_hash, outcome, reason, generation_after in rows
    }


async def load_inbox(
    connection: AsyncConnection, event_ids: Iterable[str]
) -> dict[str, ProcessedEvent]:
    """The inbox rows of ``event_ids`` (the fields the rules need), in one SELECT."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    t = processed_events
    rows = await connection.execute(
        select(
            t.c.event_id,
            t.c.consumer_uuid,
            t.c.payload_hash,
            t.c.outcome,
            t.c.reason,
            t.c.generation_after,
        ).where(t.c.event_id.in_(ids))
    )
    return inbox_rows(rows)


async def load_consumers(
    connection: AsyncConnection, uuids: Iterable[str]
) -> dict[str, ConsumerState]:
    """The consumer rows (tombstones included) of ``uuids``, in one SELECT: the fields
    the rules decide on.  The timestamps are left None: the apply path never reads
    them, and converting three of them per row (SQLite keeps them as text) was a
    measurable share of a batch's read (``get_consumer`` has them all)."""
    wanted = sorted(set(uuids))
    if not wanted:
        return {}
    rows = await connection.execute(DECIDING.where(consumers.c.uuid.in_(wanted)))
    return deciding_states(rows)


async def get_consumer(engine: AsyncEngine, uuid: str) -> ConsumerState | None:
    """The consumer row of ``uuid`` (a tombstone has ``deleted``), or None."""
    async with engine.connect() as connection:
        connection = await read_only(connection)
        row = (await connection.execute(_consumer_select().where(consumers.c.uuid == uuid))).first()
    return None if row is None else _consumer(row)


async def recent_events(engine: AsyncEngine, uuid: str, limit: int = 10) -> list[ProcessedEvent]:
    """The last ``limit`` inbox rows of consumer ``uuid`` (every field), newest first."""
    t = processed_events
    async with engine.connect() as connection:
        connection = await read_only(connection)
        rows = await connection.execute(
            select(t)
            .where(t.c.consumer_uuid == uuid)
            .order_by(t.c.processed_at.desc(), t.c.event_id.desc())
            .limit(limit)
        )
        return [
            ProcessedEvent(
                event_id=row.event_id,
                consumer_uuid=row.consumer_uuid,
                payload_hash=row.payload_hash,
                outcome=OutcomeKind(row.outcome),
                reason=Reason(row.reason) if row.reason is not None else None,
                generation_after=row.generation_after,
                event_type=EventType(row.event_type),
                attempts=row.attempts,
                source=None
                if row.source_topic is None
                else EventSource(row.source_topic, row.source_partition, row.source_offset),
                processed_at=_utc(row.processed_at),
            )
            for row in rows
        ]


async def applied_counts(engine: AsyncEngine) -> dict[str, int]:
    """Per consumer UUID, the number of APPLIED inbox rows (for `verify`'s invariant:
    while nothing was pruned, it equals the consumer's generation)."""
    t = processed_events
    async with engine.connect() as connection:
        connection = await read_only(connection)
        rows = await connection.execute(
            select(t.c.consumer_uuid, func.count())
            .where(t.c.outcome == OutcomeKind.APPLIED.value)
            .group_by(t.c.consumer_uuid)
        )
        return {uuid: int(count) for uuid, count in rows}


async def consumers_by_uuid(engine: AsyncEngine) -> AsyncIterator[ConsumerState]:
    """Every consumer row, streamed in UUID order byte-wise on every database (so that
    the streams of two databases merge)."""
    ordered = dialect_for(engine.dialect.name).bytewise(consumers.c.uuid)
    query = _consumer_select().order_by(ordered).execution_options(yield_per=2000)
    async with engine.connect() as connection:
        result = await connection.stream(query)
        async for row in result:
            yield _consumer(row)


async def has_consumers(engine: AsyncEngine) -> bool:
    """Whether the consumers table holds any row."""
    async with engine.connect() as connection:
        count = (await connection.execute(select(func.count()).select_from(consumers))).scalar()
    return bool(count)
