"""Fixtures for daemon tests: fresh topics and a daemon running inside the test's loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from service.config import Settings, load_settings
from service.daemon.runner import Daemon
from service.store.engine import create_engine
from service.store.migrate import upgrade


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
