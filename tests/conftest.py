"""Session-wide real infrastructure (one Kafka broker and one PostgreSQL cluster per run)
and the suite's shared fixtures: fresh databases, migrated databases, fresh topics.

Both are started by the project's own launchers (service/embedded) unless pointed at
existing servers with CONSUMERGEN_TEST_BOOTSTRAP_SERVERS / CONSUMERGEN_TEST_POSTGRES_URL.
A server that cannot start is an error, never a skip: a skipped real test is not a pass.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.apply.applier import Applier
from service.config import load_settings
from service.embedded.kafka import KafkaBroker
from service.embedded.postgres import PostgresCluster, create_database, drop_database
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.testing.daemon import Topics
from tests.apply.helpers import Db, migrated

# Extra pytest plugins of the suite (the whole-suite log and span guards register here).
pytest_plugins: list[str] = ["log_guard", "span_guard"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutation testing (scripts/mutation: mutmut names the mutant being tested in
    MUTANT_UNDER_TEST and stops at the first failure), run the cheap tests first: tests
    without a database, then SQLite, then PostgreSQL. Most mutants fail a cheap test, so
    they are settled in seconds instead of after every database test. Order is otherwise
    untouched."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return

    def cost(item: pytest.Item) -> int:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"postgres_url", "postgres_server_url"} or "[postgres" in item.nodeid:
            return 2
        return 1 if names & {"database_url", "db", "sqlite_url"} else 0

    items.sort(key=cost)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker | None]:
    """The broker this session started, or None when pointed at an existing one."""
    if os.environ.get("CONSUMERGEN_TEST_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    pid = broker.process.pid if broker.process else "?"
    print(
        f"\n[infra] Kafka broker pid {pid} on {broker.bootstrap_servers}, "
        f"started in {broker.started_in:.1f}s"
    )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker | None) -> str:
    """host:port of the session's broker."""
    if kafka_broker is None:
        return os.environ["CONSUMERGEN_TEST_BOOTSTRAP_SERVERS"]
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster | None]:
    """The PostgreSQL cluster this session made, or None when pointed at an existing server."""
    if os.environ.get("CONSUMERGEN_TEST_POSTGRES_URL"):
        yield None
        return
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-pg-")))
    cluster.start()
    pid = cluster.process.pid if cluster.process else "?"
    print(
        f"\n[infra] PostgreSQL pid {pid} on port {cluster.port}, "
        f"started in {cluster.started_in:.1f}s"
    )
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres_server_url(postgres_cluster: PostgresCluster | None) -> str:
    """asyncpg URL of the session's PostgreSQL server, maintenance database."""
    if postgres_cluster is None:
        return os.environ["CONSUMERGEN_TEST_POSTGRES_URL"]
    return postgres_cluster.url()


async def _fresh_database(server_url: str) -> AsyncIterator[str]:
    """A fresh database on the session's server; on a server the session did not start
    (CONSUMERGEN_TEST_POSTGRES_URL, e.g. scripts/mutation's, shared by many runs) it is
    dropped after the test. The session's own cluster is removed whole at its end."""
    url = await create_database(server_url, prefix="t")
    yield url
    if os.environ.get("CONSUMERGEN_TEST_POSTGRES_URL"):
        await drop_database(server_url, url)


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test (same server for the session)."""
    async for url in _fresh_database(postgres_server_url):
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'consumergen.sqlite3'}"


@pytest.fixture
async def applier(sqlite_url: str) -> AsyncIterator[Applier]:
    """A real ``Applier`` on a fresh, migrated SQLite file: what the partition worker's
    tests over in-memory sinks apply through (the worker's own rules are theirs to
    test; the database is the real one)."""
    settings = load_settings(database_url=sqlite_url)
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        yield Applier(SqlUnitOfWorkFactory(engine), settings)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield str(request.getfixturevalue("sqlite_url"))
        return
    async for url in _fresh_database(request.getfixturevalue("postgres_server_url")):
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    """A migrated database (SQLite file and PostgreSQL, via ``database_url``) per test."""
    async with migrated(database_url) as handle:
        yield handle


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics: ``await new_topic(partitions=3)`` returns the name."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    async def create(
        partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None
    ) -> str:
        """``config``: topic configs, e.g. ``{"max.message.bytes": "4194304"}``."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        # Creation is asynchronous: wait until every partition has a leader, or the
        # first produce gets NotLeaderForPartition and retries (with warnings).
        for _ in range(200):
            described = await admin.describe_topics([name])
            parts = described[0].get("partitions") or []
            if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                return name
            await asyncio.sleep(0.05)
        raise AssertionError(f"topic {name} has no leaders 10 s after creation")

    try:
        yield create
    finally:
        await admin.close()


@pytest.fixture
async def topics(new_topic: TopicFactory) -> Topics:
    """A daemon's fresh events (4 partitions), dead-letter and outcomes topics and group."""
    events = await new_topic(partitions=4, prefix="events")
    dlq = await new_topic(partitions=1, prefix="dlq")
    outcomes = await new_topic(partitions=2, prefix="outcomes")
    return Topics(events, dlq, outcomes, group=f"group-{uuid.uuid4().hex[:8]}")
