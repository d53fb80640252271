"""What each dialect hands the store, seen on the real databases: the engines' settings
as the server reports them, which conflicts an insert-if-absent ignores, the JSON rows
of PostgreSQL's batch statements, byte-wise order whatever the column's collation,
asyncpg's errors as SQLAlchemy's (the statement named, the parameters never shown),
timestamps bound as SQLAlchemy binds them, and the owner-id cache shared by a factory's
transactions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import load_settings
from service.store import dialects, reads
from service.store.asyncpg_driver import driver_connection
from service.store.dialects import bind_timestamp, dialect_for
from service.store.dialects import postgresql as pg
from service.store.dialects import sqlite as lite
from service.store.migrate import upgrade
from service.store.schema import consumers, projects
from service.testing.polling import poll
from tests.apply.helpers import Db, migrated, new_id, upsert

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


# --- insert-if-absent: only the key's conflict ----------------------------------------


async def test_an_insert_if_absent_ignores_a_conflict_on_its_key_only(db: Db) -> None:
    """The owner rows' insert skips a name that exists, but any other constraint it
    breaks (here the row id) is still an error: a bug stops, it is not skipped."""
    dialect = dialect_for(db.engine.dialect.name)
    statement = dialect.insert_ignoring_conflicts(projects, "external_id")
    async with db.engine.begin() as connection:
        await connection.execute(statement, [{"external_id": "p1", "created_at": NOW}])
        await connection.execute(statement, [{"external_id": "p1", "created_at": NOW}])
    assert await db.rows("SELECT external_id FROM projects") == [("p1",)]
    (taken,) = (await db.rows("SELECT id FROM projects"))[0]
    with pytest.raises(sa_exc.IntegrityError):
        async with db.engine.begin() as connection:
            await connection.execute(
                statement, [{"id": taken, "external_id": "p2", "created_at": NOW}]
            )
    assert await db.count("projects") == 1


# --- PostgreSQL's engines -----------------------------------------------------------------


@pytest.fixture
async def pg_migrated(postgres_url: str) -> AsyncIterator[str]:
    await upgrade(load_settings(database_url=postgres_url))
    yield postgres_url


async def _show(engine: AsyncEngine, name: str) -> str:
    async with engine.connect() as connection:
        return str((await connection.exec_driver_sql(f"SHOW {name}")).scalar())


async def test_postgresql_engines_write_unless_read_only(pg_migrated: str) -> None:
    """The protocol's default engine writes; a read-only one's sessions refuse every
    write server-side (the read-only commands cannot change the database)."""
    settings = load_settings(database_url=pg_migrated)
    writer = pg.DIALECT.create_engine(settings)
    reader = pg.DIALECT.create_engine(settings, read_only=True)
    try:
        assert await _show(writer, "default_transaction_read_only") == "off"
        async with writer.begin() as connection:
            await connection.execute(insert(projects), {"external_id": "p", "created_at": NOW})
        assert await _show(reader, "default_transaction_read_only") == "on"
        with pytest.raises(sa_exc.DBAPIError) as caught:
            async with reader.begin() as connection:
                await connection.execute(insert(projects), {"external_id": "q", "created_at": NOW})
        assert pg.sqlstate(caught.value) == "25006"  # read_only_sql_transaction
        async with reader.connect() as connection:
            names = (await connection.execute(select(projects.c.external_id))).scalars()
            assert list(names) == ["p"]
    finally:
        await writer.dispose()
        await reader.dispose()


async def test_postgresql_json_rows_come_back_typed(pg_migrated: str) -> None:
    """``rows_select`` over ``json_rows``: each field cast to its type, nulls kept, a
    timestamp's instant kept whatever its offset (a naive one taken as UTC)."""
    engine = pg.DIALECT.create_engine(load_settings(database_url=pg_migrated))
    later = datetime(2025, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    rows = [(7, "seven", later), (8, None, datetime(2025, 6, 1, 12, 0)), (9, "nine", None)]
    statement = pg.rows_select((("n", "BIGINT"), ("s", "VARCHAR"), ("t", "TIMESTAMPTZ")))
    try:
        async with engine.connect() as connection:
            driver = await driver_connection(connection)
            got = [tuple(record) for record in await driver.fetch(statement, pg.json_rows(rows))]
    finally:
        await engine.dispose()
    assert got == [(7, "seven", later), (8, None, NOW), (9, "nine", None)]


async def test_postgresql_streams_consumers_in_byte_order_whatever_the_collation(
    pg_migrated: str,
) -> None:
    """``bytewise``: with the column collated by ICU's rules (where "a" < "B"), the
    stream still comes in Python's order, so two databases' streams merge."""
    settings = load_settings(database_url=pg_migrated)
    engine = pg.DIALECT.create_engine(settings)
    keys = ["b-2", "B-1", "a-3", "A-4", "_-5"]
    try:
        async with engine.begin() as connection:
            icu = (
                await connection.exec_driver_sql(
                    "SELECT collname FROM pg_collation WHERE collname = 'und-x-icu'"
                )
            ).scalar()
            assert icu == "und-x-icu", "the server has no ICU collation to order by"
            await connection.exec_driver_sql(
                'ALTER TABLE consumers ALTER COLUMN uuid TYPE VARCHAR(36) COLLATE "und-x-icu"'
            )
            owner = (
                await connection.execute(
                    insert(projects).returning(projects.c.id),
                    {"external_id": "p", "created_at": NOW},
                )
            ).scalar_one()
            await connection.exec_driver_sql(
                "INSERT INTO users (external_id, created_at) VALUES ('u', now())"
            )
            user = (await connection.exec_driver_sql("SELECT id FROM users")).scalar_one()
            for key in keys:
                await connection.execute(
                    insert(consumers),
                    {
                        "uuid": key,
                        "project_id": owner,
                        "user_id": user,
                        "generation": 1,
                        "last_event_id": new_id(),
                        "created_at": NOW,
                        "updated_at": NOW,
                    },
                )
            collated = await connection.execute(select(consumers.c.uuid).order_by(consumers.c.uuid))
            assert list(collated.scalars()) != sorted(keys)  # the collation differs
        streamed = [state.uuid async for state in reads.consumers_by_uuid(engine)]
    finally:
        await engine.dispose()
    assert streamed == sorted(keys)


# --- asyncpg's errors as SQLAlchemy's --------------------------------------------------------


async def test_an_asyncpg_error_names_its_statement_and_hides_its_parameters(
    pg_migrated: str,
) -> None:
    """A server error on the driver's connection is SQLAlchemy's class for it, with the
    statement and parameters SQLAlchemy's execution would attach; the error's text shows
    the statement, never the parameters (they hold consumer UUIDs)."""
    secret = str(uuid.uuid4())
    statement = "INSERT INTO projects (external_id, created_at) VALUES ($1, $2)"
    engine = pg.DIALECT.create_engine(load_settings(database_url=pg_migrated))
    try:
        async with engine.connect() as connection:
            driver = await driver_connection(connection)
            await driver.execute(statement, secret, NOW)
            with pytest.raises(sa_exc.DBAPIError) as caught:
                await driver.execute(statement, secret, NOW)
    finally:
        await engine.dispose()
    error = caught.value
    assert isinstance(error, sa_exc.IntegrityError)
    assert pg.sqlstate(error) == "23505"  # unique_violation
    assert error.statement == statement
    assert error.params == (secret, NOW)
    assert f"[SQL: {statement}]" in str(error)
    assert secret not in str(error)


async def test_a_round_trip_cancelled_in_flight_invalidates_its_connection_saying_why(
    pg_migrated: str,
) -> None:
    """A statement cut short by a cancellation invalidates the pooled connection, and
    the pool is told the cancellation was why (its ``invalidate`` event and log line),
    as SQLAlchemy's own execution tells it."""
    engine = pg.DIALECT.create_engine(load_settings(database_url=pg_migrated))
    reasons: list[BaseException | None] = []

    def invalidated(_dbapi: Any, _record: Any, reason: BaseException | None) -> None:
        reasons.append(reason)

    event.listen(engine.sync_engine.pool, "invalidate", invalidated)

    async def sleeping() -> bool:
        async with engine.connect() as watcher:
            found = await watcher.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            )
            return bool(found.scalar())

    try:
        async with engine.connect() as connection:
            driver = await driver_connection(connection)
            task = asyncio.create_task(driver.execute("SELECT pg_sleep(30)"))
            await poll(sleeping, within=10, what="the statement running on the server")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert connection.invalidated
    finally:
        await engine.dispose()
    assert len(reasons) == 1 and isinstance(reasons[0], asyncio.CancelledError)


