"""Creating the async engine, with the per-database settings that correctness needs.

SQLite: WAL (readers never block the writer), a busy timeout (a second writer waits
instead of failing at once), foreign keys on, and ``BEGIN IMMEDIATE`` for every write
transaction.  The last one matters: with SQLite's default deferred transactions, a
transaction that read and then tries to write after another connection committed
fails with "database is locked" regardless of the busy timeout.  Taking the write lock
at BEGIN serialises writers cleanly, so our read-decide-write always sees the state it
writes over.  The pysqlite driver's own transaction handling is switched off so that
SQLAlchemy's BEGIN is the only one (the documented recipe).

PostgreSQL: asyncpg, READ COMMITTED, a pool of ``database_pool_size`` connections with
pre-ping so that a server restart costs one failed checkout, not a crash.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from service.config import Settings

#: Execution option: this transaction only reads (SQLite then begins DEFERRED).
READ_ONLY = "consumergen_read_only"


def create_engine(settings: Settings) -> AsyncEngine:
    """The service's engine for ``settings.database_url``."""
    if settings.is_sqlite:
        return _sqlite_engine(settings.database_url, settings.sqlite_busy_timeout_ms)
    return create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
    )


def _sqlite_engine(url: str, busy_timeout_ms: int) -> AsyncEngine:
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


async def read_only(connection: AsyncConnection) -> AsyncConnection:
    """Mark ``connection`` (before its first statement) as a reader."""
    return await connection.execution_options(**{READ_ONLY: True})
