"""kill -9 the daemon at random moments, restart it each time: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings
from service.testing.daemon_process import DaemonProcess
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import committed_offsets, produce_docs, wait_all_committed
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

CYCLES = 12


def _env(bootstrap: str, database_url: str, topics: Topics) -> dict[str, str]:
    return {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": bootstrap,
        "CONSUMERGEN_DATABASE_URL": database_url,
        "CONSUMERGEN_TOPIC": topics.events,
        "CONSUMERGEN_DLQ_TOPIC": topics.dlq,
        "CONSUMERGEN_OUTCOMES_TOPIC": topics.outcomes,
        "CONSUMERGEN_GROUP_ID": topics.group,
        # Static membership: a restarted daemon takes its old place without a rebalance.
        "CONSUMERGEN_GROUP_INSTANCE_ID": "crash-test-daemon",
        "CONSUMERGEN_BATCH_MAX_EVENTS": "50",
        "CONSUMERGEN_LOG_REDACTION_KEY": "crash-test",
        # The session's PostgreSQL runs without fsync; a kill -9 of the daemon is what
        # this test is about, and that loses nothing on it (docs/durability.md).
        "CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH": "true",
    }


async def test_kill_9_at_random_moments(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    rng = random.Random(20261123)
    stream = mixed_stream(consumers=80, events=6000, seed=11)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, database_url, topics))
    # Consecutive runs, so that each consumer's events keep their order across chunks.
    size = -(-len(stream) // CYCLES)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]

    daemon = DaemonProcess(_env(kafka_bootstrap, database_url, topics), tmp_path)
    kills = 0
    try:
        for chunk in chunks:
            await produce_docs(kafka_bootstrap, topics.events, chunk)
            daemon.start()
            await asyncio.to_thread(daemon.wait_ready, 60)
            before = sum(
                (await committed_offsets(kafka_bootstrap, topics.group, topics.events)).values()
            )
            await asyncio.sleep(rng.uniform(0.05, 1.5))  # the random moment of the crash
            daemon.kill(signal.SIGKILL)
            assert daemon.wait(10) == -signal.SIGKILL
            kills += 1
            after = sum(
                (await committed_offsets(kafka_bootstrap, topics.group, topics.events)).values()
            )
            assert after >= before
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=180)
        daemon.kill(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.tail()
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)

    assert kills >= 10
    assert await consumer_state(database_url) == model.state()
    recorded = await inbox(database_url)
    assert set(recorded) == set(model.outcomes)
    assert all(recorded[e][0] == model.outcomes[e].split(":")[0] for e in recorded)
