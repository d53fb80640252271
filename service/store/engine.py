"""Creating the async engine: its dialect (``service.store.dialects``) sets it up.

Each dialect applies the per-database settings that correctness needs (SQLite: WAL, a
busy timeout, ``BEGIN IMMEDIATE`` for writers; PostgreSQL: a pre-pinged pool of
``database_pool_size``); a URL of a database no dialect knows is a
``ConfigurationError`` naming ``CONSUMERGEN_DATABASE_URL``.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.config import Settings
from service.store.dialects import READ_ONLY, dialect_for_url


def create_engine(settings: Settings) -> AsyncEngine:
    """The service's engine for ``settings.database_url``."""
    return dialect_for_url(settings.database_url).create_engine(settings)


async def read_only(connection: AsyncConnection) -> AsyncConnection:
    """Mark ``connection`` (before its first statement) as a reader."""
    return await connection.execution_options(**{READ_ONLY: True})
