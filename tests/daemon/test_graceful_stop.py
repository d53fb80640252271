"""SIGTERM under load: the daemon stops within its grace period, having committed only
what is durable; a second signal exits at once; either way a restart loses nothing and
doubles nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from service.store.migrate import upgrade
from service.testing.daemon import (
    Topics,
    assert_committed_prefix_durable,
    assert_matches_model,
    daemon_settings,
    process_env,
)
from service.testing.daemon_process import DaemonProcess
from service.testing.database import DatabaseLock, consumer_state, inbox
from service.testing.kafka_io import (
    committed_offsets,
    end_offsets,
    produce_docs,
    wait_all_committed,
)
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

GRACE = 10.0


async def _committed_total(bootstrap: str, topics: Topics) -> int:
    return sum((await committed_offsets(bootstrap, topics.group, topics.events)).values())


async def _finish(daemon: DaemonProcess, bootstrap: str, topics: Topics) -> None:
    """Restart, let it catch up, stop it cleanly."""
    daemon.start()
    await asyncio.to_thread(daemon.wait_ready, 60)
    await wait_all_committed(bootstrap, topics.group, topics.events, within=120)
    daemon.kill(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()


async def test_sigterm_under_load_exits_0_within_grace(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    stream = mixed_stream(consumers=200, events=20000, seed=21)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, database_url, topics))
    await produce_docs(kafka_bootstrap, topics.events, stream)
    total = sum((await end_offsets(kafka_bootstrap, topics.events)).values())
    env = process_env(
        kafka_bootstrap,
        database_url,
        topics,
        batch_max_events=100,
        shutdown_grace_seconds=GRACE,
        group_instance_id="graceful",
    )
    daemon = DaemonProcess(env, tmp_path)
    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)

        async def working() -> bool:
            return await _committed_total(kafka_bootstrap, topics) > 0

        await poll(working, 60, "a first batch committed")
        daemon.kill(signal.SIGTERM)
        began = time.monotonic()
        code = await asyncio.to_thread(daemon.wait, GRACE + 10)
        took = time.monotonic() - began
        assert code == 0, daemon.tail()
        assert took < GRACE, f"graceful stop took {took:.1f}s, grace is {GRACE}s"
        committed = await assert_committed_prefix_durable(kafka_bootstrap, topics, database_url)
        assert 0 < sum(committed.values()) < total, "the stop must land mid-backlog"
        events = [str(e.get("event")) for e in daemon.log_events()]
        assert "daemon stopped" in events
        assert "batch abandoned at stop" not in events
        print(f"\n[graceful] SIGTERM to exit 0 in {took:.2f}s, {sum(committed.values())}/{total}")

        await _finish(daemon, kafka_bootstrap, topics)
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)

    assert_matches_model(await consumer_state(database_url), await inbox(database_url), model)


async def test_stuck_batch_abandoned_after_grace_and_second_signal_exits_at_once(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    """The database is held by another client, so the in-flight batch cannot finish.
    One SIGTERM: the batch is abandoned after the grace, exit 0.  Two: exit at once,
    non-zero.  Neither commits the stuck batch; a restart applies it exactly once."""
    stream = mixed_stream(consumers=60, events=3000, seed=22)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, database_url, topics))
    await produce_docs(kafka_bootstrap, topics.events, stream[:1000])
    env = process_env(
        kafka_bootstrap,
        database_url,
        topics,
        batch_max_events=50,
        shutdown_grace_seconds=2,
        group_instance_id="stuck",
        sqlite_busy_timeout_ms=100,
    )
    daemon = DaemonProcess(env, tmp_path)
    lock = DatabaseLock(database_url)

    async def stuck() -> bool:
        if database_url.startswith("sqlite"):
            body = daemon.readiness()
            return bool(body and body.get("paused_partitions"))
        return await lock.waiters() > 0

    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        await lock.acquire()
        await produce_docs(kafka_bootstrap, topics.events, stream[1000:2000])
        await poll(stuck, 30, "the daemon blocked on the held database")

        # One signal, batch stuck: abandoned after the 2 s grace, clean exit.
        daemon.kill(signal.SIGTERM)
        began = time.monotonic()
        assert await asyncio.to_thread(daemon.wait, 20) == 0, daemon.tail()
        took = time.monotonic() - began
        assert 2 <= took < 10, f"stop took {took:.1f}s with a 2 s grace"
        assert "batch abandoned at stop" in [str(e.get("event")) for e in daemon.log_events()]

        # Two signals: the first starts a graceful stop (30 s grace, batch stuck), the
        # second ends the process at once.
        await lock.release()
        daemon.env["CONSUMERGEN_SHUTDOWN_GRACE_SECONDS"] = "30"
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        await lock.acquire()
        await produce_docs(kafka_bootstrap, topics.events, stream[2000:2500])
        await poll(stuck, 30, "the restarted daemon blocked on the held database")
        daemon.kill(signal.SIGTERM)

        def stop_requested() -> bool:
            # This run's log only: the previous run logged "stop requested" too, and a
            # second signal sent before the first is handled merges with it.
            events = daemon.log_events(current_run_only=True)
            return any(e.get("event") == "stop requested" for e in events)

        await poll(stop_requested, 10, "the first signal logged")
        assert daemon.alive(), "with a stuck batch and 30 s grace it must still be stopping"
        daemon.kill(signal.SIGTERM)
        began = time.monotonic()
        code = await asyncio.to_thread(daemon.wait, 10)
        took = time.monotonic() - began
        assert code != 0 and took < 3, (code, took)
        print(f"\n[second signal] exit {code} in {took:.2f}s")
    finally:
        await lock.release()
        daemon.stop()

    try:
        await assert_committed_prefix_durable(kafka_bootstrap, topics, database_url)
        await produce_docs(kafka_bootstrap, topics.events, stream[2500:])
        daemon.env["CONSUMERGEN_SHUTDOWN_GRACE_SECONDS"] = "10"
        await _finish(daemon, kafka_bootstrap, topics)
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)

    assert_matches_model(await consumer_state(database_url), await inbox(database_url), model)
