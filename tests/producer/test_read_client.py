"""The producer's read client (``service.producer.reads``) against the daemon's real
read API server over a SQLite file, no broker: each answer of the server becomes what
the client promises (a state, None, ``ReadRefused``, ``ReadUnavailable``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from service.config import ConfigError, Settings, load_settings
from service.daemon.read_api import read_api_server
from service.domain.events import EventType
from service.embedded.process import free_port
from service.producer.reads import ConsumerReader, ReadRefused, ReadUnavailable, read_api_url
from service.store.engine import create_engine
from tests.apply.helpers import event, migrated, settings_for

TOKEN = "reader-token"


@contextmanager
def serving(url: str, token: str | None = None) -> Iterator[str]:
    """The read API over the database at ``url``; yields its base URL."""
    settings = settings_for(url)
    secret = None if token is None else SecretStr(token)
    server = read_api_server("127.0.0.1", 0, lambda: create_engine(settings), secret)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@asynccontextmanager
async def reader(base_url: str, token: str | None = None) -> AsyncIterator[ConsumerReader]:
    settings = load_settings(read_api_url=base_url)
    secret = None if token is None else SecretStr(token)
    async with ConsumerReader(settings, token=secret, timeout_seconds=10) as client:
        yield client


async def test_states_absence_and_refusals(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    live, dead, never = (str(uuid.uuid4()) for _ in range(3))
    async with migrated(url) as db:
        await db.applier.apply(
            event(live, EventType.UPSERT, None, project_id="p", user_id="u", consumer_type="VM")
        )
        await db.applier.apply(event(dead, EventType.UPSERT, None))
        await db.applier.apply(event(dead, EventType.DELETE, 1))
    with serving(url, TOKEN) as base:
        async with reader(base + "/", TOKEN) as client:
            state = await client.get(live.upper())
            assert state is not None and state.uuid == live
            assert (state.generation, state.deleted) == (1, False)
            assert (state.project_id, state.user_id, state.consumer_type) == ("p", "u", "VM")
            tombstone = await client.get(dead)
            assert tombstone is not None and (tombstone.generation, tombstone.deleted) == (2, True)
            assert await client.get(never) is None
            with pytest.raises(ReadRefused, match=r"\(400: not a UUID\)"):
                await client.get("not a uuid/..")
        for token in (None, "wrong"):
            async with reader(base, token) as client:
                with pytest.raises(ReadRefused, match=r"\(401: a bearer token is required\)"):
                    await client.get(live)


async def test_a_server_that_cannot_answer_is_unavailable(tmp_path: Path) -> None:
    """A database outage (the server's 503) and no server at all are both "not now"."""
    down = f"postgresql+asyncpg://consumergen@127.0.0.1:{free_port()}/consumergen"
    with serving(down) as base:
        async with reader(base) as client:
            with pytest.raises(ReadUnavailable, match=f"the read API at {base} answered 503"):
                await client.get(str(uuid.uuid4()))
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with reader(nowhere) as client:
        with pytest.raises(ReadUnavailable) as refused:
            await client.get(str(uuid.uuid4()))
    assert str(refused.value).startswith(
        f"the read API at {nowhere} did not answer (ClientConnectorError: Cannot connect to host"
    )


async def test_the_client_must_be_started() -> None:
    client = ConsumerReader(load_settings(read_api_url="http://127.0.0.1:1"))
    with pytest.raises(RuntimeError, match=r"^ConsumerReader is not started \(use 'async with'\)$"):
        await client.get(str(uuid.uuid4()))
    await client.close()  # closing what never started is fine


def test_where_the_read_api_is() -> None:
    assert read_api_url(load_settings(read_api_url="http://reads:9000/")) == "http://reads:9000"
    assert read_api_url(load_settings(read_api_url="http://proxy/X/")) == "http://proxy/X"
    assert (
        read_api_url(load_settings(read_api_host="10.0.0.7", read_api_port=8123))
        == "http://10.0.0.7:8123"
    )
    with pytest.raises(ConfigError, match=r"^CONSUMERGEN_READ_API_URL: not set, and the read"):
        read_api_url(Settings(read_api_port=None))
    with pytest.raises(ConfigError, match="not an http"):
        ConsumerReader(load_settings(read_api_url="ftp://reads"))
    secure = ConsumerReader(load_settings(), base_url="https://reads.example/X/")
    assert secure.base_url == "https://reads.example/X"


@asynccontextmanager
async def answering(status: int | None) -> AsyncIterator[str]:
    """An HTTP server whose every answer is ``status`` with an empty JSON object, or
    none at all (``None``: it never answers); yields its base URL."""
    never = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if status is None:
            await never.wait()
        return web.json_response({}, status=status or 200)

    app = web.Application()
    app.router.add_get("/v1/consumers/{uuid}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        never.set()
        await runner.cleanup()


async def test_a_forbidden_request_is_refused_even_without_a_reason() -> None:
    """A 403 (a proxy in front of the API, say) is the request's fault, not "not now"."""
    async with answering(403) as base, reader(base) as client:
        with pytest.raises(ReadRefused) as refused:
            await client.get(str(uuid.uuid4()))
    assert str(refused.value) == "the read API refused the request (403: )"


async def test_a_server_that_never_answers_is_unavailable_after_the_timeout() -> None:
    """The client's own timeout, else the request timeout setting, bounds a read."""
    async with answering(None) as base:
        client = ConsumerReader(load_settings(), base_url=base + "/", timeout_seconds=0.3)
        by_settings = ConsumerReader(load_settings(request_timeout_seconds=0.3), base_url=base)
        for bounded in (client, by_settings):
            async with bounded:
                with pytest.raises(ReadUnavailable) as refused:
                    await asyncio.wait_for(bounded.get(str(uuid.uuid4())), 20)
            assert str(refused.value) == (
                f"the read API at {base} did not answer (TimeoutError: no detail)"
            )
