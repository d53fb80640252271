"""What /readyz and /livez answer, from what (``service.daemon.health``,
``service.daemon.liveness``): the rules alone, then the health server over HTTP.

Readiness is "able to work": started, the database and the broker reachable, no
partition paused by a failing step, not stopping; each of those alone makes it 503, and
the body says which.  Liveness is "the event loop beats and nothing stands still".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from service.config import ConfigError, load_settings
from service.daemon.health import HealthServer, Readiness
from service.daemon.http_server import HttpServer
from service.daemon.liveness import (
    STALL_HOOK_VARIABLE,
    beat_interval,
    heartbeat,
    install_stall_hook,
)
from service.daemon.metrics import DaemonMetrics
from service.testing.polling import poll
from tests.log_lines import logged


def ready_state(**changes: Any) -> Readiness:
    readiness = Readiness(started=True, assigned=3)
    for name, value in changes.items():
        setattr(readiness, name, value)
    return readiness


# -- readiness ---------------------------------------------------------------------------
def test_ready_when_started_with_both_reachable_nothing_paused_and_not_stopping() -> None:
    ready, body = ready_state(last_error="broker: an old error").verdict()
    assert ready
    assert body == {
        "ready": True,
        "started": True,
        "assigned_partitions": 3,
        "database_ok": True,
        "broker_ok": True,
        "paused_partitions": [],
        "stopping": False,
        "last_error": None,  # an error of the past is not shown once ready
    }


@pytest.mark.parametrize(
    ("changes", "database_ok", "broker_ok"),
    [
        ({"started": False}, True, True),
        ({"stopping": True}, True, True),
        ({"database_reachable": False}, False, True),
        ({"broker_reachable": False}, True, False),
        ({"failing": {"events/2": "database"}}, False, True),
        ({"failing": {"events/1": "broker"}}, True, False),
        ({"failing": {"events/1": "dead_letters"}}, True, True),
    ],
)
def test_each_reason_alone_makes_it_not_ready_and_the_body_says_which(
    changes: dict[str, Any], database_ok: bool, broker_ok: bool
) -> None:
    readiness = ready_state(last_error="database: down", **changes)
    ready, body = readiness.verdict()
    assert not ready and body["ready"] is False
    assert body["database_ok"] is database_ok and body["broker_ok"] is broker_ok
    assert readiness.database_ok is database_ok and readiness.broker_ok is broker_ok
    assert body["started"] is changes.get("started", True)
    assert body["stopping"] is changes.get("stopping", False)
    assert body["paused_partitions"] == sorted(changes.get("failing", {}))
    assert readiness.paused == set(changes.get("failing", {}))
    assert body["last_error"] == "database: down"


def test_paused_partitions_are_listed_sorted() -> None:
    readiness = ready_state(failing={"events/3": "database", "events/10": "broker"})
    assert readiness.verdict()[1]["paused_partitions"] == ["events/10", "events/3"]


# -- liveness ----------------------------------------------------------------------------
def test_alive_while_the_heartbeat_is_at_most_stale_after_old_and_nothing_stalls() -> None:
    readiness = Readiness(stale_after=2.0)
    assert readiness.live_verdict(now=100.0) == (
        True,
        {"alive": True, "heartbeat_age_seconds": None},
    )  # before the first beat: starting, alive
    readiness.last_beat = 98.0
    assert readiness.live_verdict(now=100.0) == (
        True,
        {"alive": True, "heartbeat_age_seconds": 2.0, "stale_after_seconds": 2.0},
    )  # at the bound: still alive
    alive, body = readiness.live_verdict(now=100.0001)
    assert not alive and body == {
        "alive": False,
        "heartbeat_age_seconds": 2.0,
        "stale_after_seconds": 2.0,
    }
    readiness.last_beat = 99.12345
    assert readiness.live_verdict(now=100.0)[1]["heartbeat_age_seconds"] == 0.877


def test_a_stall_fails_liveness_with_a_fresh_heartbeat_or_none() -> None:
    readiness = Readiness(stale_after=2.0, stalled=("fetch loop", "events/1"))
    assert readiness.live_verdict(now=5.0) == (
        False,
        {"alive": False, "heartbeat_age_seconds": None, "stalled": ["fetch loop", "events/1"]},
    )
    readiness.last_beat = 5.0
    alive, body = readiness.live_verdict(now=5.0)
    assert not alive and body["alive"] is False
    assert body["stalled"] == ["fetch loop", "events/1"]
    readiness.stalled = ()
    alive, body = readiness.live_verdict(now=5.0)
    assert alive and "stalled" not in body


def test_a_live_verdict_without_a_clock_reads_the_monotonic_one() -> None:
    readiness = Readiness(stale_after=2.0, last_beat=time.monotonic())
    assert readiness.live_verdict()[0]
    readiness.last_beat = time.monotonic() - 10
    assert not readiness.live_verdict()[0]


def test_the_heartbeat_interval_is_a_quarter_of_the_bound_at_most_a_second() -> None:
    assert beat_interval(load_settings(liveness_stale_seconds=30)) == 1.0
    assert beat_interval(load_settings(liveness_stale_seconds=4)) == 1.0
    assert beat_interval(load_settings(liveness_stale_seconds=2)) == 0.5


async def test_the_heartbeat_stamps_the_loops_clock_at_each_interval() -> None:
    readiness = Readiness()
    beats = asyncio.create_task(heartbeat(readiness, 0.01))
    try:
        await poll(lambda: readiness.last_beat is not None, 5, "a first beat", every=0.001)
        first = readiness.last_beat
        assert first is not None and abs(time.monotonic() - first) < 1
        await poll(lambda: readiness.last_beat != first, 5, "a second beat", every=0.001)
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)


async def test_the_stall_hook_is_installed_only_with_its_variable_and_a_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.delenv(STALL_HOOK_VARIABLE, raising=False)
    assert install_stall_hook(loop) is False
    monkeypatch.setenv(STALL_HOOK_VARIABLE, "")
    assert install_stall_hook(loop) is False
    monkeypatch.setenv(STALL_HOOK_VARIABLE, "soon")
    with pytest.raises(
        ConfigError, match=f"^{STALL_HOOK_VARIABLE}: not a number of seconds: 'soon'$"
    ):
        install_stall_hook(loop)
    monkeypatch.setenv(STALL_HOOK_VARIABLE, "0.05")
    try:
        assert install_stall_hook(loop) is True
        # SIGUSR1 now blocks the loop for that long: a callback due meanwhile runs late.
        began = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert time.monotonic() - began >= 0.05
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)


async def test_the_stall_hook_says_that_it_is_installed_and_when_it_stalls_and_releases_the_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook is a test's tool in a daemon that must never carry it unnoticed: its
    installing is a warning naming the variable that armed it, and each stall says how
    long it blocks the loop and when the loop is released (what a test of /livez reads
    to tell its stall from a real one)."""
    loop = asyncio.get_running_loop()
    monkeypatch.setenv(STALL_HOOK_VARIABLE, "0.05")

    def hook_events() -> list[dict[str, Any]]:
        return [
            {k: v for k, v in e.items() if k not in ("timestamp", "logger")}
            for e in logged(caplog)
            if e.get("logger") == "service.daemon.liveness"
        ]

    try:
        assert install_stall_hook(loop) is True
        signal.raise_signal(signal.SIGUSR1)
        await poll(lambda: len(hook_events()) >= 3, 5, "the stall and its release", every=0.01)
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    assert hook_events() == [
        {
            "level": "warning",
            "event": "test hook installed: SIGUSR1 stalls the event loop",
            "variable": "CONSUMERGEN_TEST_STALL_LOOP_SECONDS",
        },
        {"level": "warning", "event": "test hook: stalling the event loop", "seconds": 0.05},
        {"level": "warning", "event": "test hook: event loop released"},
    ]


