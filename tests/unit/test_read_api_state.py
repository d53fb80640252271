"""The read API's answer for a consumer that exists (``service.daemon.read_api``), over
real HTTP on SQLite, without a daemon or a broker: what a writer reads before deciding
its next change (``tests/unit/test_read_api_answers.py`` holds the refusals; the broker
test ``tests/daemon/test_read_api.py`` the same answer through a whole daemon).  And the
HTTP server under it (``service.daemon.http_server``) before and at its start."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from service.apply.admission import admit
from service.apply.applier import Applier
from service.daemon.http_server import HttpServer
from service.daemon.read_api import read_api_server
from service.domain.outcomes import EventSource
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.testing.model import event_doc
from tests.apply.helpers import settings_for

CONSUMER = "3f2c1a9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"


async def _apply(url: str, doc: dict[str, object], offset: int) -> None:
    settings = settings_for(url)
    engine = create_engine(settings)
    try:
        event = admit(CONSUMER.encode(), json.dumps(doc).encode(), 65_536)
        [outcome] = await Applier(SqlUnitOfWorkFactory(engine), settings).apply_batch(
            [(event, EventSource("events", 0, offset))]
        )
        assert outcome.kind.value == "applied"
    finally:
        await engine.dispose()


async def test_a_consumer_that_exists_is_read_with_its_generation_owners_and_time(
    sqlite_url: str,
) -> None:
    """200 with the state a writer needs: live or deleted, the generation, the owners,
    the type, when it last changed; the path's UUID in any case or form."""
    settings = settings_for(sqlite_url)
    await upgrade(settings)
    before = datetime.now(UTC).replace(microsecond=0)
    await _apply(sqlite_url, event_doc(CONSUMER, project="p1", user="u1", consumer_type="VM"), 0)
    await _apply(sqlite_url, event_doc(CONSUMER, project="p2", user="u2"), 1)
    server = read_api_server("127.0.0.1", 0, lambda: create_engine(settings), None)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}/v1/consumers/"
        async with aiohttp.ClientSession() as http:
            for path in (CONSUMER, CONSUMER.upper()):
                async with http.get(base + path) as response:
                    assert response.status == 200, path
                    body = await response.json()
                assert {k: v for k, v in body.items() if k != "updated_at"} == {
                    "consumer_uuid": CONSUMER,
                    "state": "live",
                    "generation": 2,
                    "project_id": "p2",
                    "user_id": "u2",
                    "consumer_type": "VM",
                }, path
                updated = datetime.fromisoformat(body["updated_at"].replace("Z", "+00:00"))
                assert before <= updated <= datetime.now(UTC) + timedelta(seconds=1)
    finally:
        server.stop()


def test_a_server_not_started_has_no_port_and_runs_nothing() -> None:
    server = HttpServer("127.0.0.1", 0, lambda app: None, name="t-http")
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(RuntimeError, match="not started"):
        server.call_soon_threadsafe(lambda: None)
    server.stop()  # stopping a server never started does nothing, and does not hang


def test_a_port_that_cannot_be_had_is_raised_by_start() -> None:
    """The daemon names the setting of a taken port (``daemon.listeners``) from what
    ``start`` raises: the bind's own error, in the starting thread."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = HttpServer("127.0.0.1", port, lambda app: None, name="t-http")
        with pytest.raises(OSError) as raised:
            server.start()
        assert raised.value.errno is not None
        assert not server._thread.is_alive()
