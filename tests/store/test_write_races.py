"""The store's writes check what they did: a write that changed fewer rows than it meant to
is a race (``StoreRace``) and the caller's transaction is rolled back, never a silent
success.  Every case on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from service.domain.consumer import ConsumerState
from service.domain.events import EventType
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.domain.rules import Write, WriteKind
from service.store.writes import RaceKind, StoreRace, write_consumers, write_inbox
from tests.apply.helpers import Db, new_id

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def row(
    event_id: str,
    outcome: OutcomeKind = OutcomeKind.APPLIED,
    *,
    payload_hash: str = "h1",
    reason: Reason | None = None,
    generation_after: int | None = 1,
    attempts: int = 1,
    source: EventSource | None = None,
) -> ProcessedEvent:
    return ProcessedEvent(
        event_id=event_id,
        consumer_uuid=new_id(),
        payload_hash=payload_hash,
        outcome=outcome,
        reason=reason,
        generation_after=generation_after,
        event_type=EventType.UPSERT,
        attempts=attempts,
        source=source,
    )


async def inbox_rows(db: Db, event_id: str) -> list[tuple[object, ...]]:
    return await db.rows(
        "SELECT outcome, reason, generation_after, attempts, payload_hash, source_offset"
        " FROM processed_events WHERE event_id = :e",
        e=event_id,
    )


async def write(db: Db, rows: list[tuple[InboxWrite, ProcessedEvent]]) -> None:
    async with db.engine.begin() as connection:
        await write_inbox(connection, rows, NOW)


FAILED = {
    "outcome": OutcomeKind.FAILED,
    "reason": Reason.CAS_RETRIES_EXHAUSTED,
    "generation_after": None,
    "attempts": 10,
}


# --- the inbox ---------------------------------------------------------------------


async def test_an_inbox_insert_of_an_event_id_already_recorded_is_a_race(db: Db) -> None:
    first = new_id()
    await write(db, [(InboxWrite.INSERT, row(first))])
    fresh = new_id()
    with pytest.raises(StoreRace) as caught:
        await write(
            db,
            [(InboxWrite.INSERT, row(fresh)), (InboxWrite.INSERT, row(first, payload_hash="h2"))],
        )
    assert caught.value.kind is RaceKind.INBOX
    # The original row is untouched and nothing of the raced transaction stayed.
    assert await inbox_rows(db, first) == [("applied", None, 1, 1, "h1", None)]
    assert await inbox_rows(db, fresh) == []


async def test_a_failed_row_is_replaced_by_the_settled_outcome(db: Db) -> None:
    event_id = new_id()
    await write(db, [(InboxWrite.INSERT, row(event_id, **FAILED))])  # type: ignore[arg-type]
    settled = row(event_id, generation_after=7, attempts=2, source=EventSource("t", 0, 9))
    await write(db, [(InboxWrite.REPLACE_FAILED, settled)])
    assert await inbox_rows(db, event_id) == [("applied", None, 7, 2, "h1", 9)]


async def test_replacing_a_row_that_is_no_longer_failed_is_a_race(db: Db) -> None:
    """Another daemon settled the event in between: its outcome stands."""
    event_id = new_id()
    await write(db, [(InboxWrite.INSERT, row(event_id, generation_after=3))])
    late = row(event_id, OutcomeKind.REJECTED, reason=Reason.GENERATION_CONFLICT)
    with pytest.raises(StoreRace) as caught:
        await write(db, [(InboxWrite.REPLACE_FAILED, late)])
    assert caught.value.kind is RaceKind.INBOX
    assert await inbox_rows(db, event_id) == [("applied", None, 3, 1, "h1", None)]


async def test_replacing_a_failed_row_of_another_payload_is_a_race(db: Db) -> None:
    event_id = new_id()
    await write(db, [(InboxWrite.INSERT, row(event_id, **FAILED))])  # type: ignore[arg-type]
    other = row(event_id, payload_hash="h2", generation_after=4)
    with pytest.raises(StoreRace):
        await write(db, [(InboxWrite.REPLACE_FAILED, other)])
    assert await inbox_rows(db, event_id) == [
        ("failed", "cas_retries_exhausted", None, 10, "h1", None)
    ]


async def test_replacing_a_failed_row_that_is_gone_is_a_race(db: Db) -> None:
    with pytest.raises(StoreRace) as caught:
        await write(db, [(InboxWrite.REPLACE_FAILED, row(new_id()))])
    assert caught.value.kind is RaceKind.INBOX
    assert await db.count("processed_events") == 0


async def test_rows_marked_none_are_not_written(db: Db) -> None:
    event_id = new_id()
    await write(db, [(InboxWrite.NONE, row(event_id)), (InboxWrite.INSERT, row(new_id()))])
    assert await inbox_rows(db, event_id) == []
    assert await db.count("processed_events") == 1


async def test_an_inbox_row_without_its_type_or_attempts_is_refused(db: Db) -> None:
    bare = ProcessedEvent(new_id(), new_id(), "h", OutcomeKind.APPLIED, None, 1)
    typed = replace(bare, event_type=EventType.UPSERT)
    counted = replace(bare, attempts=1)
    for incomplete in (bare, typed, counted):
        for how in (InboxWrite.INSERT, InboxWrite.REPLACE_FAILED):
            with pytest.raises(ValueError) as caught:
                await write(db, [(how, incomplete)])
            assert str(caught.value) == "an inbox row to write needs its event_type and attempts"
    assert await db.count("processed_events") == 0


async def test_inserts_and_replacements_in_one_write_are_all_done(db: Db) -> None:
    failed = [new_id(), new_id()]
    await write(db, [(InboxWrite.INSERT, row(e, **FAILED)) for e in failed])  # type: ignore[arg-type]
    fresh = new_id()
    await write(
        db,
        [
            (InboxWrite.REPLACE_FAILED, row(failed[0], generation_after=5)),
            (InboxWrite.INSERT, row(fresh)),
            (InboxWrite.NONE, row(new_id())),
            (InboxWrite.REPLACE_FAILED, row(failed[1], generation_after=6)),
        ],
    )
    assert await inbox_rows(db, failed[0]) == [("applied", None, 5, 1, "h1", None)]
    assert await inbox_rows(db, failed[1]) == [("applied", None, 6, 1, "h1", None)]
    assert await inbox_rows(db, fresh) == [("applied", None, 1, 1, "h1", None)]
    assert await db.count("processed_events") == 3


# --- consumers ---------------------------------------------------------------------


def state(uuid: str, generation: int, event_id: str, **fields: object) -> ConsumerState:
    values: dict[str, object] = {
        "uuid": uuid,
        "generation": generation,
        "deleted": False,
        "project_id": "p",
        "user_id": "u",
        "consumer_type": None,
        "last_event_id": event_id,
    }
    values.update(fields)
    return ConsumerState(**values)  # type: ignore[arg-type]


async def consumer_rows(db: Db, uuid: str) -> list[tuple[object, ...]]:
    return await db.rows(
        "SELECT c.generation, c.last_event_id, c.deleted_at IS NOT NULL, p.external_id"
        " FROM consumers c JOIN projects p ON p.id = c.project_id WHERE c.uuid = :u",
        u=uuid,
    )


async def write_writes(db: Db, writes: list[Write]) -> None:
    async with db.engine.begin() as connection:
        await write_consumers(connection, writes, NOW)


async def test_an_insert_of_a_uuid_that_exists_is_a_race(db: Db) -> None:
    taken, fresh = new_id(), new_id()
    first = state(taken, 1, new_id())
    await write_writes(db, [Write(WriteKind.INSERT, None, first)])
    with pytest.raises(StoreRace) as caught:
        await write_writes(
            db,
            [
                Write(WriteKind.INSERT, None, state(fresh, 1, new_id())),
                Write(WriteKind.INSERT, None, state(taken, 1, new_id(), project_id="other")),
            ],
        )
    assert caught.value.kind is RaceKind.CONSUMER
    assert await consumer_rows(db, taken) == [(1, first.last_event_id, False, "p")]
    assert await consumer_rows(db, fresh) == []


async def test_an_update_of_a_row_that_moved_on_is_a_race(db: Db) -> None:
    uuid = new_id()
    first = state(uuid, 1, new_id())
    await write_writes(db, [Write(WriteKind.INSERT, None, first)])
    second = state(uuid, 2, new_id(), project_id="q")
    await write_writes(db, [Write(WriteKind.UPDATE, first, second)])
    assert await consumer_rows(db, uuid) == [(2, second.last_event_id, False, "q")]
    # A writer that still holds generation 1 as read: its compare-and-swap matches nothing.
    stale = state(uuid, 2, new_id(), project_id="stale")
    with pytest.raises(StoreRace) as caught:
        await write_writes(db, [Write(WriteKind.UPDATE, first, stale)])
    assert caught.value.kind is RaceKind.CONSUMER
    # Same generation, another event made it (pruned and re-created): no match either.
    same_generation = state(uuid, 2, new_id())
    with pytest.raises(StoreRace):
        await write_writes(db, [Write(WriteKind.UPDATE, same_generation, stale)])
    assert await consumer_rows(db, uuid) == [(2, second.last_event_id, False, "q")]


async def test_a_tombstone_write_stamps_deleted_at(db: Db) -> None:
    uuid = new_id()
    live = state(uuid, 1, new_id())
    await write_writes(db, [Write(WriteKind.INSERT, None, live)])
    tombstone = state(uuid, 2, new_id(), deleted=True)
    await write_writes(db, [Write(WriteKind.UPDATE, live, tombstone)])
    assert await consumer_rows(db, uuid) == [(2, tombstone.last_event_id, True, "p")]
    born_deleted = new_id()
    await write_writes(
        db, [Write(WriteKind.INSERT, None, state(born_deleted, 3, "e", deleted=True))]
    )
    assert await consumer_rows(db, born_deleted) == [(3, "e", True, "p")]


def test_a_race_names_what_changed() -> None:
    assert str(StoreRace(RaceKind.CONSUMER)) == "consumer changed concurrently"
    assert str(StoreRace(RaceKind.INBOX)) == "inbox changed concurrently"
