"""The probes one at a time (``service.daemon.probes``), beside test_probe_rules.py:
what it does not cover.  A dropped broker connection said on one line and a bug in the
broker probe not taken for an outage (DESIGN.md "Failure classes": infrastructure is
recognised by what it is); a file that is no database failing probe after probe and
then answering again; the lag gauge of several partitions (the worker's own committed
offset preferred to asking the broker, never below zero, none before the end offset is
known); the time parked not counted toward a stall once back.  Over the fake broker's
consumer (``service.testing.fake_kafka``) with the daemon's own membership, pauses,
readiness, metrics and stall watch, and a real SQLite database.  The whole daemon over
the fakes: test_daemon_probes.py, test_stalls.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.daemon.health import Readiness
from service.daemon.membership import Membership
from service.daemon.pauses import Pauses
from service.daemon.ports import WorkerHost
from service.daemon.probes import Probes
from service.daemon.stalls import StallWatch
from service.store.engine import create_engine
from service.testing.fake_edges import fake_settings
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll
from tests.log_lines import named
from tests.unit.test_partition_worker import FakeHost

WITHIN = 8.0
#: The stall bound; short, so that a stall is seen within a test.
STALL = 0.3
#: The probes' request timeout; short, so that a request that never ends is given up on.
REQUEST_TIMEOUT = 0.3
BROKER_LOST = "broker unreachable: parking the Kafka clients"
STALL_LINE = "stalled: failing /livez so that the process is restarted"

Trouble = Callable[..., Awaitable[None]]


def raises(exc: BaseException) -> Trouble:
    async def trouble(*_: Any) -> None:
        raise exc

    return trouble


class NothingApplied:
    """The workers' database: nothing feeds them here, so nothing is applied."""

    async def apply_batch(self, items: Any) -> list[Any]:
        raise AssertionError("no batch is fed to the workers in these tests")