# --- SQLite's engines ---------------------------------------------------------------------


async def test_a_sqlite_read_only_engine_keeps_the_urls_driver_options(sqlite_url: str) -> None:
    """The ``mode=ro`` URI keeps what the operator's URL asked of the driver (here
    ``detect_types=2``, whose effect a query can see: a column named ``[date]`` comes
    back a date)."""
    await upgrade(load_settings(database_url=sqlite_url))
    url = f"{sqlite_url}?detect_types=2&timeout=5"
    engine = lite.DIALECT.create_engine(load_settings(database_url=url), read_only=True)
    try:
        async with engine.connect() as connection:
            day = (await connection.exec_driver_sql("SELECT '2025-06-01' AS \"d [date]\"")).scalar()
    finally:
        await engine.dispose()
    assert day == datetime(2025, 6, 1).date()


async def test_sqlite_engines_create_and_write_by_default_and_read_only_write_nothing(
    tmp_path: Path,
) -> None:
    """The protocol's default SQLite engine creates a missing file and writes; a
    read-only one on that file refuses every write (SQLite's own ``mode=ro``)."""
    path = tmp_path / "made.sqlite3"
    settings = load_settings(database_url=f"sqlite+aiosqlite:///{path}")
    writer = lite.DIALECT.create_engine(settings)
    try:
        async with writer.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            await connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        await writer.dispose()
    assert path.is_file()
    reader = lite.DIALECT.create_engine(settings, read_only=True)
    try:
        with pytest.raises(sa_exc.OperationalError, match="readonly database"):
            async with reader.begin() as connection:
                await connection.exec_driver_sql("INSERT INTO t VALUES (2)")
        async with reader.connect() as connection:
            values = (await connection.exec_driver_sql("SELECT x FROM t")).scalars()
            assert list(values) == [1]
    finally:
        await reader.dispose()


