"""/livez follows the event loop: a wedged loop fails it, a released one recovers; and a
wedged fetch loop fails it too (a stall: ``service.daemon.stalls``).

A real daemon process, its loop stalled by the test hook (SIGUSR1 with
``CONSUMERGEN_TEST_STALL_LOOP_SECONDS`` set makes the loop ``time.sleep``); the probe is
answered off the loop, so it can say so while the loop is stuck.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from service.daemon.health import Readiness
from service.daemon.liveness import STALL_HOOK_VARIABLE
from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.daemon_process import DaemonProcess
from service.testing.polling import poll

pytestmark = [pytest.mark.kafka]

STALL_SECONDS = 6.0
STALE_AFTER = 1.0


async def _livez(daemon: DaemonProcess) -> tuple[int, dict[str, object]] | None:
    answer = await asyncio.to_thread(daemon.get, "/livez")
    if answer is None:
        return None
    status, body = answer
    return status, json.loads(body)


async def test_livez_fails_while_the_loop_is_blocked_and_recovers(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics, tmp_path: Path
) -> None:
    await upgrade(sqlite_url)
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CONSUMERGEN_DATABASE_URL": sqlite_url,
        "CONSUMERGEN_TOPIC": topics.events,
        "CONSUMERGEN_DLQ_TOPIC": topics.dlq,
        "CONSUMERGEN_GROUP_ID": topics.group,
        "CONSUMERGEN_LIVENESS_STALE_SECONDS": str(STALE_AFTER),
        "CONSUMERGEN_LOG_REDACTION_KEY": "liveness-test",
        STALL_HOOK_VARIABLE: str(STALL_SECONDS),
    }
    daemon = DaemonProcess(env, tmp_path, name="liveness").start()
    try:

        async def beating() -> bool:
            answer = await _livez(daemon)
            return (
                answer is not None
                and answer[0] == 200
                and answer[1]["alive"] is True
                and (answer[1]["heartbeat_age_seconds"] is not None)
            )

        await poll(beating, 60, "/livez answering 200 with a heartbeat")
        await poll(
            lambda: any(
                e.get("event") == "test hook installed: SIGUSR1 stalls the event loop"
                for e in daemon.log_events()
            ),
            10,
            "the stall hook installed",
        )
        # The start-up lines say which database and which health address are in use.
        lines = {str(e.get("event")): e for e in daemon.log_events()}
        assert lines["daemon starting"]["database"] == sqlite_url
        health = f"http://127.0.0.1:{daemon.health_port}"
        assert lines["health endpoints up"]["address"] == health
        daemon.kill(signal.SIGUSR1)

        failed: list[dict[str, object]] = []

        async def stale() -> bool:
            answer = await _livez(daemon)
            if answer is not None and answer[0] == 503:
                failed.append(answer[1])
            return bool(failed)

        await poll(stale, STALL_SECONDS, "/livez 503 while the loop is blocked", every=0.05)
        assert failed[0]["alive"] is False  # the body says why
        assert float(str(failed[0]["heartbeat_age_seconds"])) > STALE_AFTER
        await poll(beating, STALL_SECONDS + 30, "/livez 200 again after the loop is released")
        daemon.check_alive()
        events = [e.get("event") for e in daemon.log_events()]
        assert "test hook: event loop released" in events
    finally:
        daemon.stop()


def test_live_verdict_reads_the_heartbeat_age() -> None:
    readiness = Readiness(stale_after=2.0)
    assert readiness.live_verdict(now=100.0) == (
        True,
        {"alive": True, "heartbeat_age_seconds": None},
    )  # before the first beat: starting, alive
    readiness.last_beat = 99.0
    alive, body = readiness.live_verdict(now=100.0)
    assert alive and body["heartbeat_age_seconds"] == 1.0
    alive, body = readiness.live_verdict(now=101.5)
    assert not alive and body["alive"] is False and body["stale_after_seconds"] == 2.0


async def test_livez_fails_when_the_fetch_loop_stops_polling(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics
) -> None:
    """The loop beats, the broker and the database answer, /readyz says 200; but the
    fetch loop is wedged (its consumer's fetch never returns): a stall, which fails
    /livez and shows in consumergen_fetch_loop_stalled (``service.daemon.stalls``)."""
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, stall_seconds=2.0)
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "ready")
        assert daemon.health is not None
        port = daemon.health.port
        assert (await _get(port, "/livez"))[0] == 200
        wedged = asyncio.Event()

        async def never_returns(*args: object, **kwargs: object) -> dict[object, object]:
            wedged.set()
            await asyncio.Event().wait()
            return {}

        daemon.consumer.getmany = never_returns  # the next fetch hangs for good
        await poll(wedged.is_set, 30, "the fetch loop in the wedged fetch")

        async def dead() -> bool:
            return (await _get(port, "/livez"))[0] == 503

        await poll(dead, 30, "/livez failing")
        _, body = await _get(port, "/livez")
        assert json.loads(body)["stalled"] == ["fetch loop"]
        assert daemon.readiness.verdict()[0], "a stall is not a readiness matter"
        _, metrics = await _get(port, "/metrics")
        assert "consumergen_fetch_loop_stalled 1.0" in metrics


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()
