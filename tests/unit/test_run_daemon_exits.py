"""``run_daemon``'s exits in process (``service.daemon.signals``), without a broker: a
second signal exits at once with 130 (the process exit replaced by a recorder, so that
the test's own process lives); a daemon that stopped on a bug exits 1 with one ERROR
line naming its class; the stall test hook's handler goes with the daemon.
``tests/unit/test_run_daemon_signals.py`` holds the first signal and, in a child
process, the real second-signal exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from typing import Any

import pytest

from service.config import load_settings
from service.daemon import signals as daemon_signals
from service.daemon.app import Daemon
from service.daemon.liveness import STALL_HOOK_VARIABLE
from service.daemon.signals import run_daemon
from service.store.engine import create_engine
from service.testing.polling import poll


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(sqlite_url: str) -> Any:
    return load_settings(
        database_url=sqlite_url,
        bootstrap_servers=f"127.0.0.1:{_closed_port()}",
        health_port=0,
        read_api_port=0,
        infra_retry_wait_initial_seconds=0.05,
        infra_retry_wait_max_seconds=0.2,
    )


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    found = []
    for line in caplog.text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("logger") == "service.daemon.signals":
            found.append({k: v for k, v in event.items() if k not in ("timestamp", "logger")})
    return found


async def test_a_second_signal_exits_at_once_with_130_and_a_first_only_stops(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon is held in its stop (as one waiting for its in-flight batches) so
    that both signals reach ``run_daemon``'s handlers."""
    exits: list[int] = []
    monkeypatch.setattr(daemon_signals.os, "_exit", exits.append)
    started, stop_requested, released = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Stopping(Daemon):
        async def run(self, health: bool = True) -> None:
            started.set()
            await released.wait()

        def request_stop(self) -> None:
            stop_requested.set()
            super().request_stop()

    monkeypatch.setattr(daemon_signals, "Daemon", Stopping)
    settings = _settings(sqlite_url)
    engine = create_engine(settings)
    try:
        running = asyncio.create_task(run_daemon(settings, engine))
        await asyncio.wait_for(started.wait(), 30)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stop_requested.wait(), 10)
        assert exits == []  # the first signal stops gracefully, it never exits the process
        os.kill(os.getpid(), signal.SIGTERM)
        await poll(lambda: exits != [], 10, "the second signal seen")
        assert exits == [130]
        released.set()
        assert await asyncio.wait_for(running, 30) == 0
    finally:
        released.set()
        await engine.dispose()
    lines = _logged(caplog)
    assert lines[0] == {"level": "info", "event": "stop requested", "signal": "SIGINT"}
    assert lines[1] == {
        "level": "warning",
        "event": "second signal: exiting at once",
        "signal": "SIGTERM",
    }


async def test_a_daemon_stopped_by_a_bug_exits_1_with_one_error_line(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Buggy(Daemon):
        async def run(self, health: bool = True) -> None:
            self.fatal(KeyError("a bug"))

    monkeypatch.setattr(daemon_signals, "Daemon", Buggy)
    settings = _settings(sqlite_url)
    engine = create_engine(settings)
    try:
        assert await asyncio.wait_for(run_daemon(settings, engine), 30) == 1
    finally:
        await engine.dispose()
    assert _logged(caplog) == [
        {
            "level": "error",
            "event": "daemon exited after an internal error",
            "error_class": "KeyError",
        }
    ]
    loop = asyncio.get_running_loop()
    assert loop.remove_signal_handler(signal.SIGTERM) is False  # its handlers went with it
    assert loop.remove_signal_handler(signal.SIGINT) is False


async def test_the_stall_hooks_handler_goes_with_the_daemon(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STALL_HOOK_VARIABLE, "0.01")
    seen: list[bool] = []

    class Quick(Daemon):
        async def run(self, health: bool = True) -> None:
            loop = asyncio.get_running_loop()
            seen.append(signal.SIGUSR1 in getattr(loop, "_signal_handlers", {}))

    monkeypatch.setattr(daemon_signals, "Daemon", Quick)
    settings = _settings(sqlite_url)
    engine = create_engine(settings)
    try:
        assert await asyncio.wait_for(run_daemon(settings, engine), 30) == 0
    finally:
        await engine.dispose()
    assert seen == [True]  # installed while the daemon ran
    assert asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1) is False
