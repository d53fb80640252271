"""A database outage and a broker outage overlap, in either order, with a rebalance
during the database pause, on both databases: afterwards every partition is resumed.

The fault run of issue 21 saw a partition paused for the database, then the broker go
and come back, then that partition never fetched again for minutes while /readyz said
200.  Here two daemons (processes) share four partitions; one database outage and one
broker outage overlap; one daemon dies while partitions are paused for the database (a
rebalance: the other takes its partitions) and starts again once both are back.  Once
both daemons say they are ready, no partition that has events left may stand still for
longer than the stall bound, /livez and the stall gauge must not have fired, and the
database ends in the model's state.

The fast twin over fakes: tests/unit/test_daemon_invariants.py
(``test_a_partition_paused_for_the_database_resumes_after_an_overlapping_broker_outage``).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.embedded.kafka import KafkaBroker
from service.embedded.postgres import PostgresCluster
from service.store.migrate import upgrade
from service.testing.daemon import assert_matches_model, daemon_settings, process_env
from service.testing.daemon_process import DaemonProcess, sample
from service.testing.database import DatabaseLock, consumer_state, inbox
from service.testing.kafka_io import committed_offsets, end_offsets, produce_docs
from service.testing.polling import poll
from service.testing.workload import expected_state, mixed_stream
from tests.daemon.test_broker_restart import create_topics
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

#: The daemons' stall bound (CONSUMERGEN_STALL_SECONDS) in this test, and the longest a
#: partition with events left may stand still once both daemons are ready again.
STALL_SECONDS = 20.0

#: The daemons' shutdown grace, so their revoke grace: the time a revoked partition's
#: batch, stuck on the absent database, holds the rebalance before it is abandoned.
REVOKE_GRACE_SECONDS = 4.0


class Database:
    """The database the daemons write to, and a way to take it away and give it back:
    PostgreSQL's server stopped and started, SQLite held by another writer."""

    def __init__(self, kind: str, sqlite_url: str) -> None:
        self.kind = kind
        self.cluster: PostgresCluster | None = None
        if kind == "postgres":
            # Not under tmp_path: the server runs as an unprivileged user (when tests run
            # as root), which must reach its folder.
            folder = Path(tempfile.mkdtemp(prefix="consumergen-pg-overlap-"))
            self.cluster = PostgresCluster(folder)
            self.cluster.start()
            self.url = self.cluster.url()
        else:
            self.url = sqlite_url
        self._lock = DatabaseLock(self.url)

    async def down(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        else:
            await self._lock.acquire()

    async def up(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.start)
        else:
            await self._lock.release()

    async def close(self) -> None:
        await self._lock.release()
        if self.cluster is not None:
            self.cluster.remove()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[Database]:
    db = Database(request.param, sqlite_url)
    try:
        yield db
    finally:
        await db.close()


def _body(daemon: DaemonProcess) -> dict[str, object]:
    return daemon.readiness() or {}


def _paused_for_database(daemon: DaemonProcess) -> bool:
    body = _body(daemon)
    return bool(body.get("paused_partitions")) and body.get("database_ok") is False


def _broker_gone(daemon: DaemonProcess) -> bool:
    return _body(daemon).get("broker_ok") is False


def _rejoined(daemon: DaemonProcess, before: int) -> bool:
    return _count(daemon, "broker back: consumer rejoining the group") > before


def _count(daemon: DaemonProcess, event: str) -> int:
    return sum(1 for e in daemon.log_events() if e.get("event") == event)


async def _rebalance_during_the_pause(daemons: list[DaemonProcess]) -> DaemonProcess:
    """Once a daemon has partitions paused for the database, a rebalance: the other
    dies (SIGKILL, no goodbye), and once its session expires the paused one takes every
    partition, its paused ones included.  Returns the one that died."""
    await poll(lambda: any(_paused_for_database(d) for d in daemons), 90, "paused: database")
    paused = next(d for d in daemons if _paused_for_database(d))
    victim = next(d for d in daemons if d is not paused)
    victim.kill(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 30)
    await poll(
        lambda: _body(paused).get("assigned_partitions") == 4, 60, "every partition taken over"
    )
    return victim


async def _watch_standstill(
    bootstrap: str, group: str, topic: str, daemons: list[DaemonProcess], within: float
) -> float:
    """Until every partition is committed to its end: the longest time a partition with
    events left went without its committed offset moving.  Each daemon must stay alive
    and live (/livez 200) throughout."""
    ends = await end_offsets(bootstrap, topic)
    last: dict[int, int] = {}
    since: dict[int, float] = {}
    longest = 0.0
    deadline = time.monotonic() + within
    while True:
        committed = await committed_offsets(bootstrap, group, topic)
        now = time.monotonic()
        for partition, end in ends.items():
            offset = committed.get(partition, 0)
            if offset >= end or offset != last.get(partition):
                last[partition] = offset
                since[partition] = now
            longest = max(longest, now - since[partition])
        for daemon in daemons:
            daemon.check_alive()
            live = daemon.get("/livez")
            assert live is not None and live[0] == 200, (daemon.name, live)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return longest
        assert now < deadline, f"not all committed within {within}s: {committed} of {ends}"
        await asyncio.sleep(0.5)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("order", ["database first", "broker first"])
async def test_overlapping_database_and_broker_outages_with_a_rebalance_leave_no_partition_still(
    broker: KafkaBroker, database: Database, order: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = await create_topics(bootstrap)
    stream = mixed_stream(consumers=120, events=4000, seed=2101)
    model = expected_state(stream)
    await upgrade(daemon_settings(bootstrap, database.url, topics))
    env = process_env(
        bootstrap,
        database.url,
        topics,
        batch_max_events=20,
        request_timeout_seconds=5,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        sqlite_busy_timeout_ms=100,
        stall_seconds=STALL_SECONDS,
        # The default 20 s revoke grace was most of this test's time; same path at 4 s.
        shutdown_grace_seconds=REVOKE_GRACE_SECONDS,
    )
    first = DaemonProcess(env, tmp_path, name="first")
    second = DaemonProcess(env, tmp_path, name="second")
    daemons = [first, second]
    try:
        await produce_docs(bootstrap, topics.events, stream[:1000])
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            await asyncio.to_thread(daemon.wait_ready, 60)

        async def working() -> bool:
            offsets = await committed_offsets(bootstrap, topics.group, topics.events)
            return sum(offsets.values()) > 0

        await poll(working, 60, "a first batch committed")
        rejoins = {d.name: _count(d, "broker back: consumer rejoining the group") for d in daemons}

        async def rejoined() -> None:
            for d in daemons:
                await poll(lambda d=d: _rejoined(d, rejoins[d.name]), 120, f"{d.name} rejoined")

        if order == "database first":
            await database.down()
            await produce_docs(bootstrap, topics.events, stream[1000:2000])
            victim = await _rebalance_during_the_pause(daemons)
            survivor = first if victim is second else second
            broker.stop()
            await poll(lambda: _broker_gone(survivor), 60, "broker gone")
            await database.up()
            broker.start()
            await poll(lambda: _rejoined(survivor, rejoins[survivor.name]), 120, "rejoined")
        else:
            broker.stop()
            await poll(lambda: _broker_gone(first) and _broker_gone(second), 60, "broker gone")
            await database.down()
            broker.start()
            await rejoined()
            await produce_docs(bootstrap, topics.events, stream[1000:2000])
            victim = await _rebalance_during_the_pause(daemons)
            await database.up()
        victim.start()
        await produce_docs(bootstrap, topics.events, stream[2000:])
        for daemon in daemons:
            await poll(lambda d=daemon: bool(_body(d).get("ready")), 120, f"{daemon.name} ready")
        longest = await _watch_standstill(bootstrap, topics.group, topics.events, daemons, 300)
        print(f"\n[overlap {order}, {database.kind}] longest standstill {longest:.1f}s")
        assert longest <= STALL_SECONDS, f"a partition stood still {longest:.1f}s"
        for daemon in daemons:
            assert sample(daemon.metrics(), "consumergen_stalled_partitions") == 0
            daemon.kill(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 60) == 0, daemon.tail()
    finally:
        for daemon in daemons:
            daemon.stop()
            scan_daemon_logs(daemon)
    assert_matches_model(await consumer_state(database.url), await inbox(database.url), model)
