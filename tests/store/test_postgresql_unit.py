"""PostgreSQL's unit of work (``service.store.postgresql_unit``): asyncpg straight on the
pool's connection, inside SQLAlchemy's transaction.

The store and apply suites run through it on PostgreSQL already (``SqlUnitOfWorkFactory``
hands it out there).  What these tests add, on a real server: every statement kind is
one text whatever the batch size, prepared once per connection and sent once per
transaction (never once per batch size or per row); its statements are inside the
factory's transaction; a compare-and-swap that waited for a concurrent commit is a
missing row (``StoreRace``), never an overwrite; a server stopped in the middle of a
batch is an infrastructure failure, recognised positively both as asyncpg raises it
(outside SQLAlchemy's wrapping) and as the factory hands it on, with nothing committed.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from service.apply.applier import Applier
from service.domain.consumer import ConsumerState
from service.domain.events import EventType
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.domain.rules import Write, WriteKind
from service.embedded.postgres import PostgresCluster
from service.failures import FailureClass, classify, infrastructure_kind
from service.store import reads
from service.store.dialects.postgresql import CAS_UPDATE, insert_statement
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError
from service.store.migrate import upgrade
from service.store.postgresql_unit import (
    DECIDING_SELECT,
    INBOX_SELECT,
    REPLACE_FAILED_UPDATE,
    PostgresUnitOfWork,
    owner_select,
)
from service.store.schema import consumer_types, consumers, processed_events, projects, users
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.store.writes import CONSUMER_COLUMNS, INBOX_COLUMNS, RaceKind, StoreRace
from service.testing.polling import poll
from tests.apply.helpers import Db, delete, migrated, new_id, settings_for, upsert

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OWNERS = ((projects, "external_id"), (users, "external_id"), (consumer_types, "name"))
#: A statement of the apply path names one of the schema's tables.
OURS = re.compile(r"\b(processed_events|consumers|consumer_types|projects|users)\b")


def apply_path_texts() -> set[str]:
    """Every statement text the unit of work may send: one per kind."""
    return {
        INBOX_SELECT,
        DECIDING_SELECT,
        CAS_UPDATE,
        REPLACE_FAILED_UPDATE,
        insert_statement(consumers, "uuid", CONSUMER_COLUMNS),
        insert_statement(processed_events, "event_id", INBOX_COLUMNS),
        *(owner_select(table, column) for table, column in OWNERS),
        *(insert_statement(table, column, (column, "created_at")) for table, column in OWNERS),
    }


def failed_row(event_id: str, **fields: Any) -> ProcessedEvent:
    values: dict[str, Any] = {
        "event_id": event_id,
        "consumer_uuid": new_id(),
        "payload_hash": "h1",
        "outcome": OutcomeKind.FAILED,
        "reason": Reason.CAS_RETRIES_EXHAUSTED,
        "generation_after": None,
        "event_type": EventType.UPSERT,
        "attempts": 10,
    }
    values.update(fields)
    return ProcessedEvent(**values)


async def prepared(unit: PostgresUnitOfWork) -> set[tuple[str, str]]:
    """(name, text) of the apply path's statements prepared on the unit's connection."""
    driver = await unit.driver()
    rows = await driver.fetch("SELECT name, statement FROM pg_prepared_statements")
    return {(name, text) for name, text in rows if OURS.search(text)}


async def test_each_statement_kind_is_one_text_whatever_the_batch_size(postgres_url: str) -> None:
    """Batches of 1, 2 and 50 events (new consumers with new owners, then updates and
    deletes of them, then FAILED inbox rows replaced): the statements prepared on the
    connection after the first size are all there will be (same names, same texts),
    they are the module's texts, and a batch of 50 sends each kind once."""
    async with migrated(postgres_url):
        settings = settings_for(postgres_url, database_pool_size=1)  # one connection
        engine = create_engine(settings)
        units = SqlUnitOfWorkFactory(engine)
        applier = Applier(units, settings)
        sent: list[str] = []
        seen: list[set[tuple[str, str]]] = []
        try:
            async with units.begin() as unit:
                assert isinstance(unit, PostgresUnitOfWork)
                (await unit.driver()).add_query_logger(lambda record: sent.append(record.query))
            for size in (1, 2, 50):
                uuids = [new_id() for _ in range(size)]
                created = [
                    upsert(u, project_id=f"p{size}-{i}", user_id=f"u{size}-{i}", consumer_type="T")
                    for i, u in enumerate(uuids)
                ]
                sent.clear()
                await applier.apply_batch([(event, None) for event in created])
                changed = [
                    delete(u) if i % 2 else upsert(u, project_id="moved", user_id="u1-0")
                    for i, u in enumerate(uuids)
                ]
                await applier.apply_batch([(event, None) for event in changed])
                # The query logger's calls were scheduled (call_soon) as each statement
                # ended; one pass of the loop runs them, in order, before this resumes.
                await asyncio.sleep(0)
                if size == 50:  # each kind once per transaction (create, change)
                    project, user = (owner_select(t, c) for t, c in OWNERS[:2])
                    new_project, new_user = (
                        insert_statement(t, c, (c, "created_at")) for t, c in OWNERS[:2]
                    )
                    assert Counter(text for text in sent if OURS.search(text)) == {
                        INBOX_SELECT: 2,
                        DECIDING_SELECT: 2,
                        insert_statement(consumers, "uuid", CONSUMER_COLUMNS): 1,
                        CAS_UPDATE: 1,
                        insert_statement(processed_events, "event_id", INBOX_COLUMNS): 2,
                        # Owner ids: the new ones read, inserted, read again; the
                        # change's tombstones name owners created in this transaction
                        # (not cached: it might have rolled back), read once.  The
                        # type's and the changed owners' ids are cached by now.
                        project: 3,
                        new_project: 1,
                        user: 3,
                        new_user: 1,
                    }
                ids = [new_id() for _ in range(size)]
                async with units.begin() as unit:
                    rows = [(InboxWrite.INSERT, failed_row(e)) for e in ids]
                    await unit.write_inbox(rows, NOW)
                settled = [
                    failed_row(e, outcome=OutcomeKind.APPLIED, reason=None, generation_after=1)
                    for e in ids
                ]
                async with units.begin() as unit:
                    assert isinstance(unit, PostgresUnitOfWork)
                    await unit.write_inbox([(InboxWrite.REPLACE_FAILED, r) for r in settled], NOW)
                    seen.append(await prepared(unit))
        finally:
            await engine.dispose()
    assert seen[0] == seen[1] == seen[2], "a batch size prepared statements of its own"
    assert {text for _, text in seen[0]} == apply_path_texts()


