"""PostgreSQL (asyncpg): READ COMMITTED, a pool with pre-ping, one-statement batch CAS.

The pool has ``database_pool_size`` connections and no overflow; pre-ping makes a
server restart cost one failed checkout, not a crash.  Errors are classified by their
SQLSTATE, which asyncpg puts on every server error, wrapped by SQLAlchemy or not.

The batch writes (``insert_rows``, ``update_rows``: the compare-and-swap) are asyncpg
statements whose rows travel as one JSON array (``rows_select``: why not one array per
column), one text per table whatever the batch size, run on the
driver's connection inside SQLAlchemy's transaction, under its rules
(``service.store.asyncpg_driver``); the apply
path's unit of work sends its reads the same way (``service.store.postgresql_unit``).

Durability is the server's: ``durability_risks`` reads ``fsync``, ``synchronous_commit``
and ``full_page_writes`` (what this session would run with) and names each that voids
"a commit that returned survives a crash"; the daemon refuses such a server unless
``CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH`` accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import Column, ColumnElement, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from service.config import env_name
from service.store.asyncpg_driver import driver_connection
from service.store.dialects import CAS_COLUMNS, DurabilityRisk

if TYPE_CHECKING:
    from service.config import Settings
    from service.store.owners import OwnerCache
    from service.store.unit_of_work import GroupWriter, SqlUnitOfWork

#: SQLSTATE classes/codes that mean "try again later", not "your statement is wrong":
#: connection (08), transaction rollback (40: serialization failure, deadlock),
#: insufficient resources (53), operator intervention (57P: shutting down), system (58);
#: lock not available, query cancelled (statement timeout), idle-in-transaction timeout.
TRANSIENT_SQLSTATE_CLASSES: Final = ("08", "40", "53", "57P", "58")
TRANSIENT_SQLSTATES: Final = frozenset({"55P03", "57014", "25P03"})

#: asyncpg raises these outside SQLAlchemy's wrapping (e.g. while connecting).
TRANSIENT_DRIVER_ERRORS: Final = frozenset(
    {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "CannotConnectNowError",
        "ConnectionFailureError",
    }
)


#: The server settings that decide whether a returned commit survives a crash, and what
#: each one's unsafe value costs.  ``synchronous_commit`` is safe at ``local``, ``on``,
#: ``remote_write`` and ``remote_apply`` (all flush the local WAL before returning).
DURABILITY_SETTINGS: Final = ("fsync", "synchronous_commit", "full_page_writes")
_UNSAFE: Final = {
    ("fsync", "off"): "fsync=off: an OS crash or power loss may lose committed "
    "transactions or corrupt the database",
    ("synchronous_commit", "off"): "synchronous_commit=off: a server crash may lose the "
    "last committed transactions (up to three times wal_writer_delay)",
    ("full_page_writes", "off"): "full_page_writes=off: a power loss may leave torn pages "
    "that crash recovery cannot repair",
}


def durability_problems(shown: Mapping[str, str]) -> list[str]:
    """What the ``SHOW`` values of ``DURABILITY_SETTINGS`` void, one line each (pure)."""
    return [
        problem
        for (name, unsafe), problem in _UNSAFE.items()
        if shown.get(name, "").strip().lower() == unsafe
    ]


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a server error (on the error, the driver's, or its cause)."""
    for candidate in (error, getattr(error, "orig", None), getattr(error, "__cause__", None)):
        if candidate is None:
            continue
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, str) and value:
                return value
    return None


