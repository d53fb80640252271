"""GET /v1/consumers/{uuid} over real HTTP on both databases, and under load beside a
daemon that is applying: every answer right, ``/readyz`` ready throughout; and with the
read API's loop wedged outright, probes and applying go on without it."""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml
from pydantic import SecretStr

from service.daemon.app import Daemon
from service.daemon.read_api import read_api_server
from service.domain.events import EventType
from service.logging.redaction import find_clear_uuid
from service.store.engine import create_engine
from service.testing.daemon import Topics, assert_matches_model, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.apply.helpers import Db, event

TopicFactory = Callable[..., Awaitable[str]]


async def test_answers_and_token(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    live, dead, never = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await db.applier.apply(
        event(live, EventType.UPSERT, None, project_id="p-1", user_id="u-1", consumer_type="VM")
    )
    await db.applier.apply(event(dead, EventType.UPSERT, None))
    await db.applier.apply(event(dead, EventType.DELETE, 1))
    token = "s3cret-token"
    server = read_api_server("127.0.0.1", 0, lambda: create_engine(db.settings), SecretStr(token))
    server.start()
    base = f"http://127.0.0.1:{server.port}/v1/consumers/"
    bearer = {"Authorization": f"Bearer {token}"}
    caplog.set_level(logging.INFO)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + live.upper(), headers=bearer) as response:
                assert response.status == 200
                body = await response.json()
            assert body["consumer_uuid"] == live and body["state"] == "live"
            assert (body["generation"], body["project_id"], body["user_id"]) == (1, "p-1", "u-1")
            assert body["consumer_type"] == "VM" and body["updated_at"].endswith("Z")
            async with http.get(base + dead, headers=bearer) as response:
                body = await response.json()
                assert response.status == 200 and body["state"] == "deleted"
                assert body["generation"] == 2
            async with http.get(base + never, headers=bearer) as response:
                assert response.status == 404
            async with http.get(base + "not-a-uuid", headers=bearer) as response:
                assert response.status == 400
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                async with http.get(base + live, headers=headers) as response:
                    assert response.status == 401
                    assert response.headers["WWW-Authenticate"] == "Bearer"
            async with http.get(f"http://127.0.0.1:{server.port}/livez") as response:
                assert response.status == 404  # the probes are the health server's
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "http request" in r.getMessage()]
    assert len(lines) == 7  # one per request but the probe path
    text = caplog.text
    assert "/v1/consumers/uuid:" in text and find_clear_uuid(text) is None
    assert token not in text


