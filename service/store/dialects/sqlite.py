"""SQLite (aiosqlite): one writer at a time, taken at BEGIN.

WAL (readers never block the writer), a busy timeout (a second writer waits instead of
failing at once), foreign keys on, and ``BEGIN IMMEDIATE`` for every write transaction.
The last one matters: with SQLite's default deferred transactions, a transaction that
read and then tries to write after another connection committed fails with "database
is locked" regardless of the busy timeout.  Taking the write lock at BEGIN serialises
writers cleanly, so our read-decide-write always sees the state it writes over.  The
pysqlite driver's own transaction handling is switched off so that SQLAlchemy's BEGIN
is the only one (the documented recipe).  A ``READ_ONLY`` transaction begins DEFERRED.

A read-only engine opens the file through SQLite's URI ``mode=ro``: the database file
is never created (a plain path would make an empty one wherever the command was run)
and never written; an engine with ``create=False`` (the daemon, ``replay``) opens it
``mode=rw``: written, never created.  A missing file is ``DatabaseNotFound`` naming the
resolved path.  Only ``db upgrade`` (and ``run --local``) create a database.

Durability: ``synchronous = FULL`` by default.  In WAL mode FULL syncs the WAL at every
commit, so a transaction whose commit returned survives a power loss or OS crash; under
NORMAL it may roll back, while the Kafka offset past it is already committed (the events
would be lost for good).  EXTRA adds nothing in WAL mode (it syncs the directory after a
rollback journal is deleted, and WAL deletes no journal).  NORMAL remains available as
``CONSUMERGEN_SQLITE_SYNCHRONOUS=normal-may-lose-commits-on-power-loss``: a value that
says what it risks, reported as a warning at start (``durability_risks``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

from sqlalchemy import ColumnElement, Table, bindparam, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.dml import Insert

from service.config import env_name
from service.store.dialects import (
    DATABASE_URL_VARIABLE,
    READ_ONLY,
    DurabilityRisk,
    update_by_executemany,
)

if TYPE_CHECKING:
    from service.config import Settings
    from service.store.owners import OwnerCache
    from service.store.unit_of_work import GroupWriter, SqlUnitOfWork

#: Messages of SQLITE_BUSY, SQLITE_LOCKED and I/O trouble (the driver has no SQLSTATE).
TRANSIENT_MESSAGES: Final = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "disk i/o error",
    "unable to open database file",
    "cannot operate on a closed database",
    "no active connection",
)

#: ``Settings.sqlite_synchronous`` -> the PRAGMA's value.
SYNCHRONOUS: Final = {"full": "FULL", "normal-may-lose-commits-on-power-loss": "NORMAL"}


class SQLite:
    name = "sqlite"
    drivers = frozenset({"aiosqlite"})
    single_writer = True

    def create_engine(
        self, settings: Settings, *, read_only: bool = False, create: bool = True
    ) -> AsyncEngine:
        url = settings.database_url
        if read_only or not create:
            url = existing_file_url(url, "ro" if read_only else "rw")
        engine = create_async_engine(url)
        busy_timeout_ms = int(settings.sqlite_busy_timeout_ms)
        synchronous = SYNCHRONOUS[settings.sqlite_synchronous]

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            # Hand transaction control to SQLAlchemy's "begin" event below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
                if not read_only:  # WAL is persistent: a writer set it when it made the file
                    cursor.execute("PRAGMA journal_mode = WAL")
                    cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            reader = read_only or connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if reader else "BEGIN IMMEDIATE")

        return engine

    def group_writer(self, settings: Settings) -> GroupWriter | None:
        """The apply path's own writer (``store.sqlite_writer``) for a plain file."""
        from service.store.sqlite_writer import SqliteGroupWriter  # it imports this module

        return SqliteGroupWriter(settings) if SqliteGroupWriter.supports(settings) else None

    def unit_of_work(self, connection: AsyncConnection, owners: OwnerCache) -> SqlUnitOfWork:
        """SQLAlchemy's (the group writer is SQLite's fast way, ``group_writer``)."""
        from service.store.unit_of_work import SqlUnitOfWork  # it imports this package

        return SqlUnitOfWork(connection, owners)

    def insert_ignoring_conflicts(self, table: Table, key: str) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])

    async def insert_new(
        self,
        connection: AsyncConnection,
        table: Table,
        key: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> int:
        """One driver ``executemany``; its row count counts the rows inserted (a
        conflict's ignored row changes nothing)."""
        sql = insert_sql(table, key, tuple(columns))
        result = await connection.exec_driver_sql(sql, list(rows))
        return int(result.rowcount)

    async def update_consumers(
        self, connection: AsyncConnection, rows: Sequence[tuple[Any, ...]], now: Any
    ) -> bool:
        # SQLite serialises writers and reports the executemany's total row count.
        return await update_by_executemany(connection, rows, now)

    def transient(self, error: BaseException) -> bool | None:
        """True for an ``OperationalError`` with a busy/locked/I-O message, else None."""
        # (raw ``sqlite3`` errors too: the apply path's writer, ``store.sqlite_writer``)
        if isinstance(error, (sa_exc.OperationalError, sqlite3.OperationalError)):
            text = str(getattr(error, "orig", error)).lower()
            if any(marker in text for marker in TRANSIENT_MESSAGES):
                return True
        return None

    def bytewise(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return column  # SQLite's default collation (BINARY) is byte-wise already

    async def durability_risks(
        self, connection: AsyncConnection, settings: Settings
    ) -> list[DurabilityRisk]:
        """NORMAL when the operator chose it (always accepted: choosing it is the
        acceptance); FULL is durable.  Read from the connection, not the settings."""
        value = (await connection.exec_driver_sql("PRAGMA synchronous")).scalar()
        if value is not None and int(value) >= 2:  # 2 = FULL, 3 = EXTRA
            return []
        return [
            DurabilityRisk(
                "SQLite synchronous=NORMAL: a commit may roll back after a power loss or "
                "OS crash while its offset stays committed (those events are lost)",
                setting=env_name("sqlite_synchronous"),
                accepted=True,
            )
        ]


def database_path(url: str) -> Path | None:
    """The resolved file of a plain SQLite URL; None for memory or URI-form URLs."""
    parsed = make_url(url)
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def existing_file_url(url: str, mode: Literal["ro", "rw"]) -> str:
    """``url`` as a URI opened with ``mode`` (``ro`` read-only, ``rw`` read-write: both
    never create the file); ``DatabaseNotFound`` when the file is missing."""
    from service.store.errors import DatabaseNotFound  # errors imports this package

    path = database_path(url)
    if path is None:
        return url  # in-memory, or already a URI the operator wrote: theirs to say
    if not path.is_file():
        raise DatabaseNotFound(
            f"no SQLite database at {path} ({DATABASE_URL_VARIABLE}); nothing was created."
            " Check the path (a relative one is taken from the current folder), or create"
            " the database there with `consumergen db upgrade`"
        )
    parsed = make_url(url)
    query = "&".join(f"{key}={value}" for key, value in sorted(parsed.query.items()))
    return f"{parsed.drivername}:///file:{quote(str(path))}?mode={mode}&uri=true" + (
        f"&{query}" if query else ""
    )


@cache
def insert_sql(table: Table, key: str, columns: tuple[str, ...]) -> str:
    """The insert-if-absent, compiled once, its ``?`` in the order of ``columns``."""
    statement = DIALECT.insert_ignoring_conflicts(table, key).values(
        {name: bindparam(name) for name in columns}
    )
    compiled = statement.compile(dialect=_SQLITE)
    if tuple(compiled.positiontup or ()) != columns:  # pragma: no cover - a bug
        raise RuntimeError(f"{table.name}: compiled parameters are not in column order")
    return str(compiled)


_SQLITE: Final = sqlite.dialect(paramstyle="qmark")


DIALECT: Final = SQLite()