# -- the health server -------------------------------------------------------------------
@pytest.fixture
async def served() -> AsyncIterator[tuple[Readiness, DaemonMetrics, str]]:
    readiness = Readiness(started=True)
    metrics = DaemonMetrics()
    metrics.bind_readiness(lambda: readiness.verdict()[0])
    server = HealthServer("127.0.0.1", 0, readiness, metrics)
    await asyncio.to_thread(server.start)
    try:
        yield readiness, metrics, f"http://127.0.0.1:{server.port}"
    finally:
        await asyncio.to_thread(server.stop)


async def fetch(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_readyz_answers_200_or_503_with_the_verdict(
    served: tuple[Readiness, DaemonMetrics, str],
) -> None:
    readiness, _, base = served
    status, _, text = await fetch(base + "/readyz")
    assert status == 200 and json.loads(text) == readiness.verdict()[1]
    readiness.failing["events/0"] = "database"
    readiness.last_error = "database: down"
    status, _, text = await fetch(base + "/readyz")
    assert status == 503 and json.loads(text) == readiness.verdict()[1]
    assert json.loads(text)["paused_partitions"] == ["events/0"]


@pytest.mark.parametrize("path", ["/livez", "/healthz"])
async def test_livez_and_healthz_answer_200_or_503_with_the_live_verdict(
    served: tuple[Readiness, DaemonMetrics, str], path: str
) -> None:
    readiness, _, base = served
    status, _, text = await fetch(base + path)
    assert status == 200 and json.loads(text) == {"alive": True, "heartbeat_age_seconds": None}
    readiness.stalled = ("events/4",)
    status, _, text = await fetch(base + path)
    assert status == 503 and json.loads(text)["stalled"] == ["events/4"]


async def test_metrics_are_the_daemons_registry_in_prometheus_text(
    served: tuple[Readiness, DaemonMetrics, str],
) -> None:
    readiness, metrics, base = served
    metrics.cas_retries.inc(7)
    status, content_type, text = await fetch(base + "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE_LATEST
    assert "consumergen_cas_retries_total 7.0" in text.splitlines()
    assert "consumergen_ready 1.0" in text.splitlines()
    readiness.stopping = True
    _, _, text = await fetch(base + "/metrics")
    assert "consumergen_ready 0.0" in text.splitlines()


async def test_an_unknown_path_is_a_json_404(served: tuple[Readiness, DaemonMetrics, str]) -> None:
    _, _, base = served
    status, _, text = await fetch(base + "/nothing-here")
    assert status == 404 and json.loads(text) == {"error": "no such path"}


def test_a_server_not_started_has_no_port_and_takes_no_callback() -> None:
    server = HttpServer("127.0.0.1", 0, lambda app: None, name="never-started")
    with pytest.raises(RuntimeError, match=r"^the HTTP server is not started$"):
        _ = server.port
    with pytest.raises(RuntimeError, match=r"^the HTTP server is not started$"):
        server.call_soon_threadsafe(lambda: None)


async def test_the_health_server_answers_on_the_port_it_is_given_from_a_thread_named_for_it() -> (
    None
):
    """The orchestrator probes the configured port, not one the server picks; and a
    thread dump (py-spy, faulthandler) names the health server's thread."""
    with socket.socket() as held:
        # Bound, not listening, SO_REUSEADDR: the port is ours (nobody else can take
        # it), and the server, binding with SO_REUSEADDR too, can have it.
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port = int(held.getsockname()[1])
        server = HealthServer("127.0.0.1", port, Readiness(started=True), DaemonMetrics())
        await asyncio.to_thread(server.start)
        try:
            assert server.port == port
            assert "health-http" in {thread.name for thread in threading.enumerate()}
            status, _, body = await fetch(f"http://127.0.0.1:{port}/readyz")
            assert (status, json.loads(body)["ready"]) == (200, True)
        finally:
            await asyncio.to_thread(server.stop)
