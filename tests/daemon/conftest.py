"""Fixtures for daemon tests: fresh topics and a daemon running inside the test's loop."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from service.config import Settings, load_settings
from service.daemon.app import Daemon
from service.store.engine import create_engine
from service.store.migrate import upgrade
from tests.support.database import inbox
from tests.support.kafka_io import committed_offsets, read_all
from tests.support.model import Model


@dataclass
class Topics:
    events: str
    dlq: str
    outcomes: str
    group: str


@pytest.fixture
async def topics(new_topic: Callable[..., Any]) -> Topics:
    events = await new_topic(partitions=4, prefix="events")
    dlq = await new_topic(partitions=1, prefix="dlq")
    outcomes = await new_topic(partitions=2, prefix="outcomes")
    return Topics(events, dlq, outcomes, group=f"group-{uuid.uuid4().hex[:8]}")


def daemon_settings(bootstrap: str, database_url: str, topics: Topics, **extra: Any) -> Settings:
    return load_settings(
        bootstrap_servers=bootstrap,
        database_url=database_url,
        topic=topics.events,
        dlq_topic=topics.dlq,
        outcomes_topic=topics.outcomes,
        group_id=topics.group,
        health_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.5,
        **extra,
    )


@asynccontextmanager
async def running_daemon(settings: Settings, health: bool = False) -> AsyncIterator[Daemon]:
    """A daemon as a task of this loop; stopped gracefully (and awaited) on exit."""
    await upgrade(settings)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine)
    task = asyncio.create_task(daemon.run(health=health))
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        await engine.dispose()


def process_env(
    bootstrap: str, database_url: str, topics: Topics, **extra: object
) -> dict[str, str]:
    """Environment of a ``python -m service run`` daemon on these topics; ``extra`` are
    settings by field name (``batch_max_events=50`` -> ``CONSUMERGEN_BATCH_MAX_EVENTS``)."""
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": bootstrap,
        "CONSUMERGEN_DATABASE_URL": database_url,
        "CONSUMERGEN_TOPIC": topics.events,
        "CONSUMERGEN_DLQ_TOPIC": topics.dlq,
        "CONSUMERGEN_OUTCOMES_TOPIC": topics.outcomes,
        "CONSUMERGEN_GROUP_ID": topics.group,
        "CONSUMERGEN_LOG_REDACTION_KEY": "daemon-tests",
        "CONSUMERGEN_INFRA_RETRY_WAIT_INITIAL_SECONDS": "0.05",
        "CONSUMERGEN_INFRA_RETRY_WAIT_MAX_SECONDS": "0.5",
        "CONSUMERGEN_PROBE_INTERVAL_SECONDS": "0.5",
    }
    env.update({f"CONSUMERGEN_{name.upper()}": str(value) for name, value in extra.items()})
    return env


async def poll(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float,
    what: str,
    every: float = 0.1,
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took, fails after ``within``."""
    began = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)


async def assert_committed_prefix_durable(
    bootstrap: str, topics: Topics, database_url: str
) -> dict[int, int]:
    """Every event below the group's committed offset has its outcome in the inbox:
    nothing was committed past an event whose outcome is not durable.  Returns the
    committed offsets."""
    committed = await committed_offsets(bootstrap, topics.group, topics.events)
    recorded = await inbox(database_url)
    missing = [
        (record.partition, record.offset)
        for record in await read_all(bootstrap, topics.events)
        if record.offset < committed.get(record.partition, 0)
        and json.loads(record.value)["event_id"] not in recorded
    ]
    assert not missing, f"committed past events with no recorded outcome: {missing[:5]}"
    return committed


def assert_matches_model(
    state: object, recorded: dict[str, tuple[str, str | None]], model: Model
) -> None:
    """Database state and inbox equal the independent model: nothing lost (every event
    has its outcome), nothing doubled (every generation is the model's)."""
    assert state == model.state()
    expected = {
        event_id: (outcome.split(":")[0], outcome.split(":")[1] if ":" in outcome else None)
        for event_id, outcome in model.outcomes.items()
    }
    assert recorded == expected


class DatabaseLock:
    """Another client holding the database so that the daemon's writes cannot proceed:
    SQLite ``BEGIN EXCLUSIVE`` (the daemon's BEGIN IMMEDIATE then fails with "database
    is locked" after its busy timeout), PostgreSQL ``LOCK TABLE processed_events`` (the
    daemon's batches block on it)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._sqlite: Any = None
        self._pg: Any = None
        self._pg_tx: Any = None

    async def acquire(self) -> None:
        if self.url.startswith("sqlite"):
            import sqlite3

            path = self.url.split(":///", 1)[1]

            def lock() -> Any:
                conn = sqlite3.connect(
                    path, timeout=30, isolation_level=None, check_same_thread=False
                )
                conn.execute("BEGIN EXCLUSIVE")
                return conn

            self._sqlite = await asyncio.to_thread(lock)
        else:
            import asyncpg

            self._pg = await asyncpg.connect(_plain(self.url))
            self._pg_tx = self._pg.transaction()
            await self._pg_tx.start()
            await self._pg.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")

    async def release(self) -> None:
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            await asyncio.to_thread(conn.execute, "ROLLBACK")
            await asyncio.to_thread(conn.close)
        if self._pg is not None:
            conn, self._pg = self._pg, None
            await self._pg_tx.rollback()
            await conn.close()

    async def waiters(self) -> int:
        """PostgreSQL only: sessions waiting on the lock (the daemon, blocked)."""
        import asyncpg

        conn = await asyncpg.connect(_plain(self.url))
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'processed_events'::regclass"
                )
            )
        finally:
            await conn.close()


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter appears on first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    """Sum of a sample over all its label sets."""
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)
