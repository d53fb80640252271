"""Several daemon processes in one group over one PostgreSQL, joining and leaving (SIGTERM
and kill -9) while the stream flows: every event applied exactly once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.store.migrate import upgrade
from service.testing.daemon import Topics, assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, wait_all_committed
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.postgres]


def _batches(daemon: DaemonProcess) -> int:
    return sum(1 for e in daemon.log_events() if e.get("event") == "batch committed")


async def test_daemons_join_and_leave_mid_stream(
    kafka_bootstrap: str, postgres_url: str, new_topic: Any, tmp_path: Path
) -> None:
    topics = Topics(
        events=await new_topic(partitions=6, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=2, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    stream = mixed_stream(consumers=150, events=12000, seed=61)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, postgres_url, topics))
    chunks = [stream[i : i + 2000] for i in range(0, len(stream), 2000)]

    def daemon(name: str, **extra: object) -> DaemonProcess:
        env = process_env(
            kafka_bootstrap,
            postgres_url,
            topics,
            batch_max_events=50,
            session_timeout_ms=6000,  # the broker's minimum: a killed member goes soon
            heartbeat_interval_ms=1000,
            shutdown_grace_seconds=10,
            **extra,
        )
        return DaemonProcess(env, tmp_path, name=name)

    a, b, c = daemon("a"), daemon("b"), daemon("c", group_instance_id="static-c")
    d, e = daemon("d"), daemon("e")
    everyone = [a, b, c, d, e]
    try:
        await produce_docs(kafka_bootstrap, topics.events, chunks[0])
        for proc in (a, b, c):
            proc.start()
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready, 60) for p in (a, b, c)))
        await produce_docs(kafka_bootstrap, topics.events, chunks[1])

        d.start()  # joins: a rebalance while events flow
        await produce_docs(kafka_bootstrap, topics.events, chunks[2])
        a.kill(signal.SIGTERM)  # leaves cleanly
        assert await asyncio.to_thread(a.wait, 30) == 0, a.tail()
        await produce_docs(kafka_bootstrap, topics.events, chunks[3])

        b.kill(signal.SIGKILL)  # dies: its partitions move after the session timeout
        assert await asyncio.to_thread(b.wait, 10) == -signal.SIGKILL
        e.start()
        await produce_docs(kafka_bootstrap, topics.events, chunks[4])

        c.kill(signal.SIGKILL)  # static member dies and comes back under the same id
        assert await asyncio.to_thread(c.wait, 10) == -signal.SIGKILL
        c.start()
        await produce_docs(kafka_bootstrap, topics.events, chunks[5])

        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=120)
        for proc in (c, d, e):
            proc.kill(signal.SIGTERM)
        for proc in (c, d, e):
            assert await asyncio.to_thread(proc.wait, 30) == 0, proc.tail()
    finally:
        for proc in everyone:
            proc.stop()
            scan_daemon_logs(proc)

    worked = {proc.name: _batches(proc) for proc in everyone}
    assert sum(1 for n in worked.values() if n > 0) >= 3, worked
    print(f"\n[several daemons] batches per daemon: {worked}")
    assert_matches_model(await consumer_state(postgres_url), await inbox(postgres_url), model)
