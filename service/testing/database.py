"""Read the service's tables directly, to compare with the model; hold the database locked
so that the daemon's writes cannot proceed (outage tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

State = dict[str, tuple[int, bool, str, str, str | None]]


async def consumer_state(database_url: str) -> State:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.uuid, c.generation, c.deleted_at IS NOT NULL, p.external_id,"
                    " u.external_id, t.name FROM consumers c"
                    " JOIN projects p ON p.id = c.project_id"
                    " JOIN users u ON u.id = c.user_id"
                    " LEFT JOIN consumer_types t ON t.id = c.consumer_type_id"
                )
            )
            return {r[0]: (int(r[1]), bool(r[2]), r[3], r[4], r[5]) for r in rows}
    finally:
        await engine.dispose()


async def inbox(database_url: str) -> dict[str, tuple[str, str | None]]:
    """event id -> (outcome, reason) as recorded in processed_events."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT event_id, outcome, reason FROM processed_events")
            )
            return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await engine.dispose()


class DatabaseLock:
    """Another client holding the database so that the daemon's writes cannot proceed:
    SQLite ``BEGIN EXCLUSIVE`` (the daemon's BEGIN IMMEDIATE then fails with "database
    is locked" after its busy timeout), PostgreSQL ``LOCK TABLE processed_events`` (the
    daemon's batches block on it)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._sqlite: Any = None
        self._pg: Any = None
        self._pg_tx: Any = None

    async def acquire(self) -> None:
        if self.url.startswith("sqlite"):
            import sqlite3

            path = self.url.split(":///", 1)[1]

            def lock() -> Any:
                conn = sqlite3.connect(
                    path, timeout=30, isolation_level=None, check_same_thread=False
                )
                conn.execute("BEGIN EXCLUSIVE")
                return conn

            self._sqlite = await asyncio.to_thread(lock)
        else:
            import asyncpg

            self._pg = await asyncpg.connect(asyncpg_url(self.url))
            self._pg_tx = self._pg.transaction()
            await self._pg_tx.start()
            await self._pg.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")

    async def release(self) -> None:
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            await asyncio.to_thread(conn.execute, "ROLLBACK")
            await asyncio.to_thread(conn.close)
        if self._pg is not None:
            conn, self._pg = self._pg, None
            await self._pg_tx.rollback()
            await conn.close()

    async def waiters(self) -> int:
        """PostgreSQL only: sessions waiting on the lock (the daemon, blocked)."""
        import asyncpg

        conn = await asyncpg.connect(asyncpg_url(self.url))
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'processed_events'::regclass"
                )
            )
        finally:
            await conn.close()


def asyncpg_url(url: str) -> str:
    """The ``postgresql://`` form of a SQLAlchemy ``postgresql+asyncpg://`` URL: what
    asyncpg itself (and psql) connect to."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