def rows_select(fields: Sequence[tuple[str, str]]) -> str:
    """``SELECT (r->>0)::TYPE AS name, .. FROM jsonb_array_elements($1::jsonb) AS r``:
    a batch's rows, sent as one JSON array of row arrays (``json_rows``), as a relation.

    Why JSON and not one array per column (``unnest($1::VARCHAR[], ..)``): asyncpg
    encodes an array parameter element by element at about 0.6 µs each (100 rows of 12
    columns: 840 µs of CPU against 110 µs for the same rows through orjson, in one
    statement on the same server), which made the inbox insert and the CAS the largest
    share of a PostgreSQL batch's CPU.  ``fields`` are (name, SQL type) pairs from the
    schema's ``Table`` objects, never data."""
    columns = ", ".join(f"(r->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(fields))
    return f"SELECT {columns} FROM jsonb_array_elements($1::jsonb) AS r"  # noqa: S608


def json_rows(rows: Sequence[tuple[Any, ...]]) -> str:
    """The rows as one JSON array of arrays (``rows_select``'s parameter): strings,
    integers, None as null, timestamps as RFC 3339 with their offset (a naive one as
    UTC, as asyncpg binds it)."""
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


#: Every CAS update of a batch in one statement: the rows as read (uuid, generation,
#: last_event_id) and their new values travel as one JSON array ($1: ``CAS_COLUMNS``
#: order; $2 is ``now``), the rows are locked in UUID order first (so that concurrent
#: batches cannot deadlock on each other), and RETURNING names the rows that matched.
#: Under READ COMMITTED a row changed by a concurrent commit is re-checked against the
#: WHERE clause on its newest version, so a lost race is a missing row in RETURNING,
#: never an overwrite.  One text whatever the batch size: asyncpg prepares it once per
#: connection.
_CAS_TYPES: Final = ("VARCHAR", "BIGINT", "VARCHAR", "BIGINT", "INTEGER", "INTEGER", "INTEGER")
CAS_UPDATE: Final = (  # every name is the schema's, every value a parameter
    "WITH v AS ("  # noqa: S608
    + rows_select(tuple(zip(CAS_COLUMNS, (*_CAS_TYPES, "VARCHAR", "TIMESTAMPTZ"), strict=True)))
    + """
), locked AS (
    SELECT c.id FROM consumers AS c JOIN v ON c.uuid = v.b_uuid
    ORDER BY c.uuid FOR UPDATE OF c
)
UPDATE consumers AS c
SET generation = v.a_generation, project_id = v.a_project_id, user_id = v.a_user_id,
    consumer_type_id = v.a_consumer_type_id, last_event_id = v.a_last_event_id,
    updated_at = $2::TIMESTAMPTZ, deleted_at = v.a_deleted_at
FROM v
WHERE c.uuid = v.b_uuid AND c.generation = v.b_generation
  AND c.last_event_id = v.b_last_event_id AND c.id IN (SELECT id FROM locked)
RETURNING c.uuid
"""
)


async def insert_rows(
    driver: Any, table: Table, key: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> int:
    """Insert-if-absent ``rows`` (tuples in ``columns`` order) on an asyncpg connection,
    in one statement (the rows as one JSON array, ``rows_select``); how many it inserted."""
    if not rows:
        return 0
    statement = insert_statement(table, key, tuple(columns))
    status: str = await driver.execute(statement, json_rows(rows))
    return int(status.rpartition(" ")[2])  # "INSERT 0 <count>"


async def update_rows(driver: Any, rows: Sequence[tuple[Any, ...]], now: Any) -> bool:
    """``CAS_UPDATE`` over ``rows`` (tuples in ``CAS_COLUMNS`` order) on an asyncpg
    connection; True only if every row hit."""
    if not rows:
        return True
    hit = await driver.fetch(CAS_UPDATE, json_rows(rows), now)
    return len(hit) == len(rows) and {record[0] for record in hit} == {row[0] for row in rows}


class PostgreSQL:
    name = "postgresql"
    drivers = frozenset({"asyncpg"})
    single_writer = False

    def create_engine(
        self, settings: Settings, *, read_only: bool = False, create: bool = True
    ) -> AsyncEngine:
        """``create`` is SQLite's concern: a PostgreSQL database is never created here."""
        # A reader's sessions refuse writes server-side: a read-only command cannot
        # change the database whatever code path it takes.
        server_settings = {"default_transaction_read_only": "on"} if read_only else {}
        return create_async_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=0,
            pool_pre_ping=True,
            connect_args={"server_settings": server_settings} if server_settings else {},
        )

    def insert_ignoring_conflicts(self, table: Table, key: str) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])

    async def insert_new(
        self,
        connection: AsyncConnection,
        table: Table,
        key: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> int:
        """One statement for the batch, on the driver's connection (``insert_rows``)."""
        return await insert_rows(await driver_connection(connection), table, key, columns, rows)

    async def update_consumers(
        self, connection: AsyncConnection, rows: Sequence[tuple[Any, ...]], now: Any
    ) -> bool:
        """The batch's CAS updates in one round trip (``update_rows``); True only if
        every one hit."""
        return await update_rows(await driver_connection(connection), rows, now)

    def unit_of_work(self, connection: AsyncConnection, owners: OwnerCache) -> SqlUnitOfWork:
        """The apply path's statements straight on asyncpg (``store.postgresql_unit``)."""
        from service.store.postgresql_unit import PostgresUnitOfWork  # it imports this module

        return PostgresUnitOfWork(connection, owners)

    def group_writer(self, settings: Settings) -> GroupWriter | None:
        """None: concurrent transactions on the pool's connections are PostgreSQL's way."""
        return None

    def transient(self, error: BaseException) -> bool | None:
        """By SQLSTATE when the error has one (the verdict is final either way); True
        for asyncpg's connection errors that carry none; None otherwise."""
        state = sqlstate(error)
        if state is not None:
            return state in TRANSIENT_SQLSTATES or state.startswith(TRANSIENT_SQLSTATE_CLASSES)
        if type(error).__name__ in TRANSIENT_DRIVER_ERRORS:
            return True
        return None

    def bytewise(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        # The database's default collation may order differently from Python's str.
        return column.collate("C")

    async def durability_risks(
        self, connection: AsyncConnection, settings: Settings
    ) -> list[DurabilityRisk]:
        shown = {
            name: str((await connection.exec_driver_sql(f"SHOW {name}")).scalar())
            for name in DURABILITY_SETTINGS
        }
        setting = env_name("postgresql_allow_commit_loss_on_crash")
        accepted = settings.postgresql_allow_commit_loss_on_crash
        return [
            DurabilityRisk(problem, setting, accepted) for problem in durability_problems(shown)
        ]


#: The SQL type of each column type the hot path inserts.
_SQL_TYPES: Final = {
    "string": "VARCHAR",
    "big_integer": "BIGINT",
    "integer": "INTEGER",
    "datetime": "TIMESTAMPTZ",
}


@cache
def insert_statement(table: Table, key: str, columns: tuple[str, ...]) -> str:
    """``INSERT .. SELECT .. FROM jsonb_array_elements($1) ON CONFLICT (key) DO NOTHING``,
    one text per table whatever the number of rows.  Names come from the schema's
    ``Table`` objects, never from data."""
    fields = [(name, sql_type(table.c[name])) for name in columns]
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) {rows_select(fields)}"
        f" ON CONFLICT ({key}) DO NOTHING"
    )


def sql_type(column: Column[Any]) -> str:
    """The SQL type a JSON field is cast to for ``column``."""
    return _SQL_TYPES[column.type.__visit_name__]


DIALECT: Final = PostgreSQL()
