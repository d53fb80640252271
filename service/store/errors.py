"""Errors of the store, and the line between an infrastructure failure and a bug.

The daemon must pause (not dead-letter) when the database is unreachable, locked or
asks for a retry; it must crash loudly on anything else, because a constraint
violation or a syntax error is a bug that no amount of waiting fixes.  This module
draws that line in one place.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import exc as sa_exc

from service.domain.errors import ConfigurationError, InfrastructureUnavailable
from service.store import dialects


class TransientDatabaseError(InfrastructureUnavailable):
    """The database could not do the work now (connection lost, locked, serialization
    failure, deadlock, shutting down).  Nothing of the failing unit was committed; the
    caller should back off and try the same events again."""


class SchemaNotCurrentError(ConfigurationError, RuntimeError):
    """The database has not been migrated to the schema this code needs."""


class DatabaseNotFound(ConfigurationError):
    """A read-only command was pointed at a database that does not exist (a typo in the
    SQLite path, or run from another folder).  Nothing was created."""


def is_transient(error: BaseException) -> bool:
    """True when ``error`` is an infrastructure failure worth retrying later.

    What every driver shares is decided here; what only one database's errors say (a
    SQLSTATE, a SQLite message) its dialect decides (``service.store.dialects``).
    """
    if isinstance(error, TransientDatabaseError):
        return True
    if isinstance(error, (OSError, asyncio.TimeoutError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    verdict = dialects.transient(error)
    if verdict is not None:
        return verdict
    if isinstance(error, sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.OperationalError):
        return False  # the database refused the work and no dialect calls it passing
    cause = error.__cause__ or getattr(error, "orig", None)
    return isinstance(cause, (OSError, ConnectionError))


def describe(error: BaseException) -> str:
    """A one-line description of a driver error, without SQLAlchemy's appended SQL text
    and bound parameters (which may hold identifiers that logs must not carry)."""
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(inner).__name__}: {first}"[:300]
