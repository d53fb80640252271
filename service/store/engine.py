"""Creating the async engine: its dialect (``service.store.dialects``) sets it up.

Each dialect applies the per-database settings that correctness needs (SQLite: WAL, a
busy timeout, ``BEGIN IMMEDIATE`` for writers; PostgreSQL: a pre-pinged pool of
``database_pool_size``); a URL of a database no dialect knows is a
``ConfigurationError`` naming ``CONSUMERGEN_DATABASE_URL``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.config import Settings
from service.store.dialects import READ_ONLY, dialect_for_url


def create_engine(
    settings: Settings, *, read_only: bool = False, create: bool = True
) -> AsyncEngine:
    """The service's engine for ``settings.database_url``; ``read_only=True`` for the
    commands that only read (it creates nothing and cannot write), ``create=False`` for
    those that write into an existing database only (``DatabaseNotFound`` when there is
    none: a wrong SQLite path must not become a second, empty store)."""
    dialect = dialect_for_url(settings.database_url)
    return dialect.create_engine(settings, read_only=read_only, create=create)


def describe_database(url: str) -> str:
    """The database for a log line or a message: the URL with its password masked, and
    a SQLite file as its resolved path (which folder a relative path means is the
    first question when the data seems missing)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(not a database URL)"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = parsed.database or ""
        if not database.startswith("file:"):
            return f"{parsed.drivername}:///{Path(database).expanduser().resolve()}"
    return parsed.render_as_string(hide_password=True)


async def read_only(connection: AsyncConnection) -> AsyncConnection:
    """Mark ``connection`` (before its first statement) as a reader."""
    return await connection.execution_options(**{READ_ONLY: True})
