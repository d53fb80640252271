"""Where the daemon listens and what it says as it starts, fast: the whole daemon over the
fakes (``service.testing.fake_kafka``, ``fake_edges``), no broker; its health server and
read API are real aiohttp servers, asked over HTTP as a probe or a producer would.

An operator relies on each of these: the two servers bound on the configured host and
port (a read API meant for this machine alone must not answer on another address), the
read API asking for the configured token, a taken port said as one line naming its
setting, the start's log lines naming the database, the broker, the topic and the group,
and both servers closed once the daemon has stopped.  ``Daemon.run()`` without argument
is how ``consumergen run`` starts it (``service.daemon.signals``): it listens.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from service.daemon.app import Daemon
from service.daemon.listeners import ListenerError
from service.embedded.process import free_port, port_open
from service.store.engine import create_engine, describe_database
from service.testing.fake_edges import fake_edges, fake_settings, migrated_sqlite
from service.testing.fake_kafka import FakeBroker
from service.testing.polling import poll
from tests.log_lines import logged

WITHIN = 20.0
TOKEN = "listening-test-token"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("listening"))


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (127.0.0.1, any free one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status


@asynccontextmanager
async def started(database: str) -> AsyncIterator[tuple[Daemon, asyncio.Task[None], int, int]]:
    """A daemon started as ``consumergen run`` starts it (``run()``), health and read API
    on ports chosen here (free ones), the read API asking for ``TOKEN``; it is stopped
    by the test, or at the end."""
    health_port, read_api_port = free_port(), free_port()
    settings = fake_settings(
        database, health_port=health_port, read_api_port=read_api_port, read_api_token=TOKEN
    )
    broker = FakeBroker("events", 1)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine, edges=fake_edges(broker).edges)
    task = asyncio.create_task(daemon.run(), name="listening-daemon")
    try:
        await poll(lambda: daemon.read_api is not None or task.done(), WITHIN, "listening")
        assert not task.done(), task
        yield daemon, task, health_port, read_api_port
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await broker.close()
            await engine.dispose()


async def test_the_servers_listen_on_the_configured_host_and_ports_and_close_at_stop(
    database: str,
) -> None:
    """/livez and the read API answer on 127.0.0.1 at the configured ports, and on no
    other address of this machine (127.0.0.2 is one too); the read API asks for the
    token and reads the daemon's database; once the daemon has stopped, neither port
    answers."""
    async with started(database) as (daemon, task, health_port, read_api_port):
        await answers_where_configured(daemon, health_port, read_api_port)
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert not port_open(health_port), "the health server still answers after the stop"
    assert not port_open(read_api_port), "the read API still answers after the stop"


async def answers_where_configured(daemon: Daemon, health_port: int, read_api_port: int) -> None:
    assert daemon.health is not None and daemon.health.port == health_port
    assert daemon.read_api is not None and daemon.read_api.port == read_api_port
    assert await get(f"http://127.0.0.1:{health_port}/livez") == 200
    for port in (health_port, read_api_port):
        assert not port_open(port, "127.0.0.2"), f"port {port} answers on another address"

    consumer = f"http://127.0.0.1:{read_api_port}/v1/consumers/{uuid.uuid4()}"
    assert await get(consumer) == 401  # no token
    assert await get(consumer, "not-the-token") == 401
    assert await get(consumer, TOKEN) == 404  # read from the database: never seen


async def test_the_start_says_what_the_daemon_serves_and_where(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The start's log lines, in order: what the daemon works on (database, broker,
    topic, group), where its health endpoints and read API are (and that it asks for a
    token), and that it has started."""
    async with started(database) as (daemon, _, health_port, read_api_port):
        await poll(lambda: daemon.readiness.started, WITHIN, "started")
        settings = daemon.settings
    wanted = ("daemon starting", "health endpoints up", "read api up", "daemon started")
    lines = [
        {k: v for k, v in e.items() if k not in ("timestamp", "logger")}
        for e in logged(caplog)
        if e.get("event") in wanted
    ]
    assert lines == [
        {
            "level": "info",
            "event": "daemon starting",
            "database": describe_database(database),
            "bootstrap": settings.bootstrap_servers,
            "topic": "events",
            "group": "fake-group",
        },
        {
            "level": "info",
            "event": "health endpoints up",
            "address": f"http://127.0.0.1:{health_port}",
            "paths": "/livez /readyz /metrics",
        },
        {
            "level": "info",
            "event": "read api up",
            "address": f"http://127.0.0.1:{read_api_port}",
            "tokens_required": True,
        },
        {"level": "info", "event": "daemon started", "topic": "events", "group": "fake-group"},
    ]


@pytest.mark.parametrize(
    ("taken", "setting"),
    [("health_port", "CONSUMERGEN_HEALTH_PORT"), ("read_api_port", "CONSUMERGEN_READ_API_PORT")],
)
async def test_a_taken_port_stops_the_start_with_one_line_naming_its_setting(
    database: str, taken_port: int, taken: str, setting: str
) -> None:
    """DESIGN.md: a taken port is one line naming the setting, before the broker is
    touched."""
    ports = {"health_port": 0, "read_api_port": 0, taken: taken_port}
    settings = fake_settings(database, **ports)
    broker = FakeBroker("events", 1)
    engine = create_engine(settings)
    daemon = Daemon(settings, engine, edges=fake_edges(broker).edges)
    try:
        with pytest.raises(ListenerError) as raised:
            await asyncio.wait_for(daemon.run(), 30)
    finally:
        await broker.close()
        await engine.dispose()
    assert str(raised.value) == (
        f"{setting}: cannot listen on 127.0.0.1:{taken_port}: the address is already in use"
    )
    assert not broker.consumers[-1].started  # the broker was not touched
