"""Group commit on SQLite under kill -9: a flood over six partitions, the daemon killed at
random moments and restarted, and the database ends as the independent model says.

The whole stream is on the topic before the first start, so every partition has a
backlog and the batches of several partitions share transactions
(``service.apply.group``; ``consumergen_group_commit_batches`` shows it); each kill lands
in the middle of that: nothing lost, nothing doubled, every outcome what one-at-a-time
processing gives.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from pathlib import Path

import pytest

from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings
from service.testing.daemon_process import DaemonProcess, sample
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, wait_all_committed
from service.testing.workload import expected_state, mixed_stream
from tests.conftest import TopicFactory
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

KILLS = 5


def _shared_batches(daemon: DaemonProcess) -> float:
    """Batches that went into a transaction together with another partition's batch."""
    samples = daemon.metrics()
    batches = sample(samples, "consumergen_group_commit_batches_sum")
    transactions = sample(samples, "consumergen_group_commit_batches_count")
    return batches - transactions


async def test_group_commit_survives_kill_9_under_a_flood(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topics = Topics(
        events=await new_topic(partitions=6, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=3, prefix="outcomes"),
        group=f"group-commit-{uuid.uuid4().hex[:8]}",
    )
    rng = random.Random(20261207)
    stream = mixed_stream(consumers=150, events=5000, seed=22)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, sqlite_url, topics))
    await produce_docs(kafka_bootstrap, topics.events, stream)  # the flood, before any start
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CONSUMERGEN_DATABASE_URL": sqlite_url,
        "CONSUMERGEN_TOPIC": topics.events,
        "CONSUMERGEN_DLQ_TOPIC": topics.dlq,
        "CONSUMERGEN_OUTCOMES_TOPIC": topics.outcomes,
        "CONSUMERGEN_GROUP_ID": topics.group,
        "CONSUMERGEN_GROUP_INSTANCE_ID": "group-commit-crash-daemon",
        "CONSUMERGEN_BATCH_MAX_EVENTS": "40",
        "CONSUMERGEN_LOG_REDACTION_KEY": "group-commit-crash",
    }
    daemon = DaemonProcess(env, tmp_path)
    shared = 0.0
    try:
        for _ in range(KILLS):
            daemon.start()
            await asyncio.to_thread(daemon.wait_ready, 60)
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # the random moment of the crash
            shared = max(shared, await asyncio.to_thread(_shared_batches, daemon))
            daemon.kill(signal.SIGKILL)
            assert daemon.wait(10) == -signal.SIGKILL
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=180)
        shared = max(shared, await asyncio.to_thread(_shared_batches, daemon))
        daemon.kill(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.tail()
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)

    assert shared > 0, "no transaction carried the batches of two partitions"
    assert await consumer_state(sqlite_url) == model.state()
    recorded = await inbox(sqlite_url)
    assert recorded == {
        event_id: (result.split(":")[0], result.split(":")[1] if ":" in result else None)
        for event_id, result in model.outcomes.items()
    }
