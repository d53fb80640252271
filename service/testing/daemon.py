"""A daemon under test: its topics, its settings (fast retries, any health port), a daemon
running as a task of the caller's loop, and the checks every daemon test makes against the
independent model.  No pytest here: the fixtures that build ``Topics`` live in the suite's
root conftest, and benchmarks or a user's own tests can use these without pytest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from service.config import Settings, load_settings
from service.daemon.app import Daemon
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.testing.database import inbox
from service.testing.kafka_io import committed_offsets, read_all
from service.testing.model import Model

#: Test and benchmark PostgreSQL servers run with fsync off (throwaway data, and speed):
#: their daemons accept that, which a production daemon refuses by default
#: (``service.store.durability``).  A test of the refusal overrides it.
NON_DURABLE_TEST_SERVER: Final[dict[str, Any]] = {"postgresql_allow_commit_loss_on_crash": True}


@dataclass
class Topics:
    """The three topics and the consumer group of one daemon under test."""

    events: str
    dlq: str
    outcomes: str
    group: str


def daemon_settings(bootstrap: str, database_url: str, topics: Topics, **extra: Any) -> Settings:
    """Settings of an in-process daemon on ``topics``: any free health port and short
    infrastructure retry waits, so that outage tests take seconds; a PostgreSQL run
    without fsync is accepted (test servers are throwaway: ``NON_DURABLE_TEST_SERVER``);
    ``extra`` overrides."""
    return load_settings(
        bootstrap_servers=bootstrap,
        database_url=database_url,
        topic=topics.events,
        dlq_topic=topics.dlq,
        outcomes_topic=topics.outcomes,
        group_id=topics.group,
        health_port=0,
        read_api_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.5,
        **{**NON_DURABLE_TEST_SERVER, **extra},
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
    settings by field name (``batch_max_events=50`` -> ``CONSUMERGEN_BATCH_MAX_EVENTS``);
    like ``daemon_settings`` it accepts a PostgreSQL test server without fsync."""
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
        "CONSUMERGEN_READ_API_PORT": "0",
        "CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH": "true",
    }
    env.update({f"CONSUMERGEN_{name.upper()}": str(value) for name, value in extra.items()})
    return env


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
