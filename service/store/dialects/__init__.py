"""The dialect seam: everything the store does differently per database, behind one protocol.

A dialect is one module of this package that defines ``DIALECT``, an object with the
``Dialect`` protocol below; ``dialect_for(name)`` finds it by SQLAlchemy's backend name
(``engine.dialect.name``, or the part of the URL before ``+``).  Nothing outside this
package asks which database it talks to, so adding a database is one new module here
(plus its tests): no list to extend, and no "everything that is not PostgreSQL is
SQLite".  An unknown one is a ``ConfigurationError`` that names the setting.

What a dialect provides:

* ``create_engine(settings, read_only=False, create=True)``: the async engine with the
  settings correctness needs (SQLite's pragmas and BEGIN IMMEDIATE, PostgreSQL's pool),
  honouring ``READ_ONLY``; with ``read_only=True`` an engine that cannot write or create
  anything (the read-only commands: ``show``, ``verify``, dry runs), with
  ``create=False`` one that writes but creates no database (the daemon, ``replay``);
  both raise ``store.errors.DatabaseNotFound`` when there is no database;
* ``insert_ignoring_conflicts(table, key)``: ``INSERT .. ON CONFLICT (key) DO NOTHING``
  that can take ``RETURNING`` (the rare writes: owner rows);
* ``insert_new(connection, table, key, columns, rows)``: the same for a batch of plain
  tuples, in as few round trips as the driver allows, returning how many were inserted
  (the hot path's inserts: consumers and inbox rows);
* ``update_consumers(connection, rows, now)``: the batch's consumer compare-and-swaps
  from plain tuples (``CAS_COLUMNS`` names their values), True only if every row
  matched;
* ``transient(error)``: True/False for an error this database's driver raised and that
  the dialect recognises (SQLSTATEs, SQLite's messages), None for anything else;
* ``bytewise(column)``: the column ordered byte-wise (so two databases' streams merge);
* ``durability_risks(connection, settings)``: what, in this database's configuration,
  could lose a commit on a crash (``DurabilityRisk``; ``service.store.durability``
  warns about the accepted ones and refuses the others);
* ``group_writer(settings)``: for a single-writer store, the writer that runs the
  batches ready on several partitions as one transaction in one hand-off
  (``service.store.unit_of_work.GroupWriter``, ``service.apply.group``); None where
  concurrent transactions are the better way (PostgreSQL);
* ``unit_of_work(connection, owners)``: the apply path's unit of work on a connection
  inside its transaction (``service.store.unit_of_work.SqlUnitOfWork``, or a subclass
  whose statements take a faster way to the same database: PostgreSQL's
  ``service.store.postgresql_unit``); ``owners`` is the factory's owner-id cache;
* ``single_writer``: True when the database admits one writer at a time (the apply path
  then queues its writers fairly in-process instead of in the database's busy handler).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from sqlalchemy import ColumnElement, Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service.domain.errors import ConfigurationError
from service.store.schema import consumers

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.dml import Insert

    from service.config import Settings
    from service.store.owners import OwnerCache
    from service.store.unit_of_work import GroupWriter, SqlUnitOfWork

#: The setting that chooses the database (named in every error about it).
DATABASE_URL_VARIABLE: Final = "CONSUMERGEN_DATABASE_URL"

#: Execution option: this transaction only reads (SQLite then begins DEFERRED).
READ_ONLY: Final = "consumergen_read_only"

#: The values of one consumer compare-and-swap, in the order of its tuple: the row as
#: read (``b_``) and as written (``a_``); ``now`` is the same for every row of a batch.
#: Timestamps in the tuples (and ``now``) are bound already (``bind_timestamp``).
CAS_COLUMNS: Final = (
    "b_uuid",
    "b_generation",
    "b_last_event_id",
    "a_generation",
    "a_project_id",
    "a_user_id",
    "a_consumer_type_id",
    "a_last_event_id",
    "a_deleted_at",
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class DurabilityRisk:
    """One way a committed transaction could be lost on a crash: ``what`` says which
    database setting and what it risks; ``setting`` is the ``CONSUMERGEN_*`` variable
    under which an operator accepts it, and ``accepted`` whether they did (if not, the
    daemon refuses to start)."""

    what: str
    setting: str
    accepted: bool


# Not mutated: mutmut would add its mutants of the stubs' defaults to the class as
# attributes (``xǁDialectǁcreate_engine__mutmut_1``), which the runtime check below then
# asks every dialect for, so no store test could start (docs/mutation.md, store).
@runtime_checkable
class Dialect(Protocol):  # pragma: no mutate block
    """What the store needs to know of one database (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def drivers(self) -> frozenset[str]: ...

    @property
    def single_writer(self) -> bool: ...

    def create_engine(
        self, settings: Settings, *, read_only: bool = False, create: bool = True
    ) -> AsyncEngine: ...

    def insert_ignoring_conflicts(self, table: Table, key: str) -> Insert: ...

    async def insert_new(
        self,
        connection: AsyncConnection,
        table: Table,
        key: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> int: ...

    async def update_consumers(
        self, connection: AsyncConnection, rows: Sequence[tuple[Any, ...]], now: Any
    ) -> bool: ...

    def transient(self, error: BaseException) -> bool | None: ...

    def bytewise(self, column: ColumnElement[Any]) -> ColumnElement[Any]: ...

    async def durability_risks(
        self, connection: AsyncConnection, settings: Settings
    ) -> list[DurabilityRisk]: ...

    def group_writer(self, settings: Settings) -> GroupWriter | None: ...

    def unit_of_work(self, connection: AsyncConnection, owners: OwnerCache) -> SqlUnitOfWork: ...


@cache
def known() -> tuple[str, ...]:
    """Names of the dialect modules of this package (read once)."""
    names = (module.name for module in pkgutil.iter_modules(__path__))
    return tuple(sorted(name for name in names if not name.startswith("_")))


@cache
def dialect_for(name: str) -> Dialect:
    """The dialect of SQLAlchemy backend ``name``; ``ConfigurationError`` if none."""
    if not _NAME.fullmatch(name) or name not in known():
        raise ConfigurationError(
            f"{DATABASE_URL_VARIABLE}: no support for the {name!r} database"
            f" (supported: {', '.join(known())})"
        )
    dialect = getattr(importlib.import_module(f"{__name__}.{name}"), "DIALECT", None)
    if not isinstance(dialect, Dialect):  # pragma: no cover - a broken dialect module
        raise TypeError(f"{__name__}.{name} defines no DIALECT with the Dialect protocol")
    return dialect


def dialect_for_url(url: str) -> Dialect:
    """The dialect of a database URL, which must name one of its asyncio drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"{DATABASE_URL_VARIABLE}: not a database URL") from None
    dialect = dialect_for(parsed.get_backend_name())
    driver = parsed.get_driver_name()
    if driver not in dialect.drivers:
        speaks = ", ".join(f"{dialect.name}+{d}://" for d in sorted(dialect.drivers))
        raise ConfigurationError(
            f"{DATABASE_URL_VARIABLE}: the service speaks {dialect.name} through {speaks}"
            " only (asyncio drivers)"
        )
    return dialect


def transient(error: BaseException) -> bool | None:
    """The first verdict of the dialects, asked in name order; None if none knows it."""
    for name in known():
        verdict = dialect_for(name).transient(error)
        if verdict is not None:
            return verdict
    return None


def bind_timestamp(connection: AsyncConnection, moment: datetime | None) -> Any:
    """``moment`` as the driver takes it for a ``DateTime(timezone=True)`` column (SQLite:
    SQLAlchemy's text spelling; asyncpg: the datetime itself).  The hot path binds a
    batch's one timestamp once instead of once per row and column."""
    if moment is None:
        return None
    dialect = connection.dialect
    key = f"{dialect.name}+{dialect.driver}"
    if key not in _TIMESTAMP_BINDERS:  # the same for every engine of one driver
        impl = consumers.c.updated_at.type.dialect_impl(dialect)
        _TIMESTAMP_BINDERS[key] = impl.bind_processor(dialect)
    process = _TIMESTAMP_BINDERS[key]
    return moment if process is None else process(moment)


_TIMESTAMP_BINDERS: dict[str, Any] = {}


#: The compare-and-swap of one consumer row, for a driver's ``executemany`` with
#: SQLite's numbered parameters (``?N`` is the N-th value of ``CAS_COLUMNS``, then
#: ``now``): it matches the row as read, by generation and by the id of the event that
#: made it, so a row changed (or pruned and re-created) by anyone else in between
#: matches nothing.
CAS_UPDATE_NUMBERED: Final = (
    "UPDATE consumers SET generation = ?4, project_id = ?5, user_id = ?6,"
    " consumer_type_id = ?7, last_event_id = ?8, deleted_at = ?9, updated_at = ?10"
    " WHERE uuid = ?1 AND generation = ?2 AND last_event_id = ?3"
)


async def update_by_executemany(
    connection: AsyncConnection, rows: Sequence[tuple[Any, ...]], now: Any
) -> bool:
    """``CAS_UPDATE_NUMBERED`` over ``rows`` in one driver ``executemany`` (no per-row
    work in SQLAlchemy); every row hit when the row count says so.  For a driver whose
    ``executemany`` reports the total row count (SQLite's does)."""
    params = [(*row, now) for row in rows]
    result = await connection.exec_driver_sql(CAS_UPDATE_NUMBERED, params)
    return bool(result.rowcount == len(rows))
