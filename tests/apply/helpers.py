"""Shared pieces of the store and apply tests: a migrated database, events, raw reads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.apply.applier import Applier
from service.config import Settings, load_settings
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.store.engine import create_engine
from service.store.migrate import upgrade_engine
from service.store.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory, UnitOfWork

TABLES = ("processed_events", "consumers", "consumer_types", "users", "projects")


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: quick retry waits unless a test says otherwise."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "cas_retry_wait_initial_seconds": 0.001,
        "cas_retry_wait_max_seconds": 0.02,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Db:
    url: str
    settings: Settings
    engine: AsyncEngine
    applier: Applier

    @property
    def is_sqlite(self) -> bool:
        return self.settings.is_sqlite

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as connection:
            result = await connection.execute(text(sql), params)
            return [tuple(row) for row in result]

    async def count(self, table: str) -> int:
        assert table in TABLES
        return int((await self.rows(f"SELECT count(*) FROM {table}"))[0][0])

    async def generation(self, consumer: str) -> tuple[int, bool] | None:
        rows = await self.rows(
            "SELECT generation, deleted_at IS NOT NULL FROM consumers WHERE uuid = :u", u=consumer
        )
        return (int(rows[0][0]), bool(rows[0][1])) if rows else None

    async def truncate(self) -> None:
        """Empty every table; a new Applier, since its owner-id cache relies on owner
        rows never being deleted (true in the service, not across a truncation)."""
        async with self.engine.begin() as connection:
            for table in TABLES:
                await connection.execute(text(f"DELETE FROM {table}"))
        self.applier = Applier(SqlUnitOfWorkFactory(self.engine), self.settings)


@asynccontextmanager
async def migrated(database_url: str, **overrides: Any) -> AsyncIterator[Db]:
    settings = settings_for(database_url, **overrides)
    engine = create_engine(settings)
    try:
        await upgrade_engine(engine)
        yield Db(database_url, settings, engine, Applier(SqlUnitOfWorkFactory(engine), settings))
    finally:
        await engine.dispose()


def new_id() -> str:
    return str(uuid.uuid4())


def event(
    consumer: str,
    kind: EventType = EventType.UPSERT,
    expected: Precondition = UNCONDITIONAL,
    *,
    event_id: str | None = None,
    **fields: Any,
) -> ConsumerEvent:
    return ConsumerEvent(
        event_id=event_id or new_id(),
        type=kind,
        consumer_uuid=consumer,
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
        expected_generation=expected,
        **fields,
    )


def upsert(consumer: str, expected: Precondition = UNCONDITIONAL, **fields: Any) -> ConsumerEvent:
    return event(consumer, EventType.UPSERT, expected, **fields)


def delete(consumer: str, expected: Precondition = UNCONDITIONAL, **fields: Any) -> ConsumerEvent:
    return event(consumer, EventType.DELETE, expected, **fields)


#: What another writer does between an Applier's read and its write.
Action = Callable[[AsyncConnection], Awaitable[None]]


class Interfering(Applier):
    """An Applier during which ``action`` runs between its read and its write, the first
    ``times`` times (``remaining`` counts down; a test may set it again)."""

    def __init__(
        self, db: Db, action: Action, times: int, settings: Settings | None = None
    ) -> None:
        super().__init__(SqlUnitOfWorkFactory(db.engine), settings or db.settings)
        self._action = action
        self.remaining = times

    async def _between_read_and_write(self, unit: UnitOfWork) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            assert isinstance(unit, SqlUnitOfWork)
            await self._action(unit.connection)


def bump_on_own_connection(consumer: str) -> Action:
    """``consumer``'s generation + 1 on the Applier's own connection, which its rollback
    undoes: a lost compare-and-swap on either database without a second writer."""

    async def act(connection: AsyncConnection) -> None:
        await connection.execute(
            text("UPDATE consumers SET generation = generation + 1 WHERE uuid = :u"),
            {"u": consumer},
        )

    return act


class Bumping(Interfering):
    """Another writer bumps ``consumer`` between the read and the write, ``times`` times."""

    def __init__(self, db: Db, consumer: str, times: int) -> None:
        super().__init__(db, bump_on_own_connection(consumer), times)
