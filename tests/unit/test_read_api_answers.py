"""What the read API answers besides a consumer's state (``service.daemon.read_api``):
each refusal's status, body and headers over real HTTP, on SQLite, without a daemon
(the statuses per failure class are also in tests/daemon/test_read_api.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from service.daemon.read_api import read_api_server
from service.daemon.read_tokens import ReadApiTokens
from service.embedded.process import free_port
from service.store.engine import create_engine
from service.store.migrate import upgrade
from tests.apply.helpers import settings_for

TOKEN = "the-token-1"


@contextlib.asynccontextmanager
async def serving(url: str, tokens: ReadApiTokens | SecretStr | None) -> AsyncIterator[str]:
    settings = settings_for(url)
    server = read_api_server("127.0.0.1", 0, lambda: create_engine(settings), tokens)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/v1/consumers/"
    finally:
        server.stop()


async def get(url: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_a_request_without_a_valid_bearer_token_is_a_401_that_says_so(
    sqlite_url: str,
) -> None:
    await upgrade(settings_for(sqlite_url))
    async with serving(sqlite_url, ReadApiTokens([TOKEN])) as base:
        url = base + str(uuid.uuid4())
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, body, answered = await get(url, **headers)
            assert status == 401, headers
            assert body == {"error": "a bearer token is required"}
            assert answered["WWW-Authenticate"] == "Bearer"
        # RFC 9110: the scheme is case-insensitive, and spaces may separate it from the
        # token; then the request is let through (404: no such consumer yet).
        for value in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN}"):
            status, body, _ = await get(url, Authorization=value)
            assert (status, body) == (404, {"error": "no such consumer"}), value


async def test_a_path_that_is_not_a_uuid_is_a_400_that_says_so(sqlite_url: str) -> None:
    async with serving(sqlite_url, None) as base:
        status, body, _ = await get(base + "not-a-uuid")
    assert (status, body) == (400, {"error": "not a UUID"})


async def test_a_database_that_cannot_answer_is_a_503_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"postgresql+asyncpg://consumergen@127.0.0.1:{free_port()}/consumergen"
    async with serving(down, None) as base:
        status, body, _ = await get(base + str(uuid.uuid4()))
    assert (status, body) == (503, {"error": "the database cannot answer now"})
    warned = []
    for line in caplog.text.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(line)
            if event.get("event") == "read api: database unavailable":
                warned.append(event)
    assert len(warned) == 1 and warned[0]["level"] == "warning"
    assert str(warned[0]["error"]).startswith(("ConnectionRefusedError", "OSError")), warned


async def test_a_single_token_given_as_a_secret_is_required(sqlite_url: str) -> None:
    """The read API given one token as a secret (not a token set) refuses a request
    without it, and lets it through with it: never an open API."""
    await upgrade(settings_for(sqlite_url))
    async with serving(sqlite_url, SecretStr(TOKEN)) as base:
        url = base + str(uuid.uuid4())
        status, body, _ = await get(url)
        assert (status, body) == (401, {"error": "a bearer token is required"})
        status, body, _ = await get(url, Authorization=f"Bearer {TOKEN}")
        assert (status, body) == (404, {"error": "no such consumer"})


async def test_the_read_api_answers_on_the_port_it_is_given_from_a_thread_named_for_it(
    sqlite_url: str,
) -> None:
    """Producers call the configured port, not one the server picks; and a thread dump
    (py-spy, faulthandler) names the read API's thread."""
    await upgrade(settings_for(sqlite_url))
    settings = settings_for(sqlite_url)
    with socket.socket() as held:
        # Bound, not listening, SO_REUSEADDR: the port is ours (nobody else can take
        # it), and the server, binding with SO_REUSEADDR too, can have it.
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port = int(held.getsockname()[1])
        server = read_api_server("127.0.0.1", port, lambda: create_engine(settings), None)
        server.start()
        try:
            assert server.port == port
            assert "read-api-http" in {thread.name for thread in threading.enumerate()}
            status, body, _ = await get(f"http://127.0.0.1:{port}/v1/consumers/{uuid.uuid4()}")
            assert (status, body) == (404, {"error": "no such consumer"})
        finally:
            server.stop()