async def test_the_statements_are_inside_the_factorys_transaction(postgres_url: str) -> None:
    """The unit's first statements go straight to asyncpg: they must still be inside the
    transaction SQLAlchemy began (visible to its own statements, undone by its rollback)."""
    async with migrated(postgres_url) as db:
        units = SqlUnitOfWorkFactory(db.engine)
        uuid, event_id = new_id(), new_id()
        state = ConsumerState(uuid, 1, False, "p", "u", None, event_id)
        with pytest.raises(KeyError):
            async with units.begin() as unit:
                assert isinstance(unit, PostgresUnitOfWork)
                await unit.write_consumers([Write(WriteKind.INSERT, None, state)], NOW)
                applied = failed_row(event_id, outcome=OutcomeKind.APPLIED, reason=None)
                await unit.write_inbox([(InboxWrite.INSERT, applied)], NOW)
                assert unit.connection.in_transaction()
                assert await unit.load_consumers([uuid]) == {uuid: state}
                raise KeyError("an invariant of ours")
        for table in ("consumers", "processed_events", "projects", "users"):
            assert await db.count(table) == 0, table


async def test_a_cas_that_waited_for_a_concurrent_commit_misses_instead_of_overwriting(
    postgres_url: str,
) -> None:
    """Two transactions read generation 1; the first writes generation 2 and holds its
    row lock; the second's compare-and-swap waits for it.  When the first commits, READ
    COMMITTED re-checks the second's WHERE on the new row: no match, ``StoreRace``, and
    the row is the first one's."""
    async with migrated(postgres_url) as db:
        uuid = new_id()
        await db.applier.apply(upsert(uuid, project_id="p", user_id="u"))
        units = SqlUnitOfWorkFactory(db.engine)
        wrote, release = asyncio.Event(), asyncio.Event()
        winner_event, loser_event = new_id(), new_id()

        async def change(event_id: str, project: str, hold: bool) -> None:
            if not hold:
                await wrote.wait()  # the winner's write is done, not committed
            async with units.begin() as unit:
                read = (await unit.load_consumers([uuid]))[uuid]
                assert read.generation == 1
                after = replace(read, generation=2, last_event_id=event_id, project_id=project)
                await unit.write_consumers([Write(WriteKind.UPDATE, read, after)], NOW)
                if hold:
                    wrote.set()
                    await release.wait()

        winner = asyncio.create_task(change(winner_event, "winner", hold=True))
        loser = asyncio.create_task(change(loser_event, "loser", hold=False))
        try:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )

            async def loser_waits() -> bool:
                return bool((await db.rows(waiting))[0][0] == 1)

            await poll(loser_waits, 30, "the second compare-and-swap waits for the row lock")
            release.set()
            await asyncio.wait_for(winner, 30)
            with pytest.raises(StoreRace) as caught:
                await asyncio.wait_for(loser, 30)
        finally:
            release.set()
            for task in (winner, loser):
                if not task.done():
                    task.cancel()
        assert caught.value.kind is RaceKind.CONSUMER
        row = await db.rows(
            "SELECT c.generation, c.last_event_id, p.external_id FROM consumers c"
            " JOIN projects p ON p.id = c.project_id WHERE c.uuid = :u",
            u=uuid,
        )
        assert row == [(2, winner_event, "winner")]