async def test_sqlite_normal_synchronous_is_named_with_what_it_risks(sqlite_url: str) -> None:
    """The line the daemon warns with at start when the operator chose NORMAL."""
    settings = load_settings(
        database_url=sqlite_url, sqlite_synchronous="normal-may-lose-commits-on-power-loss"
    )
    engine = lite.DIALECT.create_engine(settings)
    try:
        async with engine.connect() as connection:
            risks = await lite.DIALECT.durability_risks(connection, settings)
    finally:
        await engine.dispose()
    assert [risk.what for risk in risks] == [
        "SQLite synchronous=NORMAL: a commit may roll back after a power loss or OS crash"
        " while its offset stays committed (those events are lost)"
    ]


# --- timestamps bound once per batch ---------------------------------------------------------


async def test_a_bound_timestamp_is_what_sqlalchemy_stores(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bind_timestamp`` gives the driver what SQLAlchemy's own insert would: the
    same stored value (SQLite: its text; PostgreSQL: the instant).  Its per-driver
    binder cache starts empty here, so the binder is built in this test whatever ran
    before (else an earlier test's cached binder would hide a fault in building it)."""
    monkeypatch.setattr(dialects, "_TIMESTAMP_BINDERS", {})
    async with db.engine.begin() as connection:
        await connection.execute(insert(projects), {"external_id": "core", "created_at": NOW})
        bound = bind_timestamp(connection, NOW)
        await connection.exec_driver_sql(
            "INSERT INTO projects (external_id, created_at) VALUES ('raw', "
            + ("?)" if db.is_sqlite else "$1)"),
            (bound,),
        )
        assert bind_timestamp(connection, None) is None
    stored = dict(await db.rows("SELECT external_id, created_at FROM projects"))
    assert stored["raw"] == stored["core"]
    if db.is_sqlite:
        assert isinstance(bound, str)


# --- the owner-id cache -----------------------------------------------------------------------


async def test_a_factorys_transactions_share_the_owner_ids_they_read(sqlite_url: str) -> None:
    """SQLite's unit of work is handed the factory's owner cache: once a project's id
    is known (read back in a transaction after the one that created it), a later batch
    about it reads no owner table."""
    async with migrated(sqlite_url) as db:
        await db.applier.apply(upsert(new_id()))  # creates the owner rows
        await db.applier.apply(upsert(new_id()))  # reads their ids: cached
        statements: list[str] = []

        def seen(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
        await db.applier.apply(upsert(new_id()))
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert any("consumers" in statement for statement in statements)
    assert not [s for s in statements if "FROM projects" in s or "FROM users" in s]
