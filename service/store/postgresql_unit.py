"""PostgreSQL's unit of work for the apply path: asyncpg on the pool's connection.

Through SQLAlchemy a PostgreSQL batch spent most of its event-loop CPU in SQLAlchemy's
per-statement and per-row work (65 µs of the "apply" stage per event in ``python -m
benchmarks e2e --quick``, against 9 µs on SQLite), and its ``IN (...)`` reads expanded
one parameter per value, so every batch size was a new statement text and a new
server-side prepare.  Here every statement of the apply path is one fixed text whatever
the batch size, sent straight to asyncpg, which prepares it once per connection (its
statement cache) and hands back its own ``Record`` rows, read without SQLAlchemy's row
processing.  The reads take their keys as one array (``= ANY($1::VARCHAR[])``); the
writes take their rows as one JSON array (``dialects.postgresql.rows_select``, which
says why: asyncpg's per-element array encoding cost more than the rest of a write).  A
transaction is: BEGIN, the inbox read, the consumers read, the owner reads (none once
their ids are cached), one insert and one compare-and-swap update for the consumers, one
insert for the inbox, COMMIT: one round trip per statement kind whatever the batch size.

SQLAlchemy keeps everything else: the pool (size, pre-ping, disposal), the transaction
(``SqlUnitOfWorkFactory`` begins it and commits or rolls it back, as on every
database: the statements here run on the same connection inside it), the schema the
statements are written from, the migrations, and every other read and write.  The
semantics are the SQL path's: the CAS statement is the dialect's (rows locked in UUID
order, READ COMMITTED re-check, RETURNING), and a write that changed fewer rows than
meant is ``StoreRace``.  ``store.asyncpg_driver`` keeps SQLAlchemy's rules for the
straight calls: inside its transaction, a round trip cut short invalidates the
connection, asyncpg's errors raised as SQLAlchemy's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any, Final

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.consumer import ConsumerState
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind
from service.domain.rules import Write
from service.store.asyncpg_driver import DriverConnection, driver_connection
from service.store.dialects.postgresql import (
    insert_rows,
    json_rows,
    rows_select,
    sql_type,
    update_rows,
)
from service.store.owners import OwnerCache, resolve_owners
from service.store.reads import DECIDING, deciding_states, inbox_rows
from service.store.schema import consumers, processed_events
from service.store.unit_of_work import SqlUnitOfWork
from service.store.writes import (
    CONSUMER_COLUMNS,
    INBOX_COLUMNS,
    RaceKind,
    StoreRace,
    consumer_rows,
    inbox_values,
)


class PostgresUnitOfWork(SqlUnitOfWork):
    """A ``UnitOfWork`` whose statements go straight to asyncpg (see the module
    docstring); ``connection`` stays the SQLAlchemy connection of the transaction."""

    def __init__(self, connection: AsyncConnection, owner_cache: OwnerCache) -> None:
        super().__init__(connection, owner_cache)
        self._driver: DriverConnection | None = None

    async def driver(self) -> DriverConnection:
        """The asyncpg connection inside the transaction (taken once per unit), under
        SQLAlchemy's rules (``store.asyncpg_driver``)."""
        if self._driver is None:
            self._driver = await driver_connection(self.connection)
        return self._driver

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = await (await self.driver()).fetch(INBOX_SELECT, ids)
        return inbox_rows(rows)

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        wanted = list(set(uuids))
        if not wanted:
            return {}
        return deciding_states(await (await self.driver()).fetch(DECIDING_SELECT, wanted))

    async def write_consumers(self, writes_: Sequence[Write], now: datetime) -> None:
        if not writes_:
            return
        driver = await self.driver()
        owners = await resolve_owners(_OwnerRows(driver), writes_, now, self._owner_cache)
        inserts, updates = consumer_rows(writes_, owners, now)
        if inserts:
            inserted = await insert_rows(driver, consumers, "uuid", CONSUMER_COLUMNS, inserts)
            if inserted != len(inserts):
                raise StoreRace(RaceKind.CONSUMER)
        if updates and not await update_rows(driver, updates, now):
            raise StoreRace(RaceKind.CONSUMER)

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        inserts: list[tuple[Any, ...]] = []
        replaced: list[tuple[Any, ...]] = []
        for how, row in rows:
            if how is InboxWrite.INSERT:
                inserts.append(inbox_values(row, now))
            elif how is InboxWrite.REPLACE_FAILED:
                replaced.append(inbox_values(row, now))
        if not inserts and not replaced:
            return
        driver = await self.driver()
        if inserts:
            inserted = await insert_rows(
                driver, processed_events, "event_id", INBOX_COLUMNS, inserts
            )
            if inserted != len(inserts):
                raise StoreRace(RaceKind.INBOX)
        if replaced:
            # The fields REPLACE_FAILED_UPDATE takes, from INBOX_COLUMNS' order.
            picked = [tuple(row[_INBOX_INDEX[name]] for name in _REPLACED) for row in replaced]
            hit = await driver.fetch(REPLACE_FAILED_UPDATE, json_rows(picked), now)
            if len(hit) != len(replaced):
                raise StoreRace(RaceKind.INBOX)


