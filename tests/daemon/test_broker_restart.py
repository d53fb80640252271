"""The broker goes away mid-stream and comes back on the same port and data: the daemon
says it is not ready while it is gone, resumes by itself, loses nothing, doubles nothing
and dead-letters nothing."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.embedded.kafka import KafkaBroker
from service.store.migrate import upgrade
from service.testing.daemon import Topics, assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess, sample, total
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import committed_offsets, produce_docs, read_all, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]


async def create_topics(bootstrap: str) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"events-{suffix}", f"dlq-{suffix}", f"outcomes-{suffix}", f"group-{suffix}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.events, 4, 1),
                NewTopic(topics.dlq, 1, 1),
                NewTopic(topics.outcomes, 2, 1),
            ]
        )
        for _ in range(100):
            if {topics.events, topics.dlq, topics.outcomes} <= set(await admin.list_topics()):
                return topics
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    raise AssertionError("topics not visible after creation")


async def test_broker_restart_mid_stream(
    broker: KafkaBroker, sqlite_url: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await create_topics(bootstrap)
    stream = mixed_stream(consumers=100, events=8000, seed=41)
    model = expected_state(stream)
    await upgrade(daemon_settings(bootstrap, sqlite_url, topics))
    await produce_docs(bootstrap, topics.events, stream[:5000])
    daemon = DaemonProcess(
        process_env(bootstrap, sqlite_url, topics, batch_max_events=20, request_timeout_seconds=5),
        tmp_path,
    )
    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)

        async def working() -> bool:
            offsets = await committed_offsets(bootstrap, topics.group, topics.events)
            return sum(offsets.values()) > 0

        await poll(working, 60, "a first batch committed")
        began = time.monotonic()
        broker.stop()

        def broker_down() -> bool:
            body = daemon.readiness()
            return body is not None and not body["ready"] and not body["broker_ok"]

        await poll(broker_down, 30, "/readyz: not ready, broker_ok false")
        detected = time.monotonic() - began
        # The outage itself: the daemon stays alive and keeps saying it is not ready.
        while time.monotonic() - began < detected + 3:
            assert daemon.alive(), daemon.tail()
            assert broker_down(), daemon.readiness()
            await asyncio.sleep(0.25)
        down_for = time.monotonic() - began
        broker.start()
        restarted = time.monotonic()
        await poll(lambda: bool((daemon.readiness() or {}).get("ready")), 90, "ready again")
        resumed = time.monotonic() - restarted
        await produce_docs(bootstrap, topics.events, stream[5000:])
        await wait_all_committed(bootstrap, topics.group, topics.events, within=120)
        samples = daemon.metrics()
        assert sample(samples, "consumergen_infrastructure_failures_total", kind="broker") >= 1
        assert total(samples, "consumergen_dead_lettered_total") == 0
        daemon.kill(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
        assert await read_all(bootstrap, topics.dlq) == []
        print(
            f"\n[broker restart] not ready in {detected:.2f}s, down {down_for:.1f}s, "
            f"ready {resumed:.2f}s after the broker was back"
        )
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)
    assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)
