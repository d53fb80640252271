"""The read API's answer for a consumer that exists (``service.daemon.read_api``), over
real HTTP on SQLite, without a daemon or a broker: what a writer reads before deciding
its next change (``tests/unit/test_read_api_answers.py`` holds the refusals; the broker
test ``tests/daemon/test_read_api.py`` the same answer through a whole daemon).  And the
HTTP server under it (``service.daemon.http_server``) before and at its start."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.apply.admission import admit
from service.apply.applier import Applier
from service.daemon.http_server import AccessLogger, HttpServer
from service.daemon.read_api import read_api_server
from service.domain.outcomes import EventSource
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.testing.model import event_doc
from tests.apply.helpers import settings_for
from tests.log_lines import named

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


# --- the HTTP server itself: its access log, its thread, its port ------------------------


def _routes(app: web.Application) -> None:
    async def created(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, status=201)

    app.router.add_get("/things", created)
    app.router.add_get("/readyz", created)


def _get(port: int, path: str) -> int:
    """A plain HTTP/1.1 request that asks the server to close the connection."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_a_request_is_access_logged_once_with_its_method_path_status_and_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One "http request" line a request, through structlog (so a UUID in the path is
    pseudonymised like everywhere else), with the time in ms to 0.01; the probes' and
    scrapes' paths are not logged (they come every few seconds)."""
    caplog.set_level(logging.INFO)
    logger = AccessLogger(logging.getLogger("t"), "")
    logger.log(make_mocked_request("GET", "/things/abc"), web.Response(status=201), 0.0123456)
    logger.log(make_mocked_request("GET", "/readyz"), web.Response(status=200), 0.001)
    [line] = named(caplog, "http request")
    assert {key: line[key] for key in ("level", "method", "path", "status", "ms")} == {
        "level": "info",
        "method": "GET",
        "path": "/things/abc",
        "status": 201,
        "ms": 12.35,
    }


def test_the_server_access_logs_its_requests_through_the_services_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = HttpServer("127.0.0.1", 0, _routes, name="t-http-log")
    server.start()
    try:
        assert _get(server.port, "/things") == 201
        assert _get(server.port, "/readyz") == 201
        deadline = time.monotonic() + 10  # the line is written after the response
        while not named(caplog, "http request"):
            assert time.monotonic() < deadline, "no access log line"
            time.sleep(0.01)
    finally:
        server.stop()
    [line] = named(caplog, "http request")
    assert (line["method"], line["path"], line["status"]) == ("GET", "/things", 201)


def test_the_server_runs_in_a_named_daemon_thread_and_runs_callbacks_on_its_loop() -> None:
    """A daemon thread (a hung server never keeps the process from exiting), named for
    thread dumps; ``call_soon_threadsafe`` runs the callback on the server's loop."""
    server = HttpServer("127.0.0.1", 0, _routes, name="t-http-thread")
    server.start()
    try:
        [thread] = [t for t in threading.enumerate() if t.name == "t-http-thread"]
        assert thread.daemon
        ran = threading.Event()
        server.call_soon_threadsafe(ran.set)
        assert ran.wait(10)
    finally:
        server.stop()
    assert not thread.is_alive()