class _OwnerRows:
    """``store.owners.OwnerRows`` on the asyncpg connection: one text per table and kind."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def ids(self, table: Table, column: str, names: list[str]) -> dict[str, int]:
        rows = await self._driver.fetch(owner_select(table, column), names)
        return {name: ident for name, ident in rows}

    async def insert(self, table: Table, column: str, names: list[str], now: datetime) -> None:
        await insert_rows(
            self._driver, table, column, (column, "created_at"), [(name, now) for name in names]
        )


@cache
def owner_select(table: Table, column: str) -> str:
    """The ids of an owner table's rows by name (names from ``Table`` objects)."""
    return f"SELECT {column}, id FROM {table.name} WHERE {column} = ANY($1::VARCHAR[])"  # noqa: S608


#: The rules' read of inbox rows, by event id.
INBOX_SELECT: Final = (
    "SELECT event_id, consumer_uuid, payload_hash, outcome, reason, generation_after"
    " FROM processed_events WHERE event_id = ANY($1::VARCHAR[])"
)
_POSTGRESQL: Final = postgresql.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
#: The rules' read of consumers (``store.reads.DECIDING``, its joins), by uuid.
DECIDING_SELECT: Final = (
    str(DECIDING.compile(dialect=_POSTGRESQL)) + " WHERE consumers.uuid = ANY($1::VARCHAR[])"
)

#: What replacing a FAILED inbox row writes (``store.writes.REPLACE_FAILED``), by
#: event id and payload hash, for a whole batch in one statement.
_REPLACED: Final = (
    "event_id",
    "payload_hash",
    "outcome",
    "reason",
    "generation_after",
    "attempts",
    "source_topic",
    "source_partition",
    "source_offset",
)
_INBOX_INDEX: Final = {name: index for index, name in enumerate(INBOX_COLUMNS)}
REPLACE_FAILED_UPDATE: Final = (
    "UPDATE processed_events AS p"  # noqa: S608 - names from the schema, values parameters
    " SET outcome = v.outcome, reason = v.reason, generation_after = v.generation_after,"
    " attempts = v.attempts, source_topic = v.source_topic,"
    " source_partition = v.source_partition, source_offset = v.source_offset,"
    " processed_at = $2::TIMESTAMPTZ"
    f" FROM ({rows_select([(name, sql_type(processed_events.c[name])) for name in _REPLACED])})"
    " AS v WHERE p.event_id = v.event_id AND p.payload_hash = v.payload_hash"
    f" AND p.outcome = '{OutcomeKind.FAILED.value}' RETURNING p.event_id"
)
