"""Migrations, the start-up schema check and `consumergen db` on both databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result
from sqlalchemy import text

from service.cli import cli
from service.store import (
    SchemaNotCurrentError,
    create_engine,
    ensure_schema_current,
    head_revision,
    upgrade,
)
from service.store.migrate import current_revision
from service.store.schema import metadata
from tests.apply.helpers import Db, settings_for


async def invoke(database_url: str, *args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop, as in production)."""
    env = {"CONSUMERGEN_DATABASE_URL": database_url}
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


async def test_unmigrated_database_is_refused_with_the_command_to_run(database_url: str) -> None:
    engine = create_engine(settings_for(database_url))
    try:
        with pytest.raises(SchemaNotCurrentError, match="consumergen db upgrade"):
            await ensure_schema_current(engine)
        assert await current_revision(engine) is None
        assert await upgrade(database_url) == head_revision()
        assert await ensure_schema_current(engine) == head_revision()
        # An older revision is "behind", still naming the command.
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'base0'"))
        with pytest.raises(SchemaNotCurrentError, match="does not know"):
            await ensure_schema_current(engine)
    finally:
        await engine.dispose()


async def test_migration_matches_the_table_definitions(db: Db) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(connection), metadata)

    async with db.engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_url: str) -> None:
    engine = create_engine(settings_for(sqlite_url, sqlite_busy_timeout_ms=1234))
    try:
        async with engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
            keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
            busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
        assert (mode, keys, busy) == ("wal", 1, 1234)
    finally:
        await engine.dispose()


async def test_cli_db_upgrade_is_idempotent_and_current_reports_it(database_url: str) -> None:
    before = await invoke(database_url, "db", "current")
    if database_url.startswith("sqlite"):  # no file yet: named, not created (exit 2)
        assert before.exit_code == 2 and "no SQLite database at" in before.output
    else:  # an empty database: not migrated yet
        assert before.exit_code == 1
    assert "consumergen db upgrade" in before.output
    for _ in range(2):
        done = await invoke(database_url, "db", "upgrade")
        assert done.exit_code == 0, done.output
        assert f"revision {head_revision()} (head)" in done.output
    after = await invoke(database_url, "db", "current")
    assert after.exit_code == 0 and head_revision() in after.output


async def test_console_db_upgrade_in_a_subprocess(database_url: str) -> None:
    env = {**os.environ, "CONSUMERGEN_DATABASE_URL": database_url}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout
    engine = create_engine(settings_for(database_url))
    try:
        assert await ensure_schema_current(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_cli_db_upgrade_on_an_unreachable_database_is_one_line(
    postgres_server_url: str,
) -> None:
    unreachable = postgres_server_url.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere"
    done = await invoke(unreachable, "db", "upgrade")
    assert done.exit_code == 1
    assert done.output.count("\n") == 1 and "consumergen db upgrade:" in done.output
