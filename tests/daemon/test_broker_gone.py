"""The broker is gone for a minute under load: the daemon stays near idle while it waits
(aiokafka alone would retry metadata without backoff, aio-libs/aiokafka#1155), resumes
by itself when the broker is back, and nothing is lost, doubled or dead-lettered."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path

import pytest

from service.embedded.kafka import KafkaBroker
from service.store.migrate import upgrade
from service.testing.daemon import assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess, total
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import committed_offsets, produce_docs, read_all, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.daemon.test_broker_restart import create_topics
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

#: How long the broker stays away (the issue asks for a minute).
OUTAGE_SECONDS = 60.0
#: CPU seconds per wall second the waiting daemon may use.  Measured over the minute
#: after /readyz said so: 0.003-0.004 with the clients parked at once (three runs on a
#: quiet machine), 0.042-0.088 while they were kept (aiokafka's clients looking for the
#: coordinator and metadata without backoff; docs/benchmarks.md, broker gone).  The
#: bound sits between the two: loose against noise, and the old spin fails it.
CPU_BOUND = 0.025


@pytest.mark.timeout(600)  # a minute of outage plus a broker restart on 2 shared cores
async def test_broker_gone_for_a_minute_costs_no_cpu_and_loses_nothing(
    broker: KafkaBroker, sqlite_url: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await create_topics(bootstrap)
    stream = mixed_stream(consumers=100, events=4000, seed=16)
    model = expected_state(stream)
    await upgrade(daemon_settings(bootstrap, sqlite_url, topics))
    await produce_docs(bootstrap, topics.events, stream[:3000])
    daemon = DaemonProcess(
        process_env(
            bootstrap,
            sqlite_url,
            topics,
            batch_max_events=20,
            request_timeout_seconds=5,
            # The production backoff cap, not the tests' short one: what is measured is
            # what an operator's daemon does during an outage.
            infra_retry_wait_max_seconds=5,
            probe_interval_seconds=2,
        ),
        tmp_path,
    )
    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)

        async def working() -> bool:
            offsets = await committed_offsets(bootstrap, topics.group, topics.events)
            return sum(offsets.values()) > 0

        await poll(working, 60, "a first batch committed")
        # A fresh broker: the group's first coordinator lookups fail ("not available")
        # while __consumer_offsets is created; that is routine, not an ERROR (issue 15).
        joining = itertools.takewhile(
            lambda event: event.get("event") != "partitions assigned", daemon.log_events()
        )
        assert [e for e in joining if e.get("level") in ("error", "critical")] == []
        broker.stop()

        def broker_down() -> bool:
            body = daemon.readiness()
            return body is not None and not body["ready"] and not body["broker_ok"]

        await poll(broker_down, 30, "/readyz: not ready, broker_ok false")
        # The minute itself, measured from the moment the daemon knows.
        cpu_before, began = daemon.cpu_seconds(), time.monotonic()
        while time.monotonic() - began < OUTAGE_SECONDS:
            assert daemon.alive(), daemon.tail()
            assert broker_down(), daemon.readiness()
            await asyncio.sleep(1)
        used = daemon.cpu_seconds() - cpu_before
        waited = time.monotonic() - began
        rate = used / waited
        print(f"\n[broker gone] {used:.2f} CPU s in {waited:.0f} s ({rate:.3f} CPU s/s)")
        assert rate < CPU_BOUND, f"{used:.2f} CPU s in {waited:.0f} s while the broker was gone"

        broker.start()
        restarted = time.monotonic()
        await poll(lambda: bool((daemon.readiness() or {}).get("ready")), 120, "ready again")
        print(f"[broker gone] ready {time.monotonic() - restarted:.1f} s after the broker was back")
        await produce_docs(bootstrap, topics.events, stream[3000:])
        await wait_all_committed(bootstrap, topics.group, topics.events, within=120)
        assert total(daemon.metrics(), "consumergen_dead_lettered_total") == 0
        daemon.kill(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
        assert await read_all(bootstrap, topics.dlq) == []
        # Parking abandons the producer's writes in flight: that must leave no asyncio
        # ERROR behind (a failed callback, a future whose exception nobody retrieved).
        loop_errors = [
            e
            for e in daemon.log_events()
            if e.get("logger") == "asyncio" and e.get("level") == "error"
        ]
        assert loop_errors == [], loop_errors
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)
    assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)