class ProbedConsumer(FakeConsumer):
    """The fake broker's consumer whose metadata and committed-offset requests a test
    can fail (``trouble[request]``, awaited with the request's partitions) and counts
    (``asked``)."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__(broker)
        self.trouble: dict[str, Trouble] = {}
        #: Every request of those, with the partitions it asked about.
        self.asked: list[tuple[str, ...]] = []

    async def _ask(self, request: str, *tps: TopicPartition) -> None:
        self.asked.append((request, *(f"{tp.topic}/{tp.partition}" for tp in tps)))
        trouble = self.trouble.get(request)
        if trouble is not None:
            await trouble(*tps)

    async def topics(self) -> set[str]:
        await self._ask("topics")
        return await super().topics()

    async def committed(self, tp: TopicPartition) -> int | None:
        await self._ask("committed", tp)
        return await super().committed(tp)


@dataclass
class Rig:
    broker: FakeBroker
    consumer: ProbedConsumer
    host: FakeHost
    membership: Membership
    pauses: Pauses
    readiness: Readiness
    probes: Probes
    online: bool = True
    #: How many times the probes said the broker is lost (the daemon then parks).
    lost: list[None] = field(default_factory=list)

    def tp(self, partition: int) -> TopicPartition:
        return self.broker.partitions[partition]

    def value(self, name: str, **labels: str) -> float | None:
        return self.host.metrics.registry.get_sample_value(name, labels)

    def lag(self, partition: int) -> float | None:
        return self.value("consumergen_consumer_lag", topic="events", partition=str(partition))

    def failures(self, kind: str) -> float | None:
        return self.value("consumergen_infrastructure_failures_total", kind=kind)

    def produce(self, partition: int, count: int) -> None:
        for n in range(count):
            self.broker.produce(partition, b"{}", f"k{n}".encode())


@contextlib.asynccontextmanager
async def rig(settings: Settings, partitions: int = 2) -> AsyncIterator[Rig]:
    """The probes of a daemon whose consumer was assigned every partition (a worker
    each, idle: nothing feeds them), online, started and ready."""
    broker = FakeBroker("events", partitions)
    consumer = ProbedConsumer(broker)
    host = FakeHost(NothingApplied())
    readiness = Readiness(started=True)
    pauses = Pauses(lambda: cast(AIOKafkaConsumer, consumer))
    membership = Membership(
        cast(WorkerHost, host),  # FakeHost's sinks are the memory ones: a WorkerHost
        pauses=pauses,
        readiness=readiness,
        metrics=host.metrics,
        revoke_grace=1.0,
    )
    engine: AsyncEngine = create_engine(settings)
    holder: list[Rig] = []
    probes = Probes(
        settings,
        consumer=lambda: cast(AIOKafkaConsumer, consumer),
        engine=engine,
        membership=membership,
        pauses=pauses,
        readiness=readiness,
        metrics=host.metrics,
        online=lambda: holder[0].online,
        broker_lost=lambda: holder[0].lost.append(None),
        stalls=StallWatch(settings.stall_bound),
    )
    holder.append(Rig(broker, consumer, host, membership, pauses, readiness, probes))
    await consumer.start()
    consumer.subscribe(["events"], listener=membership.listener())
    await poll(
        lambda: len(membership.workers) == partitions and not consumer.reassignment_in_progress,
        WITHIN,
        "every partition assigned",
    )
    try:
        yield holder[0]
    finally:
        await membership.stop_all(1.0)
        await broker.close()
        await engine.dispose()


def settings_for(url: str) -> Settings:
    return fake_settings(url, request_timeout_seconds=REQUEST_TIMEOUT, stall_seconds=STALL)


async def bounded(probe: Awaitable[None]) -> None:
    """A probe must end on its own (a request that never ends is given up on)."""
    await asyncio.wait_for(probe, WITHIN)


# -- the broker probe ----------------------------------------------------------------------
async def test_a_dropped_connection_to_the_broker_is_said_on_one_line_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The metadata request ends with the connection dropped (an ``OSError``, its
    message over several lines): /readyz says the broker is not ok and why, on one
    line; counted and logged once, the clients parked once, however many probes find
    it gone.  (The broker refusing or not answering: test_probe_rules.py.)"""
    said = "connection reset by peer"
    async with rig(settings_for(sqlite_url)) as r:
        r.consumer.trouble["topics"] = raises(ConnectionResetError("connection reset\n   by peer"))
        assert r.failures("broker") == 0
        for _ in range(3):
            await bounded(r.probes.probe_broker())
            ready, body = r.readiness.verdict()
            assert not ready
            assert body["broker_ok"] is False and body["database_ok"] is True, body
            assert body["last_error"] == f"broker: {said}"
        assert r.failures("broker") == 1
        assert r.failures("database") == 0
        assert len(r.lost) == 1
    [warning] = named(caplog, BROKER_LOST)
    assert warning["error"] == said
    assert warning["level"] == "warning"


async def test_a_bug_in_the_broker_probe_is_not_taken_for_a_broker_outage(
    sqlite_url: str,
) -> None:
    """Only the broker's failures are an outage (recognised by what they are): a bug
    raised by the request goes up, the broker is still called ok, nothing is parked."""
    async with rig(settings_for(sqlite_url)) as r:
        r.consumer.trouble["topics"] = raises(AttributeError("a bug"))
        with pytest.raises(AttributeError, match="a bug"):
            await bounded(r.probes.probe_broker())
        assert r.readiness.verdict()[1]["broker_ok"] is True
        assert r.failures("broker") == 0 and r.lost == []


