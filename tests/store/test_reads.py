"""The store's reads as their callers see them (``service.store.reads``): ``show``'s
recent events, ``verify``'s stream and counts, the apply path's inbox rows, on SQLite
and on the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from service.domain.events import EventType
from service.domain.inbox import ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.store.reads import applied_counts, consumers_by_uuid, has_consumers, recent_events
from service.store.schema import processed_events
from service.store.unit_of_work import SqlUnitOfWorkFactory
from tests.apply.helpers import Db, delete, event, new_id, upsert

#: Event ids whose byte order is known: A < B < C.
A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"
C = "00000000-0000-4000-8000-00000000000c"


async def _set_processed_at(db: Db, moment: datetime, *event_ids: str) -> None:
    async with db.engine.begin() as connection:
        await connection.execute(
            update(processed_events)
            .where(processed_events.c.event_id.in_(event_ids))
            .values(processed_at=moment)
        )


async def test_recent_events_are_newest_first_with_every_field(db: Db) -> None:
    consumer = new_id()
    created = upsert(consumer, None, project_id="p", user_id="u")
    stale = upsert(consumer, 7)
    assert (await db.applier.apply(created, EventSource("events", 3, 42))).kind is (
        OutcomeKind.APPLIED
    )
    assert (await db.applier.apply(stale)).kind is OutcomeKind.REJECTED
    await db.applier.apply(upsert(new_id(), None))  # another consumer's row: not shown
    then = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await _set_processed_at(db, then, created.event_id)
    await _set_processed_at(db, then + timedelta(seconds=1), stale.event_id)

    newest, oldest = await recent_events(db.engine, consumer)

    assert newest == ProcessedEvent(
        event_id=stale.event_id,
        consumer_uuid=consumer,
        payload_hash=stale.payload_hash(),
        outcome=OutcomeKind.REJECTED,
        reason=Reason.GENERATION_CONFLICT,
        generation_after=1,  # the generation it was rejected at
        event_type=EventType.UPSERT,
        attempts=1,
        source=None,  # applied without a source: none invented
        processed_at=then + timedelta(seconds=1),
    )
    assert oldest == ProcessedEvent(
        event_id=created.event_id,
        consumer_uuid=consumer,
        payload_hash=created.payload_hash(),
        outcome=OutcomeKind.APPLIED,
        reason=None,
        generation_after=1,
        event_type=EventType.UPSERT,
        attempts=1,
        source=EventSource("events", 3, 42),
        processed_at=then,
    )


async def test_recent_events_at_one_instant_are_in_event_id_order_newest_first(db: Db) -> None:
    """Rows processed at the same instant still come in one order: by event id, from
    the highest; inserted here in neither that order nor its reverse."""
    consumer = new_id()
    for event_id in (B, A, C):
        await db.applier.apply(event(consumer, event_id=event_id))
    await _set_processed_at(db, datetime(2026, 1, 2, tzinfo=UTC), A, B, C)

    events = await recent_events(db.engine, consumer)

    assert [e.event_id for e in events] == [C, B, A]


async def test_recent_events_are_the_last_ten_unless_told(db: Db) -> None:
    consumer = new_id()
    applied = [upsert(consumer) for _ in range(11)]
    start = datetime(2026, 1, 2, tzinfo=UTC)
    for n, ev in enumerate(applied):
        await db.applier.apply(ev)
        await _set_processed_at(db, start + timedelta(minutes=n), ev.event_id)
    newest_first = [ev.event_id for ev in reversed(applied)]

    assert [e.event_id for e in await recent_events(db.engine, consumer)] == newest_first[:10]
    assert [e.event_id for e in await recent_events(db.engine, consumer, 3)] == newest_first[:3]


async def test_applied_counts_count_the_applied_rows_of_each_consumer(db: Db) -> None:
    assert await applied_counts(db.engine) == {}
    twice, once, never = new_id(), new_id(), new_id()
    await db.applier.apply(upsert(twice, None))
    await db.applier.apply(upsert(twice, 9))  # rejected: not counted
    await db.applier.apply(delete(twice, 1))
    await db.applier.apply(upsert(once, None))
    await db.applier.apply(upsert(never, 3))  # rejected (no such consumer)

    assert await applied_counts(db.engine) == {twice: 2, once: 1}


async def test_has_consumers_says_whether_any_row_exists(db: Db) -> None:
    assert await has_consumers(db.engine) is False
    consumer = new_id()
    await db.applier.apply(upsert(consumer, None))
    await db.applier.apply(delete(consumer))
    assert await has_consumers(db.engine) is True  # a tombstone is a row


async def test_consumers_stream_in_byte_wise_uuid_order(db: Db) -> None:
    """Inserted in descending order, streamed ascending by their bytes whatever the
    database's collation (``verify`` merges two databases' streams on it)."""
    uuids = [
        "ffffffff-0000-4000-8000-000000000000",
        "0fffffff-ffff-4fff-8fff-ffffffffffff",
        "0fffffff-0000-4000-8000-000000000000",
        "00000000-0000-4000-8000-00000000000a",
        "00000000-0000-4000-8000-000000000009",
    ]
    for consumer in uuids:
        await db.applier.apply(upsert(consumer, None))

    streamed = [state.uuid async for state in consumers_by_uuid(db.engine)]

    assert streamed == sorted(uuids, key=str.encode)


async def test_a_unit_of_work_reads_inbox_rows_with_their_consumer(db: Db) -> None:
    consumer = new_id()
    created, stale = upsert(consumer, None), upsert(consumer, 5)
    await db.applier.apply(created)
    await db.applier.apply(stale)

    async with SqlUnitOfWorkFactory(db.engine).begin(read_only=True) as unit:
        rows = await unit.load_inbox([stale.event_id, created.event_id, new_id()])

    assert rows == {
        created.event_id: ProcessedEvent(
            created.event_id, consumer, created.payload_hash(), OutcomeKind.APPLIED, None, 1
        ),
        stale.event_id: ProcessedEvent(
            stale.event_id,
            consumer,
            stale.payload_hash(),
            OutcomeKind.REJECTED,
            Reason.GENERATION_CONFLICT,
            1,
        ),
    }
