"""The database goes away mid-stream: the daemon pauses, says it is not ready, commits
nothing and dead-letters nothing; when the database is back it resumes by itself and
ends in the model's state."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path

import pytest

from service.embedded.postgres import PostgresCluster
from service.store.migrate import upgrade
from service.testing.daemon import Topics, assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess, sample, total
from service.testing.database import DatabaseLock, consumer_state, inbox
from service.testing.kafka_io import (
    committed_offsets,
    produce_docs,
    read_all,
    wait_all_committed,
)
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]


def _down(daemon: DaemonProcess) -> bool:
    body = daemon.readiness()
    return bool(body) and body is not None and not body["ready"] and not body["database_ok"]


def _no_commit_pending(daemon: DaemonProcess) -> bool:
    """Every batch still open is the one failing on the database in a paused partition
    (one each): no batch that got past the database still waits for its offset commit,
    so the committed offsets cannot move until the database is back.  (With the
    pipeline, a paused partition may still be finishing the batch before its failing
    one: two open batches, and its commit still to come.)"""
    samples = daemon.metrics()
    paused = sample(samples, "consumergen_paused_partitions")
    return paused > 0 and sample(samples, "consumergen_batches_in_progress") == paused


async def _ride_out_outage(
    daemon: DaemonProcess, bootstrap: str, topics: Topics, began: float, at_least: float
) -> None:
    """While the outage lasts (until ``at_least`` seconds after ``began``): the daemon
    stays alive and not ready, and commits nothing."""
    # A batch whose transaction committed just before the outage may still commit its
    # offset: wait until none is left, then the offsets must stay where they are.
    await poll(lambda: _no_commit_pending(daemon), 30, "no batch left waiting for its commit")
    frozen = await committed_offsets(bootstrap, topics.group, topics.events)
    while time.monotonic() - began < at_least:
        assert daemon.alive(), daemon.tail()
        body = daemon.readiness()
        assert body is not None and not body["ready"], body
        await asyncio.sleep(0.5)
    assert await committed_offsets(bootstrap, topics.group, topics.events) == frozen, (
        "offsets were committed while the database was down"
    )


async def _after_outage(
    daemon: DaemonProcess, bootstrap: str, topics: Topics, what: str
) -> tuple[float, dict]:
    resumed = await poll(lambda: bool((daemon.readiness() or {}).get("ready")), 60, "ready again")
    await wait_all_committed(bootstrap, topics.group, topics.events, within=120)
    samples = daemon.metrics()
    assert sample(samples, "consumergen_infrastructure_failures_total", kind="database") >= 1
    assert total(samples, "consumergen_dead_lettered_total") == 0
    assert sample(samples, "consumergen_paused_partitions") == 0
    events = daemon.log_events()
    assert any(
        e.get("event") == "partition paused: infrastructure failure, retrying with backoff"
        for e in events
    ), f"no partition was paused by the {what}"
    assert any(e.get("event") == "partition resumed" for e in events)
    daemon.kill(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
    return resumed, samples


async def test_postgresql_stopped_for_10_seconds(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Not under tmp_path: the server runs as an unprivileged user (when tests run as
    # root), which must reach its folder; the launcher hands it that folder.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-pg-outage-")))
    cluster.start()
    url = cluster.url()
    stream = mixed_stream(consumers=100, events=6000, seed=31)
    model = expected_state(stream)
    daemon = DaemonProcess(
        process_env(kafka_bootstrap, url, topics, batch_max_events=50, request_timeout_seconds=5),
        tmp_path,
    )
    try:
        await upgrade(daemon_settings(kafka_bootstrap, url, topics))
        await produce_docs(kafka_bootstrap, topics.events, stream[:3000])
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)

        async def working() -> bool:
            offsets = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
            return sum(offsets.values()) > 0

        await poll(working, 60, "a first batch committed")
        cluster.stop()
        began = time.monotonic()
        await produce_docs(kafka_bootstrap, topics.events, stream[3000:])
        await poll(lambda: _down(daemon), 30, "not ready, database_ok false")
        detected = time.monotonic() - began
        await _ride_out_outage(daemon, kafka_bootstrap, topics, began, at_least=10)
        cluster.start()
        resumed, _ = await _after_outage(daemon, kafka_bootstrap, topics, "PostgreSQL outage")
        print(
            f"\n[postgres outage] not ready in {detected:.2f}s, ready {resumed:.2f}s after restart"
        )
        assert await read_all(kafka_bootstrap, topics.dlq) == []
        assert_matches_model(await consumer_state(url), await inbox(url), model)
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)
        cluster.remove()


async def test_sqlite_file_locked(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics, tmp_path: Path
) -> None:
    stream = mixed_stream(consumers=100, events=4000, seed=32)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, sqlite_url, topics))
    daemon = DaemonProcess(
        process_env(
            kafka_bootstrap, sqlite_url, topics, batch_max_events=50, sqlite_busy_timeout_ms=100
        ),
        tmp_path,
    )
    lock = DatabaseLock(sqlite_url)
    try:
        await produce_docs(kafka_bootstrap, topics.events, stream[:2000])
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        await lock.acquire()
        began = time.monotonic()
        await produce_docs(kafka_bootstrap, topics.events, stream[2000:])

        def paused() -> bool:
            body = daemon.readiness()
            return _down(daemon) and bool(body and body["paused_partitions"])

        await poll(paused, 30, "partitions paused, database_ok false")
        detected = time.monotonic() - began
        await _ride_out_outage(daemon, kafka_bootstrap, topics, began, at_least=6)
        await lock.release()
        resumed, _ = await _after_outage(daemon, kafka_bootstrap, topics, "SQLite lock")
        print(f"\n[sqlite lock] not ready after {detected:.2f}s, ready {resumed:.2f}s after unlock")
    finally:
        await lock.release()
        daemon.stop()
        scan_daemon_logs(daemon)
    assert await read_all(kafka_bootstrap, topics.dlq) == []
    assert_matches_model(await consumer_state(sqlite_url), await inbox(sqlite_url), model)
