"""The Applier on real databases (a SQLite file and PostgreSQL, every test on both)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.apply.applier import Applier
from service.apply.dryrun import DryRun
from service.config import Settings
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.domain.rules import InvalidEventError
from service.store import get_consumer, recent_events
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError
from service.store.unit_of_work import SqlUnitOfWorkFactory, UnitOfWork
from tests.apply.helpers import Action, Db, Interfering, delete, event, migrated, new_id, upsert


def shape(o: Outcome) -> tuple[object, ...]:
    return (o.kind, o.reason, o.generation_after, o.original)


def outside_bump(db: Db, consumer: str) -> Action:
    """Another writer changes ``consumer`` (generation + 1) between our read and write.

    On PostgreSQL it is a real second connection that commits.  SQLite serialises
    writers at BEGIN IMMEDIATE, so no one else can write at that moment; the closest
    stand-in is the same change made on our own connection, which our rollback undoes.
    """

    sql = text(
        "UPDATE consumers SET generation = generation + 1, last_event_id = :e WHERE uuid = :u"
    )

    async def act(connection: AsyncConnection) -> None:
        params = {"e": new_id(), "u": consumer}
        if db.is_sqlite:
            await connection.execute(sql, params)
            return
        outsider = create_async_engine(db.url)
        try:
            async with outsider.begin() as other:
                await other.execute(sql, params)
        finally:
            await outsider.dispose()

    return act


# --- rules on the database ---------------------------------------------------------


async def test_create_update_delete_recreate_and_the_inbox(db: Db) -> None:
    c = new_id()
    source = EventSource("consumer-events", 3, 41)
    created = await db.applier.apply(upsert(c, None, project_id="p", user_id="u"), source)
    assert shape(created) == (OutcomeKind.APPLIED, None, 1, None) and created.attempts == 1
    assert shape(await db.applier.apply(upsert(c, 1, consumer_type="INSTANCE"))) == (
        OutcomeKind.APPLIED, None, 2, None,
    )  # fmt: skip
    assert shape(await db.applier.apply(delete(c, 2))) == (OutcomeKind.APPLIED, None, 3, None)
    assert await db.generation(c) == (3, True)
    record = await get_consumer(db.engine, c)
    assert record is not None and record.deleted and record.deleted_at is not None
    assert (record.project_id, record.user_id, record.consumer_type) == ("p", "u", "INSTANCE")
    recreated = await db.applier.apply(upsert(c, None))
    assert shape(recreated) == (OutcomeKind.APPLIED, None, 4, None)
    assert await db.generation(c) == (4, False)
    rows = await db.rows(
        "SELECT outcome, generation_after, source_topic, source_partition, source_offset,"
        " attempts, event_type FROM processed_events WHERE event_id = :e",
        e=created.event_id,
    )
    assert rows == [("applied", 1, "consumer-events", 3, 41, 1, "consumer.upsert")]
    history = await recent_events(db.engine, c, 10)
    assert len(history) == 4 and {h.outcome for h in history} == {OutcomeKind.APPLIED}
    assert history[0].processed_at.tzinfo is not None


async def test_each_rejection_reason_is_recorded_and_changes_nothing(db: Db) -> None:
    c, missing = new_id(), new_id()
    await db.applier.apply(upsert(c, None))
    cases = [
        (upsert(c, None), Reason.CONSUMER_EXISTS, 1),
        (upsert(c, 0), Reason.GENERATION_CONFLICT, 1),
        (delete(c, 7), Reason.GENERATION_CONFLICT, 1),
        (delete(c, None), Reason.CONSUMER_EXISTS, 1),
        (upsert(missing, 1), Reason.CONSUMER_NOT_FOUND, None),
        (delete(missing), Reason.CONSUMER_NOT_FOUND, None),
    ]
    for ev, reason, generation in cases:
        result = await db.applier.apply(ev)
        assert shape(result) == (OutcomeKind.REJECTED, reason, generation, None), ev
        rows = await db.rows(
            "SELECT outcome, reason FROM processed_events WHERE event_id = :e", e=ev.event_id
        )
        assert rows == [("rejected", reason.value)]
    assert await db.generation(c) == (1, False)
    assert await db.generation(missing) is None


async def test_delete_of_a_tombstone_is_consumer_not_found(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c))
    await db.applier.apply(delete(c))
    for ev in (delete(c), delete(c, 2), upsert(c, 2)):
        assert shape(await db.applier.apply(ev)) == (
            OutcomeKind.REJECTED, Reason.CONSUMER_NOT_FOUND, 2, None,
        )  # fmt: skip
    assert await db.generation(c) == (2, True)


async def test_duplicates_re_report_the_original_and_write_nothing(db: Db) -> None:
    c = new_id()
    first = upsert(c, None)
    loser = upsert(c, None)
    await db.applier.apply(first)
    await db.applier.apply(upsert(c))
    await db.applier.apply(loser)
    before = await db.count("processed_events")
    again = await db.applier.apply(first)
    assert shape(again) == (OutcomeKind.DUPLICATE, None, 1, OutcomeKind.APPLIED)
    assert shape(await db.applier.apply(loser)) == (
        OutcomeKind.DUPLICATE, Reason.CONSUMER_EXISTS, 2, OutcomeKind.REJECTED,
    )  # fmt: skip
    assert await db.count("processed_events") == before
    assert await db.generation(c) == (2, False)


async def test_a_reused_event_id_is_rejected_and_never_overwrites(db: Db) -> None:
    c = new_id()
    original = upsert(c, project_id="p1")
    await db.applier.apply(original)
    reuse = event(c, event_id=original.event_id, project_id="p2")
    assert shape(await db.applier.apply(reuse)) == (
        OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, 1, None,
    )  # fmt: skip
    in_batch = await db.applier.apply_batch([(reuse, None), (upsert(c), None)])
    assert [shape(o) for o in in_batch] == [
        (OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, 1, None),
        (OutcomeKind.APPLIED, None, 2, None),
    ]
    rows = await db.rows(
        "SELECT outcome, payload_hash FROM processed_events WHERE event_id = :e",
        e=original.event_id,
    )
    assert rows == [("applied", original.payload_hash())]
    record = await get_consumer(db.engine, c)
    assert record is not None and record.project_id == "p1"


async def test_aba_a_stale_generation_from_an_earlier_life_never_matches(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c, None))  # life 1: generation 1
    await db.applier.apply(delete(c, 1))  # tombstone at 2
    await db.applier.apply(upsert(c, None))  # life 2 continues: 3
    # A producer that last saw the first life at generation 1 (Placement would have
    # restarted at 0/1 and let this through).
    stale = await db.applier.apply(upsert(c, 1, project_id="stale"))
    assert (stale.kind, stale.reason, stale.generation_after) == (
        OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 3,
    )  # fmt: skip
    assert shape(await db.applier.apply(upsert(c, 3))) == (OutcomeKind.APPLIED, None, 4, None)


async def test_incomplete_consumer_gets_placeholders_then_is_completed(database_url: str) -> None:
    async with migrated(database_url, incomplete_project_id="INCOMPLETE-P") as db:
        c = new_id()
        await db.applier.apply(upsert(c, None))
        record = await get_consumer(db.engine, c)
        assert record is not None
        assert (record.project_id, record.user_id) == (
            "INCOMPLETE-P", "00000000-0000-0000-0000-000000000000",
        )  # fmt: skip
        await db.applier.apply(upsert(c, consumer_type="MIGRATION"))  # owners kept
        await db.applier.apply(upsert(c, 2, project_id="real-p", user_id="real-u"))
        record = await get_consumer(db.engine, c)
        assert record is not None
        assert (record.project_id, record.user_id, record.consumer_type, record.generation) == (
            "real-p", "real-u", "MIGRATION", 3,
        )  # fmt: skip


# --- races ----------------------------------------------------------------------------


async def test_placement_race_two_null_creators_exactly_one_wins(db: Db) -> None:
    """Both creators read "absent" before either writes (forced on PostgreSQL with a
    barrier; on SQLite BEGIN IMMEDIATE serialises them): one is applied, the other is
    consumer_exists, and the winner's owners are never overwritten."""

    class Racer(Applier):
        def __init__(self, settings: Settings, barrier: asyncio.Barrier | None) -> None:
            self.engine = create_engine(settings)
            super().__init__(SqlUnitOfWorkFactory(self.engine), settings)
            self.barrier = barrier

        async def _between_read_and_write(self, unit: UnitOfWork) -> None:
            if self.barrier is not None:
                barrier, self.barrier = self.barrier, None
                await asyncio.wait_for(barrier.wait(), 10)

    for _ in range(3):
        c = new_id()
        barrier = None if db.is_sqlite else asyncio.Barrier(2)
        racers = [Racer(db.settings, barrier) for _ in range(2)]
        try:
            results = await asyncio.gather(
                racers[0].apply(upsert(c, None, project_id="first")),
                racers[1].apply(upsert(c, None, project_id="second")),
            )
        finally:
            for racer in racers:
                await racer.engine.dispose()
        assert sorted((r.kind, r.reason) for r in results) == [
            (OutcomeKind.APPLIED, None),
            (OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS),
        ]
        winner = next(r for r in results if r.kind is OutcomeKind.APPLIED)
        record = await get_consumer(db.engine, c)
        assert record is not None and record.generation == 1
        assert record.last_event_id == winner.event_id


