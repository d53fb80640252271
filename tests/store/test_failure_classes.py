"""The failure classes with errors the real drivers raise (SQLite and PostgreSQL), not
hand-made ones (those are the table in tests/unit/test_failures.py): a constraint
violation and a syntax error are bugs; a locked SQLite file and a PostgreSQL server that
cannot be reached are the infrastructure's, and so is what the unit of work makes of
them (``TransientDatabaseError``)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from service.failures import FailureClass, classify
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError, is_transient
from service.store.unit_of_work import SqlUnitOfWorkFactory
from tests.apply.helpers import Db, settings_for


async def _raised(db: Db, *statements: str) -> BaseException:
    """What the driver raises for ``statements`` in one transaction (rolled back)."""
    with pytest.raises(sa_exc.DBAPIError) as caught:
        async with db.engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    return caught.value


async def test_real_constraint_violations_and_syntax_errors_are_bugs(db: Db) -> None:
    duplicate = await _raised(
        db,
        "INSERT INTO projects (external_id, created_at) VALUES ('p', CURRENT_TIMESTAMP)",
        "INSERT INTO projects (external_id, created_at) VALUES ('p', CURRENT_TIMESTAMP)",
    )
    assert isinstance(duplicate, sa_exc.IntegrityError)
    syntax = await _raised(db, "SELEC 1")
    missing = await _raised(db, "SELECT * FROM no_such_table")
    for error in (duplicate, syntax, missing):
        assert not is_transient(error), repr(error)
        assert classify(error) is FailureClass.BUG, repr(error)
    # Through the unit of work the bug passes unchanged: nothing turns it into a wait.
    units = SqlUnitOfWorkFactory(db.engine)
    with pytest.raises(sa_exc.IntegrityError):
        async with units.begin() as unit:
            for _ in range(2):
                await unit.connection.execute(
                    text(
                        "INSERT INTO users (external_id, created_at)"
                        " VALUES ('u', CURRENT_TIMESTAMP)"
                    )
                )


async def test_a_locked_sqlite_file_is_the_infrastructures(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, sqlite_busy_timeout_ms=100)
    engine = create_engine(settings)
    locker: sqlite3.Connection | None = None
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
        locker = sqlite3.connect(sqlite_url.split(":///", 1)[1], isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(sa_exc.OperationalError) as caught:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t VALUES (1)"))
        assert is_transient(caught.value)
        assert classify(caught.value) is FailureClass.INFRASTRUCTURE
        with pytest.raises(TransientDatabaseError, match="locked"):
            async with SqlUnitOfWorkFactory(engine).begin() as unit:
                await unit.connection.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
        await engine.dispose()


async def test_an_unreachable_postgresql_is_the_infrastructures(postgres_server_url: str) -> None:
    unreachable = postgres_server_url.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere"
    engine = create_engine(settings_for(unreachable))
    try:
        with pytest.raises((OSError, sa_exc.DBAPIError)) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert is_transient(caught.value)
        assert classify(caught.value) is FailureClass.INFRASTRUCTURE
        with pytest.raises(TransientDatabaseError):
            async with SqlUnitOfWorkFactory(engine).begin() as unit:
                await unit.load_inbox(["x"])
    finally:
        await engine.dispose()
