"""SQLite's writer for the apply path: one thread, one connection, one hand-off per group.

aiosqlite hands every statement to its thread and back (BEGIN, two reads, the owner
reads, two or three writes, COMMIT: about eight round trips through the event loop per
transaction), and SQLAlchemy does per-statement work around each.  On a busy loop each
hand-off waits for the loop, so a one-event transaction whose sync takes 0.2 ms took
7-10 ms (``python -m benchmarks timeline``).  Here the whole transaction is one
function run on the writer's own thread (``run_group``): BEGIN IMMEDIATE, the work,
COMMIT, with the standard library's ``sqlite3`` and statements compiled once from the
schema's SQLAlchemy tables (SQLAlchemy stays for the schema, the migrations, the reads
of the operators' commands and every other path).

The work gets a ``GroupTransaction``: each ``part()`` is a SAVEPOINT, so several
partitions' batches share one transaction and one sync (group commit,
``service.apply.group``) while a part that fails is undone alone.  The connection has
the engine's PRAGMAs (WAL, ``synchronous`` as configured: FULL by default, the busy
timeout, foreign keys); a transient failure (busy, I/O) closes it, and the next group
opens a fresh one.  The unit of a part (``SqliteUnit``) is a ``UnitOfWork`` whose
methods never suspend: they run on the writer's thread, inside the work function.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import Any, Final, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite

from service.config import Settings
from service.domain.consumer import ConsumerState
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.rules import Write, WriteKind, owner_names
from service.store.dialects import CAS_UPDATE_NUMBERED
from service.store.dialects.sqlite import SYNCHRONOUS, database_path, insert_sql
from service.store.errors import TransientDatabaseError, describe, is_transient
from service.store.owners import OwnerCache
from service.store.reads import DECIDING, deciding_states, inbox_rows
from service.store.schema import consumer_types, consumers, processed_events, projects, users
from service.store.writes import (
    CONSUMER_COLUMNS,
    INBOX_COLUMNS,
    REPLACE_FAILED,
    RaceKind,
    StoreRace,
    inbox_values,
)

T = TypeVar("T")

_DIALECT: Final = sqlite.dialect(paramstyle="qmark")
#: SQLAlchemy's text spelling of a ``DateTime`` on SQLite (what its reads parse back).
_TIMESTAMP: Final = consumers.c.updated_at.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)


def sqlite_timestamp(moment: datetime) -> str:
    text: str = _TIMESTAMP(moment) if _TIMESTAMP is not None else moment.isoformat()
    return text


class SqliteGroupWriter:
    """``GroupWriter`` for a SQLite file (``service.store.unit_of_work``)."""

    def __init__(self, settings: Settings) -> None:
        path = database_path(settings.database_url)
        if path is None:
            raise ValueError("the SQLite writer needs a plain file URL")
        self.path = path
        self._busy_timeout_ms = int(settings.sqlite_busy_timeout_ms)
        self._synchronous = SYNCHRONOUS[settings.sqlite_synchronous]
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._connection: sqlite3.Connection | None = None
        self._owners = OwnerCache()

    @staticmethod
    def supports(settings: Settings) -> bool:
        """A plain file (not memory, not a URI the operator wrote): what it can open."""
        return database_path(settings.database_url) is not None

    async def run_group(self, work: Callable[[SqliteGroup], T]) -> T:
        """``work`` in one transaction on the writer's thread; committed when it returns,
        rolled back when it raises.  A transient failure is ``TransientDatabaseError``."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._run, work)
        except sqlite3.Error as exc:
            if is_transient(exc):
                raise TransientDatabaseError(describe(exc)) from exc
            raise

    def _run(self, work: Callable[[SqliteGroup], T]) -> T:
        connection = self._connection or self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(SqliteGroup(connection, self._owners))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError:
            self._close()  # busy, I/O: the next group starts on a fresh connection
            raise
        self._owners.trim()
        return result

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            f"file:{self.path}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        connection.execute("PRAGMA foreign_keys = ON")
        self._connection = connection
        return connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def close(self) -> None:
        """Close the connection on its thread, then the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)


class SqliteGroup:
    """One transaction of the writer: ``part()`` opens a savepoint for one batch."""

    def __init__(self, connection: sqlite3.Connection, owners: OwnerCache) -> None:
        self._connection = connection
        self._owners = owners

    @contextmanager
    def part(self) -> Iterator[SqliteUnit]:
        """The part's writes stay when the block ends normally and are undone (alone)
        when it raises."""
        connection = self._connection
        connection.execute("SAVEPOINT part")
        try:
            yield SqliteUnit(connection, self._owners)
        except BaseException:
            connection.execute("ROLLBACK TO part")
            connection.execute("RELEASE part")
            raise
        connection.execute("RELEASE part")


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqliteUnit:
    """A ``UnitOfWork`` on the writer's connection; no method suspends."""

    def __init__(self, connection: sqlite3.Connection, owners: OwnerCache) -> None:
        self._connection = connection
        self._owners = owners

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        ids = sorted(set(event_ids))
        if not ids:
            return {}
        rows = self._connection.execute(_INBOX_SELECT.format(_marks(len(ids))), ids)
        return inbox_rows(rows)

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        wanted = sorted(set(uuids))
        if not wanted:
            return {}
        rows = self._connection.execute(_DECIDING_SQL.format(_marks(len(wanted))), wanted)
        return deciding_states(rows)

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        if not writes:
            return
        stamp = sqlite_timestamp(now)
        project_names, user_names, type_names = owner_names(writes)
        owners = self._owners
        projects_ = self._owner_ids(projects, "external_id", project_names, stamp, owners.projects)
        users_ = self._owner_ids(users, "external_id", user_names, stamp, owners.users)
        types = self._owner_ids(consumer_types, "name", type_names, stamp, owners.types)
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for w in writes:
            after = w.after
            kind = after.consumer_type
            type_id = types[kind] if kind is not None else None
            deleted_at = stamp if after.deleted else None
            project, user = projects_[after.project_id], users_[after.user_id]
            if w.kind is WriteKind.INSERT:
                row = (after.uuid, project, user, type_id, after.generation, after.last_event_id)
                inserts.append((*row, stamp, stamp, deleted_at))
            else:
                before = w.before
                assert before is not None
                read = (before.uuid, before.generation, before.last_event_id)
                written = (after.generation, project, user, type_id, after.last_event_id)
                updates.append((*read, *written, deleted_at, stamp))
        connection = self._connection
        if inserts:
            cursor = connection.executemany(_CONSUMER_INSERT, inserts)
            if cursor.rowcount != len(inserts):
                raise StoreRace(RaceKind.CONSUMER)
        if updates:
            cursor = connection.executemany(CAS_UPDATE_NUMBERED, updates)
            if cursor.rowcount != len(updates):
                raise StoreRace(RaceKind.CONSUMER)

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        stamp = sqlite_timestamp(now)
        inserts = [inbox_values(row, stamp) for how, row in rows if how is InboxWrite.INSERT]
        connection = self._connection
        if inserts:
            cursor = connection.executemany(_INBOX_INSERT, inserts)
            if cursor.rowcount != len(inserts):
                raise StoreRace(RaceKind.INBOX)
        for how, row in rows:
            if how is not InboxWrite.REPLACE_FAILED:
                continue
            values = dict(zip(INBOX_COLUMNS, inbox_values(row, stamp), strict=True))
            values["b_event_id"] = values.pop("event_id")
            values["b_payload_hash"] = values.pop("payload_hash")
            sql, order, literals = _replace_failed()
            bound = literals | values
            cursor = connection.execute(sql, [bound[name] for name in order])
            if cursor.rowcount != 1:
                raise StoreRace(RaceKind.INBOX)

    def _owner_ids(
        self, table: Table, column: str, names: set[str], stamp: str, cache: dict[str, int]
    ) -> dict[str, int]:
        """Ids of ``names``, created when missing (as ``store.owners``: only rows that
        existed before this transaction go into the cache, since a savepoint or the
        group may roll back the ones inserted here)."""
        found = {name: cache[name] for name in names if name in cache}
        if len(found) == len(names):
            return found
        select = f"SELECT {column}, id FROM {table.name} WHERE {column} IN ({{}})"  # noqa: S608 - names from Table objects
        wanted = sorted(names - found.keys())
        existing = dict(self._connection.execute(select.format(_marks(len(wanted))), wanted))
        cache.update(existing)
        found.update(existing)
        missing = sorted(names - found.keys())
        if missing:
            self._connection.executemany(
                insert_sql(table, column, (column, "created_at")),
                [(name, stamp) for name in missing],
            )
            found.update(self._connection.execute(select.format(_marks(len(missing))), missing))
        if len(found) != len(names):  # pragma: no cover - would be a bug, not a race
            raise RuntimeError(f"{table.name}: created names are not visible")
        return found


_INBOX_SELECT: Final = (
    "SELECT event_id, consumer_uuid, payload_hash, outcome, reason, generation_after"
    " FROM processed_events WHERE event_id IN ({})"
)
#: The rules' read of consumers (``store.reads.DECIDING``, its joins), by uuid.
_DECIDING_SQL: Final = (
    str(DECIDING.compile(dialect=_DIALECT)).replace("{", "{{").replace("}", "}}")
    + " WHERE consumers.uuid IN ({})"
)
_CONSUMER_INSERT: Final = insert_sql(consumers, "uuid", CONSUMER_COLUMNS)
_INBOX_INSERT: Final = insert_sql(processed_events, "event_id", INBOX_COLUMNS)


@cache
def _replace_failed() -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """``store.writes.REPLACE_FAILED`` as qmark SQL, the names of its parameters in
    order, and the values the statement itself binds (its ``outcome = 'failed'``)."""
    compiled = REPLACE_FAILED.compile(dialect=_DIALECT)
    literals = {name: value for name, value in compiled.params.items() if value is not None}
    return str(compiled), tuple(compiled.positiontup or ()), literals
