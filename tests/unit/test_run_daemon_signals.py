"""``run_daemon`` stops on SIGTERM/SIGINT (``service.daemon.signals``): the first signal
gracefully (exit status 0), a second one at once (130).  No broker is needed: the daemon
is waiting for one (nothing listens on its bootstrap address) when the signals come."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.config import load_settings
from service.daemon.signals import run_daemon
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.testing.polling import poll


def closed_port() -> int:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_first_signal_stops_the_daemon_gracefully_with_status_0(
    sqlite_url: str, signum: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        database_url=sqlite_url,
        bootstrap_servers=f"127.0.0.1:{closed_port()}",
        health_port=0,
        read_api_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.2,
    )
    await upgrade(settings)
    engine = create_engine(settings)
    loop = asyncio.get_running_loop()
    try:
        running = asyncio.create_task(run_daemon(settings, engine))
        # Sent only once the daemon's handler is installed (it would end this process
        # else): it is, by the time the daemon logs that it starts.
        await poll(
            lambda: "daemon starting" in caplog.text or running.done(),
            30,
            "the daemon starting",
            every=0.01,
        )
        assert not running.done(), running
        os.kill(os.getpid(), signum)
        assert await asyncio.wait_for(running, 30) == 0
        # Its handlers are gone with it: none left to remove.
        assert loop.remove_signal_handler(signal.SIGTERM) is False
        assert loop.remove_signal_handler(signal.SIGINT) is False
    finally:
        await engine.dispose()
    logged = []
    for line in caplog.text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("logger") == "service.daemon.signals":
            logged.append({k: v for k, v in event.items() if k not in ("timestamp", "logger")})
    assert logged[0] == {"level": "info", "event": "stop requested", "signal": signum.name}
    exited = logged[1]
    assert (exited["level"], exited["event"]) == ("info", "daemon exited") and len(logged) == 2
    seconds = exited["seconds"]
    assert isinstance(seconds, float) and 0 <= seconds < 60 and seconds == round(seconds, 1)


def test_a_second_signal_exits_at_once_with_status_130(tmp_path: Path) -> None:
    """The daemon's loop is held (the test hook: SIGUSR1 blocks it for a while) so that
    both signals are there before it handles the first: the second ends the process at
    once, 130, not a graceful 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    env.update(
        CONSUMERGEN_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        CONSUMERGEN_BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port()}",
        CONSUMERGEN_HEALTH_PORT="0",
        CONSUMERGEN_READ_API_PORT="0",
        CONSUMERGEN_LOG_FORMAT="json",
        CONSUMERGEN_LOG_REDACTION_KEY="signal-tests",
        CONSUMERGEN_TEST_STALL_LOOP_SECONDS="3",
    )
    upgraded = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    daemon = subprocess.Popen(
        [sys.executable, "-m", "service", "run"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert daemon.stderr is not None

        def wait_for(event: str) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = daemon.stderr.readline()  # type: ignore[union-attr]
                if not line:
                    break
                seen.append(line)
                try:
                    if json.loads(line).get("event") == event:
                        return
                except ValueError:
                    continue
            raise AssertionError(f"no {event!r} in {''.join(seen)}")

        wait_for("daemon starting")
        daemon.send_signal(signal.SIGUSR1)
        wait_for("test hook: stalling the event loop")
        daemon.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # two deliveries, not one pending signal
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 130, "".join(seen)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stderr is not None:
            daemon.stderr.close()
