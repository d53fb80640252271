"""The daemon's probes and start, fast: what /readyz says while the broker or the
database cannot be reached, and that it recovers (``service.daemon.probes``,
``service.daemon.startup``).  The whole daemon over the fakes (``fake_edges``); the
database it probes is a real PostgreSQL behind a TCP relay the test can cut (a network
fault, not a fake database), or SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from service.daemon.app import Daemon
from service.daemon.retries import install_retry_hooks
from service.store.migrate import upgrade
from service.testing.fake_edges import (
    daemon_over_fakes,
    fake_edges,
    fake_settings,
    produce_new_consumers,
)
from service.testing.fake_kafka import FakeBroker
from service.testing.polling import poll
from tests.log_lines import logged as events

WITHIN = 20.0


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def counter(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


# -- the broker down at start --------------------------------------------------------------
async def test_a_broker_down_at_start_is_reported_waited_for_and_joined_once_up(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker is down when the daemon starts: /readyz says not started, the broker not
    ok, and why (the bootstrap address refusing); every failed consumer is closed and a
    fresh one made for the next attempt (a failed aiokafka client cannot start again).
    Once the broker is up the daemon joins, works and is ready."""
    settings = fake_settings(sqlite_url)
    await upgrade(settings)
    install_retry_hooks()
    broker = FakeBroker("events", 2)
    broker.go_down()
    fakes = fake_edges(broker)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None, WITHIN, "listening")

        async def refused_twice() -> bool:
            return counter(daemon, "consumergen_retries_total", step="startup_broker") >= 2

        await poll(refused_twice, WITHIN, "two attempts refused")
        status, body = await readyz(daemon)
        assert status == 503
        assert body["started"] is False and body["broker_ok"] is False
        assert body["database_ok"] is True
        port = settings.bootstrap_servers.rpartition(":")[2]
        assert body["last_error"].startswith("broker: ") and port in body["last_error"], body
        assert counter(daemon, "consumergen_infrastructure_failures_total", kind="broker") >= 2
        assert fakes.producer.starts == 0

        broker.come_up()
        await poll(fakes.assigned_everything, WITHIN, "joined once the broker is up")
        *failed, joined = broker.consumers
        assert len(failed) >= 2 and all(c.stopped for c in failed)
        assert joined.started and not joined.stopped
        assert fakes.producer.starts == 1
        produce_new_consumers(broker, 0, 1)
        await poll(broker.all_committed, WITHIN, "working")

        async def ready() -> bool:
            return (await readyz(daemon))[0] == 200

        await poll(ready, WITHIN, "ready")
        assert (await readyz(daemon))[1]["last_error"] is None
    logged = events(caplog)
    retried = [e for e in logged if e.get("event") == "broker unavailable at start, retrying"]
    assert retried and all(port in str(e.get("cause")) for e in retried), retried
    assert [e["attempt"] for e in retried[:2]] == [1, 2]
    [started] = [e for e in logged if e.get("event") == "broker reachable, starting"]
    assert started["failed_attempts"] == len(retried) >= 2


# -- the broker lost while running -------------------------------------------------------
async def test_a_broker_lost_while_running_is_reported_then_ready_again(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fake_settings(sqlite_url)
    await upgrade(settings)
    install_retry_hooks()
    broker = FakeBroker("events", 2)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None, WITHIN, "listening")
        await poll(fakes.assigned_everything, WITHIN, "assigned")

        async def ready() -> bool:
            return (await readyz(daemon))[0] == 200

        await poll(ready, WITHIN, "ready")
        before = counter(daemon, "consumergen_infrastructure_failures_total", kind="broker")
        broker.go_down()

        async def broker_not_ok() -> bool:
            return (await readyz(daemon))[1]["broker_ok"] is False

        await poll(broker_not_ok, WITHIN, "/readyz: the broker not ok")
        status, body = await readyz(daemon)
        assert status == 503 and body["database_ok"] is True
        assert body["last_error"].startswith("broker: "), body
        assert counter(daemon, "consumergen_infrastructure_failures_total", kind="broker") > before
        broker.come_up()
        await poll(fakes.assigned_everything, WITHIN, "rejoined")
        await poll(ready, WITHIN, "ready again")
        produce_new_consumers(broker, 1, 1)
        await poll(broker.all_committed, WITHIN, "working again")
    logged = [e.get("event") for e in events(caplog)]
    assert "broker unreachable: parking the Kafka clients" in logged
    assert "broker gone: Kafka clients parked, reconnecting with backoff" in logged
    assert "broker back: consumer rejoining the group" in logged


