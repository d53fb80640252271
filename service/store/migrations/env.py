"""Alembic environment: runs on a connection handed in by ``service.store.migrate``.

The service calls Alembic programmatically on its own async engine (through
``run_sync``), so the usual ``fileConfig`` logging set-up is deliberately absent: it
would replace the service's structlog configuration and its UUID redaction.  When run
by the ``alembic`` command line with ``-x url=...`` instead, an async engine is created
here with the documented asyncio recipe.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: pass -x url=sqlite+aiosqlite:///... to alembic")
    asyncio.run(_run_with_url(url))


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; use `consumergen db upgrade`")
run_migrations_online()