async def test_tokens_rotate_through_a_file_with_no_refused_moment(
    db: Db, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over real HTTP: the old token alone, then old and new together (producers roll
    over with none refused), then the new one alone and the old one refused at once;
    no token is ever logged."""
    from service.daemon.read_tokens import ReadApiTokens

    consumer = str(uuid.uuid4())
    await db.applier.apply(event(consumer, EventType.UPSERT, None))
    file = tmp_path / "read-api-tokens"
    file.write_text("old-token-aaaa\n")
    tokens = ReadApiTokens(["fixed-token-cccc"], file)
    server = read_api_server("127.0.0.1", 0, lambda: create_engine(db.settings), tokens)
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1/consumers/{consumer}"
    caplog.set_level(logging.INFO)

    async def status(http: aiohttp.ClientSession, token: str) -> int:
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status

    def swap(text: str) -> None:
        fresh = tmp_path / "next"
        fresh.write_text(text)
        fresh.replace(file)

    try:
        async with aiohttp.ClientSession() as http:
            assert [await status(http, t) for t in ("old-token-aaaa", "new-token-bbbb")] == [
                200,
                401,
            ]
            swap("old-token-aaaa\nnew-token-bbbb\n")
            assert [await status(http, t) for t in ("old-token-aaaa", "new-token-bbbb")] == [
                200,
                200,
            ]
            swap("new-token-bbbb\n")
            assert [await status(http, t) for t in ("old-token-aaaa", "new-token-bbbb")] == [
                401,
                200,
            ]
            assert await status(http, "fixed-token-cccc") == 200  # the settings' own
    finally:
        server.stop()
    for token in ("old-token-aaaa", "new-token-bbbb", "fixed-token-cccc"):
        assert token not in caplog.text


@pytest.mark.kafka
async def test_concurrent_reads_while_applying(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    stream = mixed_stream(consumers=100, events=3000, seed=14)
    uuids = sorted({doc["consumer_uuid"] for doc in stream})
    async with serving_daemon(kafka_bootstrap, sqlite_url, new_topic) as (daemon, topics):
        assert daemon.health is not None and daemon.read_api is not None
        port, read_port = daemon.health.port, daemon.read_api.port

        async def produce_and_apply() -> None:
            await produce_docs(kafka_bootstrap, topics.events, stream)
            await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=120)

        applying = asyncio.create_task(produce_and_apply())
        probes: list[tuple[int, float]] = []
        statuses: list[int] = []
        stopped = threading.Event()
        limits = aiohttp.TCPConnector(limit=0)  # 200 connections at once, no client cap
        async with aiohttp.ClientSession(connector=limits) as session:

            def probe() -> None:
                """From a thread of its own, so that the times are the server's, not
                those of this test's loop (busy with the daemon and the 200 readers)."""
                while not stopped.is_set():
                    probes.append(get(port, "/readyz"))
                    stopped.wait(0.02)

            async def read(uuid_: str) -> None:
                url = f"http://127.0.0.1:{read_port}/v1/consumers/{uuid_}"
                async with session.get(url) as r:
                    await r.read()
                    statuses.append(r.status)

            prober = asyncio.create_task(asyncio.to_thread(probe))
            rounds = 0
            while not applying.done() or rounds < 3:  # 200 at once, while it applies
                await asyncio.gather(*(read(uuids[i % len(uuids)]) for i in range(200)))
                rounds += 1
            await applying
            stopped.set()
            await prober
    assert set(statuses) <= {200, 404} and statuses.count(200) > 0
    assert len(statuses) == rounds * 200
    slowest = max(seconds for _, seconds in probes)
    print(
        f"{len(statuses)} reads in {rounds} rounds of 200; /readyz max "
        f"{slowest * 1000:.1f} ms over {len(probes)} probes"
    )
    # Ready throughout, each answer within the readiness probe's own timeout (past it,
    # Kubernetes counts a failure).  Speed is the benchmarks' business; that the probes
    # never wait for the read API is proven without a clock by the wedged test below.
    assert {status for status, _ in probes} == {200}
    assert slowest < readiness_timeout()


async def test_probes_and_applying_go_on_while_the_read_api_is_wedged(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    """The read API's loop blocked outright (not slow: stopped): ``/readyz`` and
    ``/livez`` still answer and the daemon still applies every event, so neither is
    served by, nor waits on, the read API; once released, the read it held answers."""
    stream = mixed_stream(consumers=30, events=600, seed=15)
    wedged, release = threading.Event(), threading.Event()

    def wedge() -> None:
        wedged.set()
        release.wait()  # blocks the read API's loop until the test releases it

    async with serving_daemon(kafka_bootstrap, sqlite_url, new_topic) as (daemon, topics):
        assert daemon.health is not None and daemon.read_api is not None
        port, read_port = daemon.health.port, daemon.read_api.port
        url = f"http://127.0.0.1:{read_port}/v1/consumers/{stream[0]['consumer_uuid']}"
        async with aiohttp.ClientSession() as session:

            async def held_read() -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            daemon.read_api.call_soon_threadsafe(wedge)
            try:
                assert await asyncio.to_thread(wedged.wait, 10), "the read API never wedged"
                pending = asyncio.create_task(held_read())
                await produce_docs(kafka_bootstrap, topics.events, stream)
                await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=120)
                answers = [await asyncio.to_thread(get, port, path) for path in PROBES]
                assert [status for status, _ in answers] == [200, 200], answers
                assert not pending.done(), "the read API answered: it was not wedged"
            finally:
                release.set()
            assert await asyncio.wait_for(pending, 30) == 200
    assert_matches_model(
        await consumer_state(sqlite_url), await inbox(sqlite_url), expected_state(stream)
    )


PROBES = ("/readyz", "/livez")


def get(port: int, path: str) -> tuple[int, float]:
    """Status and seconds of one GET, given up after the readiness probe's timeout."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=readiness_timeout())
    began = time.perf_counter()
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - began
    finally:
        connection.close()


def readiness_timeout() -> float:
    """``timeoutSeconds`` of the shipped Deployment's readiness probe."""
    manifest = yaml.safe_load(DEPLOYMENT.read_text())
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return float(container["readinessProbe"]["timeoutSeconds"])


DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "deployment.yaml"


@asynccontextmanager
async def serving_daemon(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> AsyncIterator[tuple[Daemon, Topics]]:
    """A ready in-process daemon on topics of its own, with its health and read API."""
    topics = Topics(
        events=await new_topic(partitions=2, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, batch_max_events=50)
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        yield daemon, topics