async def test_unconditional_event_losing_a_cas_is_retried(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c))
    applier = Interfering(db, outside_bump(db, c), times=1)
    result = await applier.apply(upsert(c))
    assert (result.kind, result.attempts) == (OutcomeKind.APPLIED, 2)
    # PostgreSQL: the outsider's change stands (1 -> 2) and ours follows; SQLite: the
    # stand-in change was rolled back with our first attempt.
    assert result.generation_after == (2 if db.is_sqlite else 3)
    assert applier.stats.cas_retries == 1
    rows = await db.rows(
        "SELECT attempts FROM processed_events WHERE event_id = :e", e=result.event_id
    )
    assert rows == [(2,)]


async def test_conditional_event_losing_a_cas_is_decided_again_not_retried(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c))
    applier = Interfering(db, outside_bump(db, c), times=1)
    result = await applier.apply(upsert(c, 1))
    assert result.attempts == 1 and applier.stats.cas_retries == 0
    if db.is_sqlite:  # the stand-in change was undone: generation 1 still holds
        assert shape(result) == (OutcomeKind.APPLIED, None, 2, None)
    else:  # the outsider moved it to 2: the precondition is stale for good
        assert shape(result) == (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 2, None)


async def test_exhausted_retries_record_failed_which_a_redelivery_replaces(
    database_url: str,
) -> None:
    async with migrated(database_url, cas_retry_attempts=3) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        applier = Interfering(db, outside_bump(db, c), times=10**6)
        ev = upsert(c, project_id="late")
        source = EventSource("t", 0, 7)
        failed = await applier.apply(ev, source)
        assert (failed.kind, failed.reason, failed.attempts) == (
            OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED, 3,
        )  # fmt: skip
        assert applier.stats.failed == 1 and applier.stats.cas_retries == 2
        rows = await db.rows(
            "SELECT outcome, reason, attempts FROM processed_events WHERE event_id = :e",
            e=ev.event_id,
        )
        assert rows == [("failed", "cas_retries_exhausted", 3)]
        generation, _ = await db.generation(c) or (0, False)
        # Redelivered in a batch, without interference: applied, the FAILED row replaced.
        outcomes = await db.applier.apply_batch([(ev, EventSource("t", 0, 8)), (upsert(c), None)])
        assert [shape(o) for o in outcomes] == [
            (OutcomeKind.APPLIED, None, generation + 1, None),
            (OutcomeKind.APPLIED, None, generation + 2, None),
        ]
        rows = await db.rows(
            "SELECT outcome, reason, source_offset FROM processed_events WHERE event_id = :e",
            e=ev.event_id,
        )
        assert rows == [("applied", None, 8)]
        assert (await db.applier.apply(ev)).kind is OutcomeKind.DUPLICATE


