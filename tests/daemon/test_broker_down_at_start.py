"""A daemon started before its broker (issue 15's findings): each retry says what
happened without claiming a time bound that did not pass, nothing logs "Unclosed
AIOKafkaConsumer" (a failed client is closed before the next attempt), and SIGTERM
while it waits stops it cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from service.embedded.process import free_port
from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess
from service.testing.polling import poll
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka]

RETRIES = 4


async def test_broker_down_at_start_retries_cleanly(sqlite_url: str, tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # a port no broker listens on
    topics = Topics("events", "dlq", "outcomes", "group")
    await upgrade(daemon_settings(nobody, sqlite_url, topics))
    daemon = DaemonProcess(process_env(nobody, sqlite_url, topics), tmp_path)
    try:
        daemon.start()

        def retries() -> list[dict[str, object]]:
            return [
                event
                for event in daemon.log_events()
                if event.get("event") == "broker unavailable at start, retrying"
            ]

        await poll(lambda: len(retries()) >= RETRIES, 60, f"{RETRIES} start-up retries")
        daemon.kill(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
        output = daemon.all_logs()
        assert "Unclosed" not in output, output[-2000:]
        for event in retries():
            error = str(event["error"])
            assert error.startswith("cannot connect the "), error
            assert " within " not in error, error  # refused at once, not after a bound
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)
