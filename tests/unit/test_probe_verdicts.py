"""The probes one at a time (``service.daemon.probes``): what /readyz and /livez then say
(``Readiness.verdict``, ``live_verdict``), the lag gauge per partition, how a failure is
classed (DESIGN.md "Failure classes": the broker's and the database's own failures make
the daemon unready; anything else is a bug or is logged as unexpected) and what is
logged.  Over the fake broker's consumer (``service.testing.fake_kafka``), whose
requests a test can fail or hold, with the daemon's own membership, pauses, readiness,
metrics and stall watch, and a real database (SQLite, or a TCP listener that never
answers).  The whole daemon over the fakes: test_daemon_probes.py, test_stalls.py."""

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
from aiokafka.errors import KafkaConnectionError
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
from tests.log_lines import logged
from tests.unit.test_partition_worker import FakeHost

WITHIN = 8.0
#: The stall bound; short, so that a stall is seen within a test.
STALL = 0.3
#: The probes' request timeout; short, so that a request that never ends is given up on.
REQUEST_TIMEOUT = 0.3
BROKER_LOST = "broker unreachable: parking the Kafka clients"
STALL_LINE = "stalled: failing /livez so that the process is restarted"

Trouble = Callable[..., Awaitable[None]]


async def never_answers(*_: Any) -> None:
    await asyncio.Event().wait()


def raises(exc: BaseException) -> Trouble:
    async def trouble(*_: Any) -> None:
        raise exc

    return trouble


class NothingApplied:
    """The workers' database: nothing feeds them here, so nothing is applied."""

    async def apply_batch(self, items: Any) -> list[Any]:
        raise AssertionError("no batch is fed to the workers in these tests")


class ProbedConsumer(FakeConsumer):
    """The fake broker's consumer whose metadata, end-offset and committed-offset
    requests a test can fail or hold (``trouble[request]``, awaited with the request's
    partitions), as a broker that refuses, drops the connection or never answers."""

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

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        await self._ask("end_offsets", *tps)
        return await super().end_offsets(tps)

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


def events_named(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [e for e in logged(caplog) if e.get("event") == name]


async def bounded(probe: Awaitable[None]) -> None:
    """A probe must end on its own (a request that never ends is given up on)."""
    await asyncio.wait_for(probe, WITHIN)


# -- the broker probe ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trouble", "said"),
    [
        (None, "KafkaConnectionError: fake broker is down"),
        (raises(ConnectionResetError("connection reset\n   by peer")), "connection reset by peer"),
        (never_answers, "TimeoutError"),
    ],
    ids=["refused", "connection-dropped", "never-answers"],
)
async def test_a_broker_found_gone_makes_readyz_say_so_once_and_parks_the_clients(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, trouble: Trouble | None, said: str
) -> None:
    """The metadata request fails as the broker's failures do (refused, a connection
    dropped, no answer within the request timeout): /readyz says the broker is not ok
    and why, on one line (an error without a message by its class); the failure is
    counted and logged once, and the clients are parked once, however many probes
    find it gone."""
    async with rig(settings_for(sqlite_url)) as r:
        if trouble is None:
            r.broker.go_down()
        else:
            r.consumer.trouble["topics"] = trouble
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
    [warning] = events_named(caplog, BROKER_LOST)
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