# -- the database lost while running -----------------------------------------------------
class Relay:
    """A TCP relay to a server that the test can cut (connections dropped, new ones
    closed at once) and restore."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.cut = False

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def sever(self) -> None:
        self.cut = True
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    def restore(self) -> None:
        self.cut = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}


@pytest.fixture
async def relayed_postgres(postgres_url: str) -> AsyncIterator[tuple[str, Relay]]:
    url = make_url(postgres_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    try:
        yield url.set(host="127.0.0.1", port=relay.port).render_as_string(False), relay
    finally:
        await relay.close()


async def test_a_database_lost_while_running_is_reported_then_ready_again(
    relayed_postgres: tuple[str, Relay], caplog: pytest.LogCaptureFixture
) -> None:
    """The database's connections are cut while the daemon runs (no event flowing):
    /readyz says the database is not ok, and why; counted once as a database failure,
    not once per probe.  Restored: ready again."""
    url, relay = relayed_postgres
    settings = fake_settings(url, postgresql_allow_commit_loss_on_crash=True)
    await upgrade(settings)
    install_retry_hooks()
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None, WITHIN, "listening")

        async def ready() -> bool:
            return (await readyz(daemon))[0] == 200

        await poll(ready, WITHIN, "ready")
        failures = "consumergen_infrastructure_failures_total"
        assert counter(daemon, failures, kind="database") == 0
        relay.sever()

        async def database_not_ok() -> bool:
            return (await readyz(daemon))[1]["database_ok"] is False

        await poll(database_not_ok, WITHIN, "/readyz: the database not ok")
        status, body = await readyz(daemon)
        assert status == 503 and body["broker_ok"] is True
        assert body["last_error"].startswith("database: "), body
        await asyncio.sleep(settings.probe_interval_seconds * 10)  # many probes fail meanwhile
        assert counter(daemon, failures, kind="database") == 1
        relay.restore()
        await poll(ready, WITHIN, "ready again")
        assert counter(daemon, failures, kind="database") == 1
    logged = [e.get("event") for e in events(caplog)]
    assert logged.count("database unreachable") == 1
    assert "database reachable again" in logged
    assert "database probe failed unexpectedly" not in logged


async def test_a_database_down_at_start_is_reported_waited_for_and_the_daemon_starts_once_up(
    relayed_postgres: tuple[str, Relay], caplog: pytest.LogCaptureFixture
) -> None:
    """The database cannot be reached when the daemon starts (its connections cut): the
    daemon listens, /readyz says not started, the database not ok and why, and the
    schema check is retried with backoff, each attempt counted and logged with its wait;
    once the database answers the daemon starts, joins and is ready, and says after how
    many failed attempts."""
    url, relay = relayed_postgres
    settings = fake_settings(url, postgresql_allow_commit_loss_on_crash=True)
    await upgrade(settings)
    install_retry_hooks()
    relay.sever()
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None, WITHIN, "listening")

        async def retried_twice() -> bool:
            return counter(daemon, "consumergen_retries_total", step="startup_database") >= 2

        await poll(retried_twice, WITHIN, "two schema checks retried")
        status, body = await readyz(daemon)
        assert status == 503 and body["started"] is False
        assert body["database_ok"] is False and body["broker_ok"] is True
        assert body["last_error"].startswith("database: "), body
        assert "NoneType" not in body["last_error"], body
        assert broker.consumers[-1].started is False  # the broker is not touched yet
        relay.restore()

        async def ready() -> bool:
            return (await readyz(daemon))[0] == 200

        await poll(ready, WITHIN, "started and ready once the database answers")
        assert fakes.assigned_everything()
        failures = counter(daemon, "consumergen_infrastructure_failures_total", kind="database")
    logged = events(caplog)
    retried = [e for e in logged if e.get("event") == "database unavailable at start, retrying"]
    assert len(retried) >= 2
    assert [e["attempt"] for e in retried] == list(range(1, len(retried) + 1))
    for entry in retried:
        assert str(entry["error"]).split(":")[0] not in ("", "NoneType"), entry
        wait = entry["retry_in"]
        assert isinstance(wait, float) and 0 <= wait <= settings.infra_retry_wait_max_seconds
        assert wait == round(wait, 2)
    [started] = [e for e in logged if e.get("event") == "database reachable, starting"]
    # the first look (before listening) and each failed attempt of the wait
    assert started["failed_attempts"] == len(retried)
    assert failures == 1 + started["failed_attempts"]
