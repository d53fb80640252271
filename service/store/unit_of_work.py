"""The unit of work: what the apply path does inside ONE transaction, as a protocol.

The applier (``service.apply.applier``) and the dry run depend on ``UnitOfWork`` and
``UnitOfWorkFactory`` only, never on SQLAlchemy: read the inbox rows and consumers of a
batch, write the consumers (compare-and-swap) and the inbox rows, and commit all of it
or nothing.  ``SqlUnitOfWorkFactory`` is the implementation over an ``AsyncEngine``;
its units are the dialect's (``Dialect.unit_of_work``): ``SqlUnitOfWork`` runs the
statements through SQLAlchemy, PostgreSQL's ``store.postgresql_unit.PostgresUnitOfWork``
sends them straight to asyncpg on the same pooled connection and transaction (SQLite's
fast way is its group writer, ``GroupWriter`` below).

What a transaction of the factory guarantees:

* it commits when the ``async with`` block ends normally and rolls back otherwise;
* an infrastructure failure (``is_transient``) surfaces as ``TransientDatabaseError``
  after the rollback; the service's own errors (a ``StoreRace``, say) and bugs pass
  through unchanged;
* on a database with one writer at a time (SQLite), the write transactions of one
  factory queue in-process (FIFO, woken the moment the writer commits) instead of in
  SQLite's busy handler, which sleeps in steps of up to 100 ms and is not fair:
  concurrent partitions of one process queued there for hundreds of milliseconds.
  Writers in other processes still meet the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.consumer import ConsumerState
from service.domain.errors import ConsumerGenError
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.rules import Write
from service.store import reads, writes
from service.store.dialects import dialect_for
from service.store.engine import read_only as mark_read_only
from service.store.errors import TransientDatabaseError, describe, is_transient
from service.store.owners import OwnerCache

T = TypeVar("T")


class UnitOfWork(Protocol):
    """The operations of one transaction of the apply path."""

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        """The inbox rows of ``event_ids`` (the fields the rules need)."""
        ...

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        """The consumer rows (tombstones included) of ``uuids``."""
        ...

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        """The consumer writes as compare-and-swaps; ``StoreRace`` if any missed."""
        ...

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        """Record outcomes; ``StoreRace`` if another transaction recorded one first."""
        ...


class UnitOfWorkFactory(Protocol):
    """Opens one ``UnitOfWork`` per transaction."""

    def begin(self, *, read_only: bool = False) -> AbstractAsyncContextManager[UnitOfWork]:
        """A transaction (see the module docstring); ``read_only`` ones write nothing."""
        ...


class GroupTransaction(Protocol):
    """One transaction shared by several batches (group commit, ``apply.group``)."""

    def part(self) -> AbstractContextManager[UnitOfWork]:
        """One batch's part (a savepoint): kept when the block ends normally, undone
        alone when it raises.  Its unit's methods complete without suspending: they run
        inside ``GroupWriter.run_group``'s function, on the writer's thread."""
        ...


class GroupWriter(Protocol):
    """A single-writer store's writer that runs a whole transaction in one hand-off."""

    async def run_group(self, work: Callable[[Any], T]) -> T:
        """Run ``work(group)`` (``group`` a ``GroupTransaction``) in one transaction:
        committed (one sync) when it returns, rolled back when it raises; a transient
        failure is ``TransientDatabaseError``."""
        ...

    async def close(self) -> None:
        """Release the writer's connection and thread (at the daemon's stop)."""
        ...


class SqlUnitOfWork:
    """A ``UnitOfWork`` on one connection inside its transaction."""

    def __init__(self, connection: AsyncConnection, owner_cache: OwnerCache) -> None:
        #: Public for tests that act on the transaction's own connection.
        self.connection = connection
        self._owner_cache = owner_cache

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        return await reads.load_inbox(self.connection, event_ids)

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        return await reads.load_consumers(self.connection, uuids)

    async def write_consumers(self, writes_: Sequence[Write], now: datetime) -> None:
        await writes.write_consumers(self.connection, writes_, now, self._owner_cache)

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        await writes.write_inbox(self.connection, rows, now)


class SqlUnitOfWorkFactory:
    """Units of work on ``engine``; the owner-id cache is shared by its transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._owner_cache = OwnerCache()
        self._dialect = dialect_for(engine.dialect.name)
        self._write_turn: asyncio.Lock | None = (
            asyncio.Lock() if self._dialect.single_writer else None
        )

    @property
    def write_turn(self) -> asyncio.Lock | None:
        """The in-process writers' queue (None: the database takes concurrent writers);
        a group writer on the same file takes its turn here too (``apply.group``)."""
        return self._write_turn

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[SqlUnitOfWork]:
        turn = self._write_turn if not read_only else None
        try:
            async with turn or contextlib.nullcontext(), self.engine.connect() as connection:
                if read_only:
                    connection = await mark_read_only(connection)
                async with connection.begin():
                    yield self._dialect.unit_of_work(connection, self._owner_cache)
        except ConsumerGenError:
            raise  # already classified (a race, an invalid event, a transient error)
        except Exception as exc:  # the driver's and SQLAlchemy's: classified right here
            if is_transient(exc):
                raise TransientDatabaseError(describe(exc)) from exc
            raise