async def test_a_server_stopped_mid_batch_is_the_infrastructures() -> None:
    """The reads of a batch done, the server stops (fast shutdown), the writes fail: the
    error asyncpg raises is the infrastructure's by what it is, the factory hands on
    ``TransientDatabaseError``, nothing is committed, and once the server is back the
    same factory works again (SQLAlchemy's pool replaced the broken connection)."""
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-pg-stop-")))
    cluster.start()
    try:
        settings = settings_for(cluster.url())
        await upgrade(settings)
        engine = create_engine(settings)
        units = SqlUnitOfWorkFactory(engine)
        uuid, event_id = new_id(), new_id()
        state = ConsumerState(uuid, 1, False, "p", "u", None, event_id)
        raised: list[BaseException] = []
        try:
            with pytest.raises(TransientDatabaseError) as caught:
                async with units.begin() as unit:
                    assert await unit.load_inbox([event_id]) == {}
                    assert await unit.load_consumers([uuid]) == {}
                    await asyncio.to_thread(cluster.stop)
                    try:
                        await unit.write_consumers([Write(WriteKind.INSERT, None, state)], NOW)
                    except Exception as error:
                        raised.append(error)
                        raise
            (error,) = raised
            # SQLAlchemy's own execution would raise the same: the driver's error
            # translated and wrapped (test_bug_stops.py pins a bug's class that way).
            assert isinstance(error, sa_exc.DBAPIError), repr(error)
            assert type(error.__cause__).__module__.startswith("asyncpg"), repr(error)
            assert classify(error) is FailureClass.INFRASTRUCTURE, repr(error)
            assert infrastructure_kind(error) == "database"
            assert classify(caught.value) is FailureClass.INFRASTRUCTURE
            await asyncio.to_thread(cluster.start)
            async with units.begin() as unit:
                assert await unit.load_consumers([uuid]) == {}
                await unit.write_consumers([Write(WriteKind.INSERT, None, state)], NOW)
            async with units.begin(read_only=True) as unit:
                assert await unit.load_consumers([uuid]) == {uuid: state}
        finally:
            await engine.dispose()
    finally:
        cluster.remove()


async def test_reads_match_the_sqlalchemy_reads(postgres_url: str) -> None:
    """What the unit reads is what ``store.reads`` (SQLAlchemy) reads, field by field:
    tombstones, a missing type, inbox reasons."""
    async with migrated(postgres_url) as db:
        await _compare_reads(db)


async def _compare_reads(db: Db) -> None:
    live, gone = new_id(), new_id()
    await db.applier.apply(upsert(live, project_id="p", user_id="u", consumer_type="T"))
    await db.applier.apply(upsert(gone, project_id="q", user_id="v"))
    await db.applier.apply(delete(gone))
    units = SqlUnitOfWorkFactory(db.engine)
    ids = [new_id(), new_id()]
    async with units.begin() as unit:
        await unit.write_inbox(
            [
                (InboxWrite.INSERT, failed_row(ids[0])),
                (InboxWrite.INSERT, failed_row(ids[1], source=EventSource("t", 3, 7))),
            ],
            NOW,
        )
    async with units.begin(read_only=True) as unit:
        assert isinstance(unit, PostgresUnitOfWork)
        ours = await unit.load_consumers([live, gone, new_id()])
        inbox = await unit.load_inbox([*ids, new_id()])
        assert ours == await reads.load_consumers(unit.connection, [live, gone])
        assert inbox == await reads.load_inbox(unit.connection, ids)
    assert ours[gone].deleted and not ours[live].deleted
    assert ours[live].consumer_type == "T" and ours[gone].consumer_type is None
    assert inbox[ids[0]].reason is Reason.CAS_RETRIES_EXHAUSTED


async def test_hostile_strings_travel_as_data(postgres_url: str) -> None:
    """The rows travel as one JSON document: quotes, backslashes, JSON's own syntax,
    control characters and any Unicode come back exactly as written, through the
    SQLAlchemy reads too."""
    hostile = "p'\"\\\n\t{}[],:null \u2028 é 💥 ' OR 1=1; --"
    async with migrated(postgres_url) as db:
        uuid = new_id()
        outcome = await db.applier.apply(upsert(uuid, project_id=hostile, user_id=hostile[::-1]))
        assert outcome.kind is OutcomeKind.APPLIED
        state = await reads.get_consumer(db.engine, uuid)
        assert state is not None
        assert (state.project_id, state.user_id) == (hostile, hostile[::-1])
        assert state.updated_at is not None
        assert abs(state.updated_at - datetime.now(UTC)) < timedelta(minutes=5)  # no shift


