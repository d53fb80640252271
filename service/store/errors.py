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


class TransientDatabaseError(InfrastructureUnavailable):
    """The database could not do the work now (connection lost, locked, serialization
    failure, deadlock, shutting down).  Nothing of the failing unit was committed; the
    caller should back off and try the same events again."""


class SchemaNotCurrentError(ConfigurationError, RuntimeError):
    """The database has not been migrated to the schema this code needs."""


#: SQLSTATE classes/codes that mean "try again later", not "your statement is wrong".
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57P", "58")
_TRANSIENT_SQLSTATES = frozenset({"55P03", "57014", "25P03"})

#: SQLite/driver messages of the same kind (SQLITE_BUSY, SQLITE_LOCKED, I/O trouble).
_TRANSIENT_SQLITE_TEXT = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "disk i/o error",
    "unable to open database file",
    "cannot operate on a closed database",
    "no active connection",
)


def _sqlstate(error: BaseException) -> str | None:
    for candidate in (error, getattr(error, "orig", None), getattr(error, "__cause__", None)):
        if candidate is None:
            continue
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, str) and value:
                return value
    return None


def is_transient(error: BaseException) -> bool:
    """True when ``error`` is an infrastructure failure worth retrying later."""
    if isinstance(error, TransientDatabaseError):
        return True
    if isinstance(error, (OSError, asyncio.TimeoutError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    state = _sqlstate(error)
    if state is not None:
        return state in _TRANSIENT_SQLSTATES or state.startswith(_TRANSIENT_SQLSTATE_CLASSES)
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        text = str(getattr(error, "orig", error)).lower()
        if isinstance(error, sa_exc.InterfaceError):
            return True
        return any(marker in text for marker in _TRANSIENT_SQLITE_TEXT)
    cause = error.__cause__ or getattr(error, "orig", None)
    if isinstance(cause, (OSError, ConnectionError)):
        return True
    name = type(error).__name__
    # asyncpg raises these outside SQLAlchemy's wrapping (e.g. while connecting).
    return name in {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "CannotConnectNowError",
        "ConnectionFailureError",
    }


def describe(error: BaseException) -> str:
    """A one-line description of a driver error, without SQLAlchemy's appended SQL text
    and bound parameters (which may hold identifiers that logs must not carry)."""
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(inner).__name__}: {first}"[:300]