async def test_cas_retries_stop_at_the_time_bound_with_attempts_to_spare(
    database_url: str,
) -> None:
    """DESIGN.md: an unconditional event's CAS retries are "bounded in attempts and
    time".  Another writer changes the consumer before every write (a real second
    connection on PostgreSQL); with an attempt budget no run could use up, the time
    bound alone ends the retries and the event is recorded ``failed``."""
    bound = 0.5
    async with migrated(
        database_url, cas_retry_attempts=10**6, cas_retry_timeout_seconds=bound
    ) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        applier = Interfering(db, outside_bump(db, c), times=10**9)
        ev = upsert(c)
        began = time.monotonic()
        failed = await asyncio.wait_for(applier.apply(ev), 60)
        took = time.monotonic() - began
        assert (failed.kind, failed.reason) == (OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED)
        assert bound <= took < bound + 10, took
        assert 2 < failed.attempts < 10**6, failed.attempts
        rows = await db.rows(
            "SELECT outcome, attempts FROM processed_events WHERE event_id = :e", e=ev.event_id
        )
        assert rows == [("failed", failed.attempts)]


# --- batches --------------------------------------------------------------------------


async def test_batch_outcomes_equal_one_by_one(database_url: str) -> None:
    """Two events of one consumer, a duplicate inside the batch and a conflict in the
    middle: the batch gives exactly what one-at-a-time processing gives."""
    a, b = new_id(), new_id()
    create_a = upsert(a, None, project_id="pa")
    stream = [
        create_a,
        upsert(b, None),
        upsert(a, 1, user_id="ua"),
        create_a,  # duplicate inside the batch
        upsert(b, 5),  # conflict in the middle
        delete(a, 2),
        upsert(a, None, consumer_type="AGAIN"),
        delete(b),
        upsert(b, 2),
        event(a, event_id=create_a.event_id, project_id="x"),  # reused id
    ]
    results = []
    async with migrated(database_url) as db:
        for batched in (False, True):
            await db.truncate()
            if batched:
                outcomes = await db.applier.apply_batch([(e, None) for e in stream])
                assert db.applier.stats.batches == 1
            else:
                outcomes = [await db.applier.apply(e) for e in stream]
            state = await db.rows(
                "SELECT uuid, generation, deleted_at IS NOT NULL FROM consumers ORDER BY uuid"
            )
            inbox = await db.rows(
                "SELECT event_id, outcome, reason, generation_after FROM processed_events"
                " ORDER BY event_id"
            )
            results.append(([shape(o) for o in outcomes], state, inbox))
    for left, right in zip(results[0], results[1], strict=True):
        assert left == right
    assert [k for k, *_ in results[0][0]] == [
        OutcomeKind.APPLIED, OutcomeKind.APPLIED, OutcomeKind.APPLIED, OutcomeKind.DUPLICATE,
        OutcomeKind.REJECTED, OutcomeKind.APPLIED, OutcomeKind.APPLIED, OutcomeKind.APPLIED,
        OutcomeKind.REJECTED, OutcomeKind.REJECTED,
    ]  # fmt: skip