@pytest.mark.parametrize("cancelled", ["in flight", "answered"])
async def test_a_unit_cancelled_at_any_round_trip_leaves_the_next_commit_durable(
    postgres_url: str, cancelled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's task is cancelled (its partition revoked, the daemon stopping) at each
    of its round trips in turn (BEGIN, the reads, the writes, COMMIT), while the server
    works on it or just after it answered.  A batch cancelled before its COMMIT commits
    nothing, and the pool's one connection carries the next transaction as a real one,
    committed for every other connection to see.  Cancelled with the answer to its
    BEGIN in hand, an unguarded straight call left asyncpg's started transaction on the
    pooled connection while SQLAlchemy's adapter never recorded it: every later commit
    on it only released a savepoint, and nobody else ever saw those rows
    (``store.asyncpg_driver``)."""
    async with migrated(postgres_url, database_pool_size=1) as db:
        units = SqlUnitOfWorkFactory(db.engine)
        other = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
        batch_task: asyncio.Task[None] | None = None
        calls, stop_at, reached = 0, 0, asyncio.Event()
        stopped: list[str] = []  # the query of the round trip the batch is cancelled at

        def counted(real: Any) -> Any:
            async def call(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                if asyncio.current_task() is not batch_task:
                    return await real(self, query, *args, **kwargs)
                calls += 1
                here = calls == stop_at
                if here:
                    stopped.append(query)
                if here and cancelled == "in flight":
                    # The task cancels itself: the cancellation lands at the first wait
                    # inside this round trip, while the server works on it.  (Cancelled
                    # from the test's task, it could land a round trip later: the answer
                    # may come, and the batch send its COMMIT, before that task runs.)
                    reached.set()
                    current = asyncio.current_task()
                    assert current is not None
                    current.cancel()
                result = await real(self, query, *args, **kwargs)
                if here and cancelled == "answered":
                    reached.set()
                    await asyncio.Event().wait()  # cancelled here, the answer in hand
                return result

            return call

        monkeypatch.setattr(asyncpg.Connection, "execute", counted(asyncpg.Connection.execute))
        monkeypatch.setattr(asyncpg.Connection, "fetch", counted(asyncpg.Connection.fetch))
        # (round trip cancelled at, was it the COMMIT, rows of the batch seen, next
        # transaction seen).  Which round trip is the COMMIT is read from the query: a
        # batch on a connection the pool just opened makes more round trips than one on
        # a connection it reuses, so a position alone does not say it.
        ends: list[tuple[int, bool, int, bool]] = []
        try:
            while True:
                stop_at += 1
                calls = 0
                reached.clear()
                stopped.clear()
                rows = [failed_row(new_id()), failed_row(new_id())]
                next_row = failed_row(new_id())

                async def batch(rows: list[ProcessedEvent] = rows) -> None:
                    async with units.begin() as unit:
                        await unit.load_inbox([row.event_id for row in rows])
                        await unit.load_consumers([row.consumer_uuid for row in rows])
                        await unit.write_inbox([(InboxWrite.INSERT, row) for row in rows], NOW)

                batch_task = asyncio.create_task(batch())
                done, _ = await asyncio.wait(
                    {batch_task, asyncio.create_task(reached.wait())},
                    timeout=10,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not reached.is_set():  # fewer round trips than stop_at: all were tried
                    assert batch_task in done
                    await batch_task
                    break
                batch_task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await batch_task
                async with units.begin() as unit:
                    await unit.write_inbox([(InboxWrite.INSERT, next_row)], NOW)
                seen = {
                    row[0]
                    for row in await other.fetch(
                        "SELECT event_id FROM processed_events WHERE event_id = ANY($1::VARCHAR[])",
                        [row.event_id for row in (*rows, next_row)],
                    )
                }
                at_commit = bool(stopped) and stopped[0].strip().upper().startswith("COMMIT")
                ends.append(
                    (stop_at, at_commit, len(seen - {next_row.event_id}), next_row.event_id in seen)
                )
        finally:
            await other.close()
    assert calls >= 5, "fewer round trips than BEGIN, two reads, a write and COMMIT"
    assert [at for at, at_commit, _, _ in ends if at_commit] != [], "never cancelled at COMMIT"
    assert [at for at, _, _, next_seen in ends if not next_seen] == [], "commits lost"
    assert [at for at, at_commit, batch, _ in ends if batch and not at_commit] == [], (
        f"cancelled before its COMMIT, committed: {ends}"
    )
    assert {batch for _, _, batch, _ in ends} <= {0, 2}, "half a batch committed"