async def test_a_broker_found_back_says_so_once_and_lifts_only_the_brokers_pauses(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker answers again after a probe found it gone: /readyz says it is ok
    again, it is logged once (not at every later probe), and each partition paused for
    the broker resumes unless another reason still holds it (a failing step's)."""
    async with rig(settings_for(sqlite_url), partitions=3) as r:
        p0, p1, p2 = (r.tp(p) for p in range(3))
        r.broker.go_down()
        await bounded(r.probes.probe_broker())
        assert r.readiness.verdict()[1]["broker_ok"] is False
        r.pauses.pause(p0, "broker")
        r.pauses.pause(p1, "broker")
        r.pauses.pause(p1, "infrastructure")
        r.pauses.pause(p2, "backpressure")
        assert r.consumer.paused() == {p0, p1, p2}
        r.broker.come_up()
        await bounded(r.probes.probe_broker())
        ready, body = r.readiness.verdict()
        assert ready and body["broker_ok"] is True, body
        assert r.consumer.paused() == {p1, p2}
        assert not r.pauses.is_paused(p0)
        assert r.pauses.is_paused(p1) and r.pauses.is_paused(p2)
        for _ in range(2):
            await bounded(r.probes.probe_broker())
        assert r.readiness.verdict()[0]
        assert r.failures("broker") == 1
    assert len(events_named(caplog, "broker reachable again: resuming")) == 1


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
    unexpected = events_named(caplog, "database probe failed unexpectedly")
    assert [(e["level"], e["error"]) for e in unexpected] == [("error", said)] * 2
    [warning] = events_named(caplog, "database unreachable")
    assert warning["error"] == said
    assert len(events_named(caplog, "database reachable again")) == 1


async def test_a_database_that_never_answers_is_unready_within_the_request_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL address that accepts connections and never answers (a hung server,
    a black-holed network): the probe gives up after the request timeout (the driver's
    own connect timeout is a minute) and calls it what it is, the database unreachable,
    not an unexpected failure."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql+asyncpg://consumergen:secret@127.0.0.1:{port}/consumergen"
    try:
        async with rig(settings_for(url)) as r:
            await bounded(r.probes.probe_database())
            assert accepted, "the probe never dialled the database"
            ready, body = r.readiness.verdict()
            assert not ready and body["database_ok"] is False, body
            assert body["last_error"].startswith("database: TimeoutError"), body
            assert r.failures("database") == 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert events_named(caplog, "database probe failed unexpectedly") == []
    [warning] = events_named(caplog, "database unreachable")
    assert str(warning["error"]).startswith("TimeoutError"), warning


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


async def test_a_committed_offset_not_read_now_is_asked_again_and_the_others_go_on(
    sqlite_url: str,
) -> None:
    """The group's committed offset cannot be read for the first partition the probe
    looks at (refused) nor for the second (no answer: given up after a bound): they
    have no lag yet, and the partition after them does; the next probe asks again and
    they have."""
    async with rig(settings_for(sqlite_url), partitions=3) as r:
        for partition in range(3):
            r.produce(partition, 5)
        r.broker.committed.update({r.tp(0): 1, r.tp(1): 2, r.tp(2): 3})
        await r.consumer.getmany(timeout_ms=0)
        first, second, third = r.membership.workers  # the order the probe looks in

        async def troubled(tp: TopicPartition) -> None:
            if tp == first:
                raise KafkaConnectionError("connection refused")
            if tp == second:
                await never_answers()

        r.consumer.trouble["committed"] = troubled
        await bounded(r.probes.refresh_lag())
        assert (r.lag(first.partition), r.lag(second.partition)) == (None, None)
        assert r.lag(third.partition) == 5 - r.broker.committed[third]
        del r.consumer.trouble["committed"]
        await bounded(r.probes.refresh_lag())
        assert [r.lag(p) for p in range(3)] == [4, 3, 2]


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


async def test_a_partition_not_fetched_yet_is_judged_by_the_brokers_end_offset(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition the fetch loop has not fetched (which is what a stalled one may be)
    has no end offset at the consumer: it is asked of the broker, so that a partition
    with lag that does not commit is still seen standing still.  /livez fails naming
    it, the gauge counts it, and it is logged once, with the bound."""
    async with rig(settings_for(sqlite_url), partitions=1) as r:
        r.produce(0, 3)
        r.broker.committed[r.tp(0)] = 1
        await stalled_within(r, ("events/0",))
        alive, body = r.readiness.live_verdict()
        assert not alive and body["stalled"] == ["events/0"]
        assert r.value("consumergen_stalled_partitions") == 1
        assert r.value("consumergen_fetch_loop_stalled") == 0
        assert ("end_offsets", "events/0") in r.consumer.asked
        for _ in range(2):
            await probe_round(r)
        assert r.readiness.stalled == ("events/0",)
    [line] = events_named(caplog, STALL_LINE)
    assert line["level"] == "error"
    assert line["stalled"] == "events/0"
    assert line["bound_seconds"] == STALL


@pytest.mark.parametrize(
    "trouble",
    [
        raises(KafkaConnectionError("connection refused")),
        raises(ConnectionResetError("connection reset by peer")),
        never_answers,
    ],
    ids=["refused", "connection-dropped", "never-answers"],
)
async def test_end_offsets_that_cannot_be_read_leave_that_partition_unjudged_only(
    sqlite_url: str, trouble: Trouble
) -> None:
    """The broker's end offsets cannot be read now (refused, a connection dropped, no
    answer within the request timeout): the partition not fetched yet is not judged
    (its end is unknown), the probe goes on, and the partition fetched before, whose
    end the consumer knows without asking, is still seen standing still."""
    async with rig(settings_for(sqlite_url), partitions=2) as r:
        r.consumer.pause(r.tp(1))
        r.produce(0, 3)
        r.produce(1, 3)
        r.broker.committed.update({r.tp(0): 1, r.tp(1): 1})
        await r.consumer.getmany(timeout_ms=0)  # partition 0 only: 1 stays paused
        r.consumer.resume(r.tp(1))
        r.consumer.trouble["end_offsets"] = trouble
        await stalled_within(r, ("events/0",))
        assert {a for a in r.consumer.asked if a[0] == "end_offsets"} == {
            ("end_offsets", "events/1")
        }


async def test_a_paused_partition_is_never_stalled_its_unpaused_neighbour_is(
    sqlite_url: str,
) -> None:
    """Both partitions have lag and do not commit; partition 0 is paused (its worker
    has enough queued): waiting is right for it, not a stall.  Partition 1 is."""
    async with rig(settings_for(sqlite_url), partitions=2) as r:
        for partition in range(2):
            r.produce(partition, 4)
        r.broker.committed.update({r.tp(0): 1, r.tp(1): 1})
        await r.consumer.getmany(timeout_ms=0)
        r.pauses.pause(r.tp(0), "backpressure")
        await stalled_within(r, ("events/1",))
        began = time.monotonic()
        await past(began + STALL * 2)
        await probe_round(r)
        assert r.readiness.stalled == ("events/1",)
        assert r.value("consumergen_stalled_partitions") == 1


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


async def test_a_partition_assigned_anew_starts_its_clock_again_at_the_same_offset(
    sqlite_url: str,
) -> None:
    """A rebalance hands the partition to a new worker (this member again) that finds
    the same committed offset: the new owner has not stood still yet, so the time
    before it does not count; it is stalled only a whole bound after its assignment."""
    bound = 1.2
    settings = fake_settings(
        sqlite_url, request_timeout_seconds=REQUEST_TIMEOUT, stall_seconds=bound
    )
    async with rig(settings, partitions=1) as r:
        r.produce(0, 3)
        r.broker.committed[r.tp(0)] = 1
        await r.consumer.getmany(timeout_ms=0)
        await probe_round(r)  # lag seen: the partition's clock starts
        began = time.monotonic()
        old = r.membership.workers[r.tp(0)]
        await past(began + bound * 0.6)
        await r.broker.rebalance()
        assert r.membership.workers[r.tp(0)] is not old
        await probe_round(r)  # the new worker's committed offset: 1 again
        await past(began + bound + 0.05)
        await probe_round(r)
        assert r.readiness.stalled == (), "the previous owner's time was counted"
        await stalled_within(r, ("events/0",))