async def test_batch_raced_by_an_outside_writer_splits_and_commits_consistently(db: Db) -> None:
    a, b = new_id(), new_id()
    await db.applier.apply_batch([(upsert(a), None), (upsert(b), None)])
    applier = Interfering(db, outside_bump(db, b), times=1)
    stream = [upsert(a), upsert(b), upsert(a, 2), upsert(b)]
    outcomes = await applier.apply_batch([(e, None) for e in stream])
    assert applier.stats.batch_fallbacks == 1
    assert all(o.kind is OutcomeKind.APPLIED for o in outcomes)
    bump = 0 if db.is_sqlite else 1  # the outsider's change stands on PostgreSQL only
    assert [o.generation_after for o in outcomes] == [2, 2 + bump, 3, 3 + bump]
    assert await db.generation(a) == (3, False)
    assert await db.generation(b) == (3 + bump, False)
    assert await db.count("processed_events") == 2 + 4


async def test_dry_run_predicts_and_writes_nothing(db: Db) -> None:
    c = new_id()
    await db.applier.apply(upsert(c, None))
    stream = [(upsert(c, 1), None), (upsert(c, 1), None), (delete(c), None)]
    predicted = await DryRun(SqlUnitOfWorkFactory(db.engine), db.settings).apply_batch(stream)
    assert await db.count("processed_events") == 1 and await db.generation(c) == (1, False)
    assert [shape(o) for o in predicted] == [shape(o) for o in await db.applier.apply_batch(stream)]


# --- hostile values -------------------------------------------------------------------