# -- the database probe --------------------------------------------------------------------
async def test_a_database_file_that_is_no_database_is_unready_and_logged_as_unexpected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The SQLite file is not a database (something else wrote it): the database is not ok, and
    why; counted and warned about once, and, not being a failure the database's
    infrastructure is known for (busy, locked, gone), logged as unexpected at every
    probe.  A good file again: ok, and said once."""
    path = tmp_path / "consumergen.sqlite3"
    path.write_bytes(b"this is not a database file, " * 100)
    async with rig(settings_for(f"sqlite+aiosqlite:///{path}")) as r:
        said = "DatabaseError: file is not a database"
        for _ in range(2):
            await bounded(r.probes.probe_database())
            ready, body = r.readiness.verdict()
            assert not ready
            assert body["database_ok"] is False and body["broker_ok"] is True, body
            assert body["last_error"] == f"database: {said}"
        assert r.failures("database") == 1
        assert r.failures("broker") == 0
        path.unlink()
        await bounded(r.probes.probe_database())
        assert r.readiness.verdict()[0]
        await bounded(r.probes.probe_database())
    unexpected = named(caplog, "database probe failed unexpectedly")
    assert [(e["level"], e["error"]) for e in unexpected] == [("error", said)] * 2
    [warning] = named(caplog, "database unreachable")
    assert warning["error"] == said
    assert len(named(caplog, "database reachable again")) == 1


# -- the lag ---------------------------------------------------------------------------------
async def test_the_lag_gauge_is_each_partitions_end_minus_its_committed_offset(
    sqlite_url: str,
) -> None:
    """Per partition: the end offset (once fetched) minus the committed offset, the
    worker's own once it knows one (newer than the group's as the broker last said),
    else the group's as asked of the broker; never below zero.  A partition not
    fetched yet has no end offset known, and no lag series yet."""
    async with rig(settings_for(sqlite_url), partitions=4) as r:
        for partition, count in enumerate((5, 4, 6, 3)):
            r.produce(partition, count)
        r.broker.committed.update({r.tp(0): 2, r.tp(1): 4, r.tp(2): 1, r.tp(3): 1})
        r.consumer.pause(r.tp(3))
        await r.consumer.getmany(timeout_ms=0)  # the fetch loop's: ends known for 0-2
        r.consumer.resume(r.tp(3))
        r.membership.workers[r.tp(2)].committed = 4  # it committed since
        await bounded(r.probes.refresh_lag())
        assert [r.lag(p) for p in range(4)] == [3, 0, 2, None]
        assert ("committed", "events/2") not in r.consumer.asked
        r.membership.workers[r.tp(0)].committed = 7  # past the end the consumer knows
        await bounded(r.probes.refresh_lag())
        assert r.lag(0) == 0


# -- stalls ----------------------------------------------------------------------------------
async def probe_round(r: Rig) -> None:
    """The watch's lag and stall steps (``Probes.watch`` runs them each interval)."""
    if r.online:
        await bounded(r.probes.refresh_lag())
    await bounded(r.probes.check_stalls())


async def stalled_within(r: Rig, what: tuple[str, ...]) -> None:
    async def seen() -> bool:
        await probe_round(r)
        return r.readiness.stalled == what

    await poll(seen, WITHIN, f"stalled: {what}", every=0.05)


async def past(moment: float) -> None:
    """Wait until the monotonic clock (the probes' clock) is past ``moment``."""
    await poll(lambda: time.monotonic() > moment, WITHIN, "time passing", every=0.05)


async def test_nothing_is_stalled_while_the_clients_are_parked_and_the_clock_starts_again(
    sqlite_url: str,
) -> None:
    """The broker is away and the clients parked (offline): no partition is called
    stalled however long that lasts, and the time parked does not count once back:
    the partition's clock starts again then."""
    async with rig(settings_for(sqlite_url), partitions=1) as r:
        r.produce(0, 3)
        r.broker.committed[r.tp(0)] = 1
        await r.consumer.getmany(timeout_ms=0)
        await probe_round(r)  # lag seen: the partition's clock starts
        began = time.monotonic()
        r.online = False
        await past(began + STALL * 2)
        await probe_round(r)
        assert r.readiness.stalled == ()
        assert r.readiness.live_verdict()[0]
        r.online = True
        await probe_round(r)
        assert r.readiness.stalled == (), "the time parked was counted as standing still"
        await stalled_within(r, ("events/0",))
