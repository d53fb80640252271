"""How the Applier settles races that are not an unconditional event's lost compare-and-swap:

* an inbox race (someone recorded the same event id between our read and our write) is
  decided again at once from a fresh read, never retried with backoff;
* recording FAILED can race too: the fresh read then decides (the event may have settled
  elsewhere: a duplicate, not a failure);
* a race that never ends is a bug, said loudly after a bounded number of passes, never
  an endless loop;
* a batch raced by an outside writer is split in halves.

On a real SQLite file and a real PostgreSQL database: on PostgreSQL the other writer is a
real second connection that commits; SQLite serialises writers, so the stand-in is the
same change on the applier's own connection, undone by its rollback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.apply.applier import Applier
from service.domain.consumer import ConsumerState
from service.domain.events import ConsumerEvent
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind, Reason
from service.domain.rules import Write
from service.store.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory, UnitOfWork
from tests.apply.helpers import Action, Db, Interfering, migrated, new_id, upsert


def as_other_writer(db: Db, sql: str, params: dict[str, object]) -> Action:
    """``sql`` run by another writer (PostgreSQL) or on our own connection (SQLite)."""

    async def act(connection: AsyncConnection) -> None:
        if db.is_sqlite:
            await connection.execute(text(sql), params)
            return
        outsider = create_async_engine(db.url)
        try:
            async with outsider.begin() as other:
                await other.execute(text(sql), params)
        finally:
            await outsider.dispose()

    return act


def bump(db: Db, consumer: str) -> Action:
    return as_other_writer(
        db,
        "UPDATE consumers SET generation = generation + 1, last_event_id = :e WHERE uuid = :u",
        {"e": new_id(), "u": consumer},
    )


def record_applied(db: Db, event: ConsumerEvent) -> Action:
    """Another writer records ``event`` (same payload) as applied at generation 99."""
    return as_other_writer(
        db,
        "INSERT INTO processed_events (event_id, consumer_uuid, event_type, payload_hash,"
        " outcome, reason, generation_after, attempts, processed_at) VALUES"
        " (:e, :c, 'consumer.upsert', :h, 'applied', NULL, 99, 1, CURRENT_TIMESTAMP)"
        " ON CONFLICT DO NOTHING",
        {"e": event.event_id, "c": event.consumer_uuid, "h": event.payload_hash()},
    )


class _RacedInboxUnit:
    def __init__(self, unit: SqlUnitOfWork, before_inbox_write: Callable[[], Awaitable[None]]):
        self._unit = unit
        self._before = before_inbox_write
        self.connection = unit.connection

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        return await self._unit.load_inbox(event_ids)

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        return await self._unit.load_consumers(uuids)

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        await self._unit.write_consumers(writes, now)

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        await self._before()
        await self._unit.write_inbox(rows, now)


class InboxRacedUnits:
    """The real units of work of ``db``, where ``action`` (another writer) runs just before
    each of the first ``times`` inbox writes."""

    def __init__(self, db: Db, action: Action, times: int) -> None:
        self._units = SqlUnitOfWorkFactory(db.engine)
        self._action = action
        self.remaining = times

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[_RacedInboxUnit]:
        async with self._units.begin(read_only=read_only) as unit:
            sql_unit = unit
            assert isinstance(sql_unit, SqlUnitOfWork)

            async def before() -> None:
                if self.remaining > 0:
                    self.remaining -= 1
                    await self._action(sql_unit.connection)

            yield _RacedInboxUnit(sql_unit, before)


async def inbox_rows(db: Db, event: ConsumerEvent) -> list[tuple[object, ...]]:
    return await db.rows(
        "SELECT outcome, generation_after FROM processed_events WHERE event_id = :e",
        e=event.event_id,
    )


# --- inbox races ----------------------------------------------------------------------


async def test_an_inbox_race_is_decided_again_at_once_not_retried(db: Db) -> None:
    consumer = new_id()
    await db.applier.apply(upsert(consumer))
    event = upsert(consumer)
    applier = Interfering(db, record_applied(db, event), times=1)
    outcome = await applier.apply(event)
    assert outcome.attempts == 1 and applier.stats.cas_retries == 0
    if db.is_sqlite:  # the stand-in was rolled back with our first pass
        assert (outcome.kind, outcome.generation_after) == (OutcomeKind.APPLIED, 2)
    else:  # the other writer's row stands: ours is a duplicate of it
        assert (outcome.kind, outcome.original) == (OutcomeKind.DUPLICATE, OutcomeKind.APPLIED)
        assert outcome.generation_after == 99
        assert await db.generation(consumer) == (1, False)


async def test_a_race_that_never_ends_is_a_bug_said_after_bounded_passes(db: Db) -> None:
    consumer = new_id()
    await db.applier.apply(upsert(consumer))
    event = upsert(consumer, 1)  # conditional: every loss is decided again at once
    applier = Interfering(db, record_applied(db, event), times=1000)
    if db.is_sqlite:
        with pytest.raises(RuntimeError, match=r"^event did not settle after repeated races"):
            await applier.apply(event)
        assert applier.remaining == 1000 - 4  # four passes, then the bug is reported
    else:  # PostgreSQL: the other writer's row is there for good: a duplicate
        assert (await applier.apply(event)).kind is OutcomeKind.DUPLICATE


# --- recording FAILED -------------------------------------------------------------------


class AlwaysLosing(Applier):
    """Every compare-and-swap of ``consumer`` loses (bumped between read and write)."""

    def __init__(self, db: Db, units: InboxRacedUnits, consumer: str) -> None:
        super().__init__(units, db.settings)
        self._bump = bump(db, consumer)

    async def _between_read_and_write(self, unit: UnitOfWork) -> None:
        assert isinstance(unit, _RacedInboxUnit)
        await self._bump(unit.connection)


async def test_recording_failed_that_races_decides_again_from_a_fresh_read(
    database_url: str,
) -> None:
    async with migrated(database_url, cas_retry_attempts=2) as db:
        consumer = new_id()
        await db.applier.apply(upsert(consumer))
        event = upsert(consumer)
        # The CAS passes never reach their inbox write (the consumer write loses first):
        # the first inbox write is recording FAILED, and the other writer beats it.
        units = InboxRacedUnits(db, record_applied(db, event), times=1)
        applier = AlwaysLosing(db, units, consumer)
        outcome = await applier.apply(event)
        assert outcome.attempts == 2 and units.remaining == 0
        if db.is_sqlite:  # the stand-in was undone: the next pass records FAILED
            assert (outcome.kind, outcome.reason) == (
                OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED,
            )  # fmt: skip
            assert applier.stats.failed == 1
            assert await inbox_rows(db, event) == [("failed", 1)]
        else:  # it settled elsewhere meanwhile: a duplicate of that, not a failure
            assert (outcome.kind, outcome.original) == (
                OutcomeKind.DUPLICATE, OutcomeKind.APPLIED,
            )  # fmt: skip
            assert applier.stats.failed == 0
            assert await inbox_rows(db, event) == [("applied", 99)]


async def test_an_event_that_fails_again_replaces_its_failed_row(database_url: str) -> None:
    async with migrated(database_url, cas_retry_attempts=2) as db:
        consumer = new_id()
        await db.applier.apply(upsert(consumer))
        event = upsert(consumer)
        first = await AlwaysLosing(db, InboxRacedUnits(db, bump(db, consumer), 0), consumer).apply(
            event
        )
        assert (first.kind, first.attempts) == (OutcomeKind.FAILED, 2)
        units = InboxRacedUnits(db, bump(db, consumer), 0)
        again = AlwaysLosing(db, units, consumer)
        second = await again.apply(event)
        # The generation as recorded (the other writer's bumps stand on PostgreSQL).
        generation, _ = await db.generation(consumer) or (0, False)
        # The redelivery failed too: FAILED again (not a reused id), its row replaced.
        assert (second.kind, second.reason, second.generation_after) == (
            OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED, generation,
        )  # fmt: skip
        assert again.stats.failed == 1
        assert await inbox_rows(db, event) == [("failed", generation)]


async def test_recording_failed_that_races_for_ever_is_a_bug(sqlite_url: str) -> None:
    async with migrated(sqlite_url, cas_retry_attempts=1) as db:
        consumer = new_id()
        await db.applier.apply(upsert(consumer))
        event = upsert(consumer)
        units = InboxRacedUnits(db, record_applied(db, event), times=1000)
        applier = AlwaysLosing(db, units, consumer)
        with pytest.raises(RuntimeError, match=r"^failure could not be recorded after repeated"):
            await applier.apply(event)
        # One inbox write per pass: the CAS pass (which lost on the consumer before it)
        # made none, the four passes of recording FAILED made one each.
        assert units.remaining == 1000 - 4
        assert await inbox_rows(db, event) == []


# --- batches ---------------------------------------------------------------------------


async def test_a_raced_batch_is_split_in_halves(db: Db) -> None:
    a, b = new_id(), new_id()
    await db.applier.apply_batch([(upsert(a), None), (upsert(b), None)])
    applier = Interfering(db, bump(db, b), times=1)
    stream = [upsert(a), upsert(b), upsert(a), upsert(b)]
    outcomes = await applier.apply_batch([(e, None) for e in stream])
    assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED] * 4
    # The raced batch of four became two batches of two (not a single and a triple).
    assert (applier.stats.batch_fallbacks, applier.stats.batches) == (1, 2)
    assert applier.stats.events == 4


async def test_every_event_counts_once_one_by_one_and_in_batches(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c))
    batch = [upsert(c), upsert(c), upsert(c)]
    outcomes = await db.applier.apply_batch([(e, None) for e in batch])
    assert (db.applier.stats.events, db.applier.stats.batches) == (4, 1)
    # A batch is one attempt for each of its events, in the outcome and in the inbox.
    assert [o.attempts for o in outcomes] == [1, 1, 1]
    for e in batch:
        rows = await db.rows(
            "SELECT attempts FROM processed_events WHERE event_id = :e", e=e.event_id
        )
        assert rows == [(1,)]
    assert await db.applier.apply_batch([]) == []
    assert db.applier.stats.events == 4