HOSTILE = [
    "Robert'); DROP TABLE consumers;--",
    "' OR '1'='1",
    '"double" \\backslash\\ `tick`',
    "%s %(name)s :param $1 ?",
    "ünïcödé ✓ 👍 \u202e",
    "x" * 255,
]


async def test_hostile_values_are_stored_verbatim(db: Db) -> None:
    for value in HOSTILE:
        c = new_id()
        result = await db.applier.apply(upsert(c, None, project_id=value, user_id=value[::-1]))
        assert result.kind is OutcomeKind.APPLIED
        record = await get_consumer(db.engine, c)
        assert record is not None and (record.project_id, record.user_id) == (value, value[::-1])
    batch = [(upsert(new_id(), project_id=v), None) for v in HOSTILE]
    assert all(o.kind is OutcomeKind.APPLIED for o in await db.applier.apply_batch(batch))
    assert await db.count("consumers") == 2 * len(HOSTILE)


@pytest.mark.parametrize(
    "fields",
    [{"project_id": "nul\x00byte"}, {"user_id": "y" * 256}, {"consumer_type": "not-valid"}],
    ids=["nul", "256-chars", "bad-type"],
)
async def test_values_the_database_cannot_hold_are_rejected_before_any_write(
    db: Db, fields: dict[str, str]
) -> None:
    with pytest.raises(InvalidEventError):
        await db.applier.apply(upsert(new_id(), **fields))
    with pytest.raises(InvalidEventError):
        await db.applier.apply_batch([(upsert(new_id()), None), (upsert(new_id(), **fields), None)])
    with pytest.raises(InvalidEventError, match="canonical"):
        await db.applier.apply(upsert(new_id().upper()))
    assert await db.count("processed_events") == 0 and await db.count("consumers") == 0


# --- infrastructure failures ----------------------------------------------------------


async def test_connection_lost_or_database_locked_is_transient_and_records_nothing(
    database_url: str,
) -> None:
    async with migrated(database_url, sqlite_busy_timeout_ms=100) as db:
        c = new_id()
        if db.is_sqlite:
            path = db.url.split(":///", 1)[1]
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                with pytest.raises(TransientDatabaseError, match="locked"):
                    await db.applier.apply(upsert(c))
                with pytest.raises(TransientDatabaseError):
                    await db.applier.apply_batch([(upsert(c), None), (upsert(c), None)])
            finally:
                locker.execute("ROLLBACK")
                locker.close()
        else:

            async def terminate(connection: AsyncConnection) -> None:
                pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                killer = create_async_engine(db.url)
                try:
                    async with killer.connect() as other:
                        await other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                finally:
                    await killer.dispose()

            for run in (
                lambda a: a.apply(upsert(c)),
                lambda a: a.apply_batch([(upsert(c), None), (upsert(c), None)]),
            ):
                with pytest.raises(TransientDatabaseError):
                    await run(Interfering(db, terminate, times=1))
        assert await db.count("processed_events") == 0 and await db.count("consumers") == 0
        # The same engine recovers once the database is back.
        assert (await db.applier.apply(upsert(c))).kind is OutcomeKind.APPLIED


async def test_unreachable_postgresql_is_transient(postgres_server_url: str) -> None:
    unreachable = postgres_server_url.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere"
    from tests.apply.helpers import settings_for

    settings = settings_for(unreachable)
    engine = create_engine(settings)
    try:
        with pytest.raises(TransientDatabaseError):
            await Applier(SqlUnitOfWorkFactory(engine), settings).apply(upsert(new_id()))
    finally:
        await engine.dispose()


async def test_an_event_id_reused_with_other_nanoseconds_is_rejected(db: Db) -> None:
    """Two events with one id that differ only below the microsecond are two contents."""
    c = new_id()
    original = upsert(c)
    other_nanos = dataclasses.replace(original, occurred_at_nanos=1)
    assert original.occurred_at == other_nanos.occurred_at
    assert shape(await db.applier.apply(original))[0] is OutcomeKind.APPLIED
    assert shape(await db.applier.apply(other_nanos)) == (
        OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, 1, None,
    )  # fmt: skip
    again = dataclasses.replace(original)
    assert shape(await db.applier.apply(again))[0] is OutcomeKind.DUPLICATE
