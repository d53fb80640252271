"""asyncpg straight on a SQLAlchemy connection: inside its transaction, with its rules.

The PostgreSQL hot path sends its statements to asyncpg itself (``postgresql_unit``,
``postgresql.insert_rows``/``update_rows``) on the connection SQLAlchemy's pool handed
out, inside the transaction SQLAlchemy holds.  Going around SQLAlchemy's execution
must not go around what that execution guarantees, so ``driver_connection`` hands out
a ``DriverConnection`` that keeps three of its rules:

* **The transaction is SQLAlchemy's.**  Its asyncpg adapter sends BEGIN lazily, before
  the first statement it runs itself; a statement sent to asyncpg before that would
  run outside any transaction and commit on its own.  So the BEGIN is the adapter's own
  (its isolation level and read-only flag), and SQLAlchemy still commits or rolls back.
  ``_transaction`` and ``_start_transaction`` are private members of SQLAlchemy's
  ``AsyncAdapt_asyncpg_connection`` (2.1): should they change, this raises (a bug,
  loudly); it never runs a statement outside the transaction.
* **A round trip cut short by an exit exception invalidates the connection**, as
  SQLAlchemy's execution does (``Connection._handle_dbapi_exception``: a cancelled or
  timed-out statement is a disconnect).  A batch's task is cancelled when its partition
  is revoked or the daemon stops; cancelled inside asyncpg's BEGIN, asyncpg keeps the
  half-started transaction as the connection's own while the adapter never recorded it,
  so nothing rolled it back, and on the pooled connection every later transaction
  became a savepoint inside it: "committed" batches whose rows nobody else ever saw,
  with their offsets committed (``tests/store/test_postgresql_unit.py``, and the
  several-daemons test that found it).  Invalidated, the pool closes it instead.
* **Errors are SQLAlchemy's.**  asyncpg's own errors reach the caller as SQLAlchemy's
  execution would hand them on: translated by the adapter (its DBAPI class, the
  SQLSTATE kept, the adapter told when the connection closed), then wrapped in
  ``sqlalchemy.exc.DBAPIError``'s matching subclass, so failure classes, log lines
  and their ``error_class`` do not depend on which path ran a statement
  (``tests/daemon/test_bug_stops.py`` pins a bug's class).  The parameters are left
  out of the error's text: they hold consumer UUIDs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")


def is_exit_exception(error: BaseException) -> bool:
    """What SQLAlchemy's execution treats as a disconnect when it interrupts a round
    trip: anything that is not an ``Exception`` (a cancellation), and a timeout."""
    return not isinstance(error, Exception) or isinstance(error, TimeoutError)


async def driver_connection(connection: AsyncConnection) -> DriverConnection:
    """The asyncpg connection under ``connection`` (from SQLAlchemy's pool), inside the
    transaction SQLAlchemy holds open on it, begun here when SQLAlchemy has not yet."""
    if not connection.in_transaction():
        await connection.begin()
    fairy = await connection.get_raw_connection()
    adapter: Any = fairy.dbapi_connection
    driver = DriverConnection(fairy.driver_connection, connection)
    if adapter._transaction is None:
        await driver.guarded(adapter._start_transaction)
    return driver


class DriverConnection:
    """An asyncpg connection whose round trips keep SQLAlchemy's rules (module
    docstring): an interrupted one invalidates the connection, an asyncpg error is
    raised as SQLAlchemy's.  Other attributes are asyncpg's own."""

    def __init__(self, raw: Any, connection: AsyncConnection) -> None:
        self._raw = raw
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    async def fetch(self, statement: str, *args: Any) -> Any:
        return await self.guarded(lambda: self._raw.fetch(statement, *args), statement, args)

    async def execute(self, statement: str, *args: Any) -> Any:
        return await self.guarded(lambda: self._raw.execute(statement, *args), statement, args)

    async def guarded(
        self,
        round_trip: Callable[[], Awaitable[T]],
        statement: str = "BEGIN",
        args: tuple[Any, ...] = (),
    ) -> T:
        """``round_trip()`` under the rules of the module docstring."""
        try:
            return await round_trip()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise await self._wrapped(statement, args, error) from error
        except BaseException as error:
            if is_exit_exception(error) and not self._connection.invalidated:
                await self._connection.invalidate(error)
            raise

    async def _wrapped(
        self, statement: str, args: tuple[Any, ...], error: Exception
    ) -> sa_exc.DBAPIError:
        dialect = self._connection.dialect
        dbapi: Any = dialect.loaded_dbapi
        adapter: Any = (await self._connection.get_raw_connection()).dbapi_connection
        try:
            adapter._handle_exception(error)  # raises the DBAPI-level translation
        except dbapi.Error as translated:
            wrapped: sa_exc.DBAPIError = sa_exc.DBAPIError.instance(
                statement, args, translated, dbapi.Error, hide_parameters=True, dialect=dialect
            )
            return wrapped
        raise AssertionError("SQLAlchemy's asyncpg adapter did not raise") from error
