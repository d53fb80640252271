"""Schema migrations run from code: ``consumergen db upgrade`` and the start-up check.

Alembic runs on the service's own async engine through ``run_sync`` (Alembic's
documented connection-sharing recipe), with ``script_location`` pointing at the
migrations folder shipped inside the package, so an installed wheel migrates without
an ``alembic.ini`` or a checkout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings, load_settings
from service.store.engine import create_engine
from service.store.errors import SchemaNotCurrentError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
UPGRADE_COMMAND = "consumergen db upgrade"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration this code ships."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return str(heads[0])


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Reading the revision is not migrating: Alembic's INFO lines ("Context impl
    SQLiteImpl.", "Will assume non-transactional DDL.") belong to ``db upgrade`` only,
    not to every ``show``, ``verify`` and daemon start."""
    logger = logging.getLogger("alembic.runtime.migration")
    level = logger.level
    logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        logger.setLevel(level)


def _current(connection: Connection) -> str | None:
    with _quiet_alembic():
        heads = MigrationContext.configure(connection).get_current_heads()
    return str(heads[0]) if heads else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


def _upgrade(connection: Connection, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)


async def upgrade_engine(engine: AsyncEngine, target: str = "head") -> str | None:
    """Migrate the database behind ``engine``; idempotent.  Returns the new revision."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, target)
    return await current_revision(engine)


async def upgrade(settings_or_url: Settings | str, target: str = "head") -> str | None:
    """Migrate the database of ``settings_or_url`` (a Settings or a database URL)."""
    settings = (
        load_settings(database_url=settings_or_url)
        if isinstance(settings_or_url, str)
        else settings_or_url
    )
    engine = create_engine(settings)
    try:
        return await upgrade_engine(engine, target)
    finally:
        await engine.dispose()


async def ensure_schema_current(engine: AsyncEngine) -> str:
    """Raise ``SchemaNotCurrentError`` unless the database is at this code's head.

    The daemon calls this before consuming anything: running on an unmigrated or older
    schema would fail on the first event, after offsets and partitions are assigned,
    which is much harder to read than a refusal to start that names the fix.
    """
    head = head_revision()
    current = await current_revision(engine)
    if current == head:
        return head
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if current is None:
        state = "has no schema (it was never migrated)"
    elif current in known:
        state = f"is at schema revision {current}, older than this code's {head}"
    else:
        raise SchemaNotCurrentError(
            f"the database is at schema revision {current}, which this code does not know "
            f"(newest known: {head}); it was migrated by a newer release"
        )
    raise SchemaNotCurrentError(f"the database {state}: run `{UPGRADE_COMMAND}` first")
