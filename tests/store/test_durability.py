"""DESIGN, Durability: "the database commit that precedes an offset commit must survive
power loss" with the default settings; weaker settings only under names that say what
they risk.  Checked on real SQLite files and real PostgreSQL servers (the session's,
which runs without fsync, and one started durable for the purpose)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.embedded.postgres import PostgresCluster, create_database
from service.store.durability import NotDurableError, check_durability
from service.store.engine import create_engine
from service.store.migrate import upgrade
from tests.apply.helpers import settings_for

ALLOW = "CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH"
RISKY_SQLITE = "normal-may-lose-commits-on-power-loss"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The durability check's warnings (structlog hands the formatter its event dict)."""
    return [
        dict(record.msg)
        for record in caplog.records
        if record.name == "service.store.durability" and record.levelno == logging.WARNING
    ]


async def synchronous_pragma(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("PRAGMA synchronous"))).scalar_one())


@pytest.fixture
async def engines() -> AsyncIterator[list[AsyncEngine]]:
    """Engines a test opens; disposed at the end."""
    opened: list[AsyncEngine] = []
    yield opened
    for engine in opened:
        await engine.dispose()


def open_engine(opened: list[AsyncEngine], settings: Settings) -> AsyncEngine:
    engine = create_engine(settings)
    opened.append(engine)
    return engine


async def test_sqlite_commit_survives_power_loss_by_default(
    sqlite_url: str, engines: list[AsyncEngine]
) -> None:
    engine = open_engine(engines, settings_for(sqlite_url))
    assert await synchronous_pragma(engine) == 2  # FULL: the WAL is synced at every commit
    async with engine.connect() as connection:
        mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
    assert mode == "wal"
    assert await check_durability(engine, settings_for(sqlite_url)) == []


async def test_sqlite_faster_mode_only_under_a_name_that_says_what_it_risks(
    sqlite_url: str, engines: list[AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(sqlite_url, sqlite_synchronous=RISKY_SQLITE)
    engine = open_engine(engines, settings)
    assert await synchronous_pragma(engine) == 1  # NORMAL
    caplog.set_level(logging.WARNING, "service.store.durability")
    risks = await check_durability(engine, settings)
    assert [(risk.setting, risk.accepted) for risk in risks] == [
        ("CONSUMERGEN_SQLITE_SYNCHRONOUS", True)
    ]
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "power loss" in warnings[0]["risk"]
    assert warnings[0]["accepted_by"] == "CONSUMERGEN_SQLITE_SYNCHRONOUS"


def test_sqlite_plain_normal_is_not_a_value() -> None:
    """``normal`` alone would not say what it risks: refused, naming the setting."""
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="CONSUMERGEN_SQLITE_SYNCHRONOUS"):
        load_settings(sqlite_synchronous="normal")


@pytest.mark.postgres
async def test_postgresql_without_fsync_is_refused_naming_the_settings(
    postgres_url: str, engines: list[AsyncEngine]
) -> None:
    """The session's server runs with fsync, synchronous_commit and full_page_writes off."""
    engine = open_engine(engines, settings_for(postgres_url))
    with pytest.raises(NotDurableError) as refused:
        await check_durability(engine, settings_for(postgres_url))
    message = str(refused.value)
    for name in ("fsync=off", "synchronous_commit=off", "full_page_writes=off", ALLOW):
        assert name in message


@pytest.mark.postgres
async def test_postgresql_without_fsync_accepted_by_the_setting_warns(
    postgres_url: str, engines: list[AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(postgres_url, postgresql_allow_commit_loss_on_crash=True)
    engine = open_engine(engines, settings)
    caplog.set_level(logging.WARNING, "service.store.durability")
    risks = await check_durability(engine, settings)
    assert {risk.what.split(":")[0] for risk in risks} == {
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
    }
    assert all(risk.accepted and risk.setting == ALLOW for risk in risks)
    assert [entry["accepted_by"] for entry in warnings_of(caplog)] == [ALLOW] * 3


@pytest.mark.postgres
async def test_postgresql_durable_server_passes(engines: list[AsyncEngine]) -> None:
    # A folder the server's own account can reach (pytest's tmp_path is private to us).
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-pg-")), durable=True)
    await asyncio.to_thread(cluster.start)
    try:
        url = await create_database(cluster.url(), prefix="durable")
        engine = open_engine(engines, settings_for(url))
        assert await check_durability(engine, settings_for(url)) == []
        # Per-session settings count too: a role that turns synchronous_commit off is seen.
        async with engine.connect() as connection:
            await connection.execute(text("ALTER ROLE CURRENT_USER SET synchronous_commit = off"))
            await connection.commit()
        await engine.dispose()  # the new value applies to new sessions
        with pytest.raises(NotDurableError, match="synchronous_commit=off"):
            await check_durability(engine, settings_for(url))
    finally:
        for engine in engines:
            await engine.dispose()
        await asyncio.to_thread(cluster.remove)


@pytest.mark.postgres
async def test_run_refuses_a_server_without_fsync_in_one_line(postgres_url: str) -> None:
    """`consumergen run` stops before it touches the broker: one line, exit 2."""
    await upgrade(settings_for(postgres_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    env.update(
        CONSUMERGEN_DATABASE_URL=postgres_url,
        CONSUMERGEN_BOOTSTRAP_SERVERS="127.0.0.1:9",
        CONSUMERGEN_HEALTH_PORT="0",
        CONSUMERGEN_READ_API_PORT="0",  # never a fixed port (8001 may be taken)
        CONSUMERGEN_LOG_FORMAT="json",
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("consumergen run:")]
    assert len(errors) == 1, done.stderr
    assert "fsync=off" in errors[0] and ALLOW in errors[0]


SAFE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@pytest.mark.parametrize(
    ("changed", "voided"),
    [
        ({}, []),
        ({"synchronous_commit": "local"}, []),
        ({"synchronous_commit": "remote_write"}, []),
        ({"synchronous_commit": "remote_apply"}, []),
        ({"fsync": "OFF"}, ["fsync"]),
        ({"synchronous_commit": "off"}, ["synchronous_commit"]),
        ({"full_page_writes": "off"}, ["full_page_writes"]),
    ],
)
def test_postgresql_settings_that_void_the_guarantee(
    changed: dict[str, str], voided: list[str]
) -> None:
    from service.store.dialects.postgresql import durability_problems

    shown = {**SAFE, **changed}
    assert [line.split("=")[0] for line in durability_problems(shown)] == voided
