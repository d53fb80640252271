"""SQLite (aiosqlite): one writer at a time, taken at BEGIN.

WAL (readers never block the writer), a busy timeout (a second writer waits instead of
failing at once), foreign keys on, and ``BEGIN IMMEDIATE`` for every write transaction.
The last one matters: with SQLite's default deferred transactions, a transaction that
read and then tries to write after another connection committed fails with "database
is locked" regardless of the busy timeout.  Taking the write lock at BEGIN serialises
writers cleanly, so our read-decide-write always sees the state it writes over.  The
pysqlite driver's own transaction handling is switched off so that SQLAlchemy's BEGIN
is the only one (the documented recipe).  A ``READ_ONLY`` transaction begins DEFERRED.

Durability: ``synchronous = FULL`` by default.  In WAL mode FULL syncs the WAL at every
commit, so a transaction whose commit returned survives a power loss or OS crash; under
NORMAL it may roll back, while the Kafka offset past it is already committed (the events
would be lost for good).  EXTRA adds nothing in WAL mode (it syncs the directory after a
rollback journal is deleted, and WAL deletes no journal).  NORMAL remains available as
``CONSUMERGEN_SQLITE_SYNCHRONOUS=normal-may-lose-commits-on-power-loss``: a value that
says what it risks, reported as a warning at start (``durability_risks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import ColumnElement, Table, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.dml import Insert

from service.config import env_name
from service.store.dialects import READ_ONLY, DurabilityRisk, update_by_executemany

if TYPE_CHECKING:
    from service.config import Settings

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

    def create_engine(self, settings: Settings) -> AsyncEngine:
        engine = create_async_engine(settings.database_url)
        busy_timeout_ms = int(settings.sqlite_busy_timeout_ms)
        synchronous = SYNCHRONOUS[settings.sqlite_synchronous]

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            # Hand transaction control to SQLAlchemy's "begin" event below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine

    def insert_ignoring_conflicts(self, table: Table, key: str) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])

    async def update_consumers(
        self, connection: AsyncConnection, rows: Sequence[Mapping[str, Any]]
    ) -> bool:
        # SQLite serialises writers and reports the executemany's total row count.
        return await update_by_executemany(connection, rows)

    def transient(self, error: BaseException) -> bool | None:
        """True for an ``OperationalError`` with a busy/locked/I-O message, else None."""
        if isinstance(error, sa_exc.OperationalError):
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


DIALECT: Final = SQLite()
