"""The probes alone (``service.daemon.probes``), fast: what one probe of the broker or
the database does to /readyz, the failure counters, the log and the partitions paused on
the broker, when it fails, fails again and succeeds; a probe bounded by the request
timeout; and the stall line an operator reads before the restart.

The parts are the real ones (``Readiness``, ``Pauses``, ``Membership`` with its workers
over ``test_partition_worker.FakeHost``, ``StallWatch``) with the fake broker's consumer;
a database that never answers is a TCP relay that holds every connection
(``test_daemon_startup.GatedRelay``), and a file that is no database is one.  The whole
daemon's outages over the fakes: test_daemon_probes.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError

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
from tests.unit.test_daemon_startup import GatedRelay
from tests.unit.test_partition_worker import FakeHost

WITHIN = 20.0
TP0 = TopicPartition("events", 0)
DOWN = "KafkaConnectionError: fake broker is down"


class IdleApplier:
    """The workers' database: never asked here (no record reaches a worker)."""

    async def apply_batch(self, items: Any) -> list[Any]:
        raise AssertionError("the probes' tests feed no worker")


class SilentConsumer(FakeConsumer):
    """A consumer whose broker accepts the connection and never answers."""

    async def topics(self) -> set[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Parts:
    """One ``Probes`` and what it writes to: readiness, metrics, pauses, membership."""

    def __init__(self, settings: Settings, consumer: FakeConsumer, bound: float = 5.0) -> None:
        self.consumer = consumer
        self.online = True
        self.host = FakeHost(IdleApplier())
        self.metrics = self.host.metrics
        self.readiness = Readiness()
        self.pauses = Pauses(lambda: cast(AIOKafkaConsumer, self.consumer))
        self.membership = Membership(
            cast(WorkerHost, self.host),  # FakeHost's sinks are the memory ones
            pauses=self.pauses,
            readiness=self.readiness,
            metrics=self.metrics,
            revoke_grace=1.0,
        )
        self.stalls = StallWatch(bound)
        self.lost = 0
        self.engine = create_engine(settings)
        self.probes = Probes(
            settings,
            consumer=lambda: cast(AIOKafkaConsumer, self.consumer),
            engine=self.engine,
            membership=self.membership,
            pauses=self.pauses,
            readiness=self.readiness,
            metrics=self.metrics,
            online=lambda: self.online,
            broker_lost=self._broker_lost,
            stalls=self.stalls,
        )

    def _broker_lost(self) -> None:
        self.lost += 1

    def failures(self, kind: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "consumergen_infrastructure_failures_total", {"kind": kind}
        )

    def lag(self, tp: TopicPartition) -> float | None:
        return self.metrics.registry.get_sample_value(
            "consumergen_consumer_lag", {"topic": tp.topic, "partition": str(tp.partition)}
        )

    async def close(self) -> None:
        await self.membership.release(list(self.membership.workers))
        await self.engine.dispose()


async def test_a_broker_probe_parks_once_when_lost_and_resumes_its_pauses_once_back(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Lost: /readyz says the broker is not reachable and the error on one line,
    counted and logged once however many probes fail, the clients parked once.  Back:
    reachable, and the partitions paused on the broker resumed.  While it stays
    reachable a probe touches nothing: a worker's own pause on the broker is its own."""
    broker = FakeBroker("events", 1)
    parts = Parts(fake_settings(sqlite_url), FakeConsumer(broker))
    try:
        parts.membership.adopt([TP0])
        parts.pauses.pause(TP0, "broker")
        await parts.probes.probe_broker()
        assert parts.pauses.is_paused(TP0)  # reachable all along: not the probe's pause
        assert parts.readiness.broker_reachable is True

        broker.go_down()
        await parts.probes.probe_broker()
        await parts.probes.probe_broker()
        assert parts.readiness.broker_reachable is False
        assert parts.readiness.last_error == f"broker: {DOWN}"
        assert parts.failures("broker") == 1 and parts.lost == 1
        assert parts.pauses.is_paused(TP0)

        broker.come_up()
        await parts.probes.probe_broker()
        assert parts.readiness.broker_reachable is True
        assert not parts.pauses.is_paused(TP0)
        assert parts.failures("broker") == 1 and parts.lost == 1
    finally:
        await parts.close()
    [parked] = named(caplog, "broker unreachable: parking the Kafka clients")
    assert parked["error"] == DOWN and parked["level"] == "warning"
    [back] = named(caplog, "broker reachable again: resuming")
    assert back["level"] == "info"


async def test_a_broker_probe_that_gets_no_answer_ends_at_the_request_timeout(
    sqlite_url: str,
) -> None:
    settings = fake_settings(sqlite_url, request_timeout_seconds=0.1)
    parts = Parts(settings, SilentConsumer(FakeBroker("events", 1)))
    try:
        await asyncio.wait_for(parts.probes.probe_broker(), WITHIN)
    finally:
        await parts.close()
    assert parts.readiness.broker_reachable is False
    assert parts.readiness.last_error == "broker: TimeoutError"


async def test_a_database_probe_that_gets_no_answer_ends_at_the_request_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that accepts the connection and never answers: the probe gives up at
    the request timeout; unreachable, counted and logged once with the error, and not
    reported as unexpected (a timeout is what an unreachable database looks like)."""
    async with GatedRelay("127.0.0.1", 9) as relay:
        url = f"postgresql+asyncpg://nobody@127.0.0.1:{relay.port}/none"
        parts = Parts(
            fake_settings(url, request_timeout_seconds=0.1), FakeConsumer(FakeBroker("events", 1))
        )
        try:
            await asyncio.wait_for(parts.probes.probe_database(), WITHIN)
            await asyncio.wait_for(parts.probes.probe_database(), WITHIN)
        finally:
            await parts.close()
    assert parts.readiness.database_reachable is False
    assert parts.readiness.last_error == "database: TimeoutError: "
    assert parts.failures("database") == 1
    [unreachable] = named(caplog, "database unreachable")
    assert unreachable["error"] == "TimeoutError: " and unreachable["level"] == "warning"
    assert not named(caplog, "database probe failed unexpectedly")


async def test_a_database_probe_failing_in_an_unexpected_way_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that is no database: not a passing outage, so besides making the database
    unready the probe logs it as an error, with the driver's words."""
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is no SQLite database, just bytes " * 100)
    settings = fake_settings(f"sqlite+aiosqlite:///{path}")
    parts = Parts(settings, FakeConsumer(FakeBroker("events", 1)))
    try:
        await parts.probes.probe_database()
    finally:
        await parts.close()
    said = "DatabaseError: file is not a database"
    assert parts.readiness.database_reachable is False
    assert parts.readiness.last_error == f"database: {said}"
    [unexpected] = named(caplog, "database probe failed unexpectedly")
    assert unexpected["error"] == said and unexpected["level"] == "error"
    [unreachable] = named(caplog, "database unreachable")
    assert unreachable["error"] == said


async def test_a_stall_is_logged_as_an_error_naming_what_stands_still(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    parts = Parts(fake_settings(sqlite_url), FakeConsumer(FakeBroker("events", 1)))
    try:
        parts.stalls.polled(time.monotonic() - 60)  # the fetch loop's last poll, long ago
        await parts.probes.check_stalls()
        await parts.probes.check_stalls()  # logged when it begins, not at every probe
    finally:
        await parts.close()
    assert parts.readiness.stalled == ("fetch loop",)
    [stalled] = named(caplog, "stalled: failing /livez so that the process is restarted")
    assert stalled["stalled"] == "fetch loop" and stalled["bound_seconds"] == 5.0
    assert stalled["level"] == "error"


class HangingCommitted(FakeConsumer):
    """A consumer whose broker never answers the committed-offset request."""

    async def committed(self, tp: TopicPartition) -> int | None:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Unlistened(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: object) -> None:
        return None


TP1 = TopicPartition("events", 1)


async def fetched_both(consumer: FakeConsumer) -> None:
    """``consumer`` assigned both partitions and has fetched from each, so that it knows
    their high watermarks (as aiokafka's does after a fetch)."""
    await consumer.start()
    consumer.subscribe(["events"], listener=Unlistened())
    await poll(lambda: consumer.assignment() == {TP0, TP1}, WITHIN, "assigned")
    await consumer.getmany(timeout_ms=0)


async def test_the_lag_probe_asks_each_unknown_committed_offset_once_and_skips_a_failure(
    sqlite_url: str,
) -> None:
    """The lag is the high watermark minus the committed offset (asked of the broker
    for a partition whose worker has not committed yet).  A partition whose committed
    offset cannot be had now is skipped; the next one is still measured."""
    broker = FakeBroker("events", 2)
    for partition, count in ((0, 5), (1, 3)):
        for _ in range(count):
            broker.produce(partition, b"{}")
    broker.committed.update({TP0: 2, TP1: 1})
    consumer = FakeConsumer(broker)
    parts = Parts(fake_settings(sqlite_url), consumer)
    try:
        await fetched_both(consumer)
        parts.membership.adopt([TP0, TP1])  # in this order: partition 0 is asked first
        await parts.probes.refresh_lag()
        assert parts.lag(TP0) == 3 and parts.lag(TP1) == 2
        assert [w.committed for w in parts.membership.workers.values()] == [2, 1]

        parts.membership.workers[TP0].committed = None  # unknown again
        broker.produce(1, b"{}")
        broker.go_down()  # partition 0's committed offset cannot be had
        await parts.probes.refresh_lag()
        assert parts.membership.workers[TP0].committed is None
        assert parts.lag(TP1) == 3  # measured all the same
    finally:
        broker.come_up()
        await parts.close()
        await broker.close()


async def test_the_lag_probe_gives_up_on_a_committed_offset_that_never_comes(
    sqlite_url: str,
) -> None:
    broker = FakeBroker("events", 2)
    consumer = HangingCommitted(broker)
    parts = Parts(fake_settings(sqlite_url), consumer)
    try:
        await fetched_both(consumer)
        parts.membership.adopt([TP0, TP1])
        await asyncio.wait_for(parts.probes.refresh_lag(), WITHIN)
        assert all(w.committed is None for w in parts.membership.workers.values())
    finally:
        await parts.close()
        await broker.close()


# -- partition stalls ----------------------------------------------------------------------
BOUND = 0.05
STALLED = ("events/0",)


class EndOffsets(FakeConsumer):
    """A consumer whose end-offset request fails as ``outcome`` says ("hang": no answer)."""

    def __init__(self, broker: FakeBroker, outcome: BaseException | str) -> None:
        super().__init__(broker)
        self.outcome = outcome
        self.asked = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def lagging_broker() -> FakeBroker:
    """Partition 0 has 5 records of which 2 are committed: lag, and nothing moves."""
    broker = FakeBroker("events", 2)
    for _ in range(5):
        broker.produce(0, b"{}")
    broker.committed[TP0] = 2
    return broker


async def stands_still(parts: Parts) -> None:
    """Probe until partition 0 is reported stalled (its lag unmoved for the bound)."""

    async def stalled() -> bool:
        await parts.probes.check_stalls()
        return parts.readiness.stalled == STALLED

    await poll(stalled, WITHIN, "partition 0 stalled", every=BOUND / 2)


async def test_a_partition_stall_needs_the_end_offset_the_consumer_has_not_fetched_yet(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Never fetched (a stalled partition may be just that): its end is asked of the
    broker, and the partition with lag that did not commit for the bound is stalled."""
    broker = lagging_broker()
    parts = Parts(fake_settings(sqlite_url), FakeConsumer(broker), BOUND)
    try:
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        await stands_still(parts)
    finally:
        await parts.close()
        await broker.close()
    [logged] = named(caplog, "stalled: failing /livez so that the process is restarted")
    assert logged["stalled"] == "events/0"


async def test_a_fetched_partition_stalls_on_its_known_end_while_the_broker_is_down(
    sqlite_url: str,
) -> None:
    """Fetched once, the consumer knows the end (the high watermark) without asking."""
    broker = lagging_broker()
    consumer = FakeConsumer(broker)
    parts = Parts(fake_settings(sqlite_url), consumer, BOUND)
    try:
        await fetched_both(consumer)
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        broker.go_down()
        await stands_still(parts)
    finally:
        broker.come_up()
        await parts.close()
        await broker.close()


async def test_a_stall_ends_when_the_partition_is_paused_or_given_to_a_new_worker(
    sqlite_url: str,
) -> None:
    """Standing still while paused (backpressure, an outage) is no stall, and a new
    worker (a new assignment) starts the clock again."""
    broker = lagging_broker()
    parts = Parts(fake_settings(sqlite_url), FakeConsumer(broker), BOUND)
    try:
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        await stands_still(parts)
        parts.pauses.pause(TP0, "database")
        await parts.probes.check_stalls()
        assert parts.readiness.stalled == ()
        parts.pauses.resume(TP0, "database")
        await stands_still(parts)
        await parts.membership.release([TP0])
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        await parts.probes.check_stalls()
        assert parts.readiness.stalled == ()
    finally:
        await parts.close()
        await broker.close()


async def test_no_partition_stalls_while_the_clients_are_parked(sqlite_url: str) -> None:
    """Parked (the broker gone, ``service.daemon.outage``), nothing can flow: a partition
    that stood still is no longer reported."""
    broker = lagging_broker()
    parts = Parts(fake_settings(sqlite_url), FakeConsumer(broker), BOUND)
    try:
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        await stands_still(parts)
        parts.online = False
        await parts.probes.check_stalls()
        assert parts.readiness.stalled == ()
    finally:
        await parts.close()
        await broker.close()


@pytest.mark.parametrize(
    "outcome",
    [KafkaConnectionError("fake broker is down"), OSError("connection reset"), "hang"],
    ids=["kafka-error", "os-error", "no-answer"],
)
async def test_an_end_offset_that_cannot_be_had_leaves_the_partition_unjudged(
    sqlite_url: str, outcome: BaseException | str
) -> None:
    """The end cannot be asked now (the broker down, the connection reset, no answer
    within the request timeout): the probe goes on, and a partition whose end is
    unknown is not called stalled."""
    broker = lagging_broker()
    consumer = EndOffsets(broker, outcome)
    settings = fake_settings(sqlite_url, request_timeout_seconds=0.1)
    parts = Parts(settings, consumer, BOUND)
    try:
        parts.membership.adopt([TP0])
        parts.membership.workers[TP0].committed = 2
        await asyncio.wait_for(parts.probes.check_stalls(), WITHIN)
        await poll(lambda: consumer.asked >= 1, WITHIN, "the end asked")
        began = time.monotonic()
        while time.monotonic() - began <= BOUND * 2:  # longer than the bound
            await asyncio.wait_for(parts.probes.check_stalls(), WITHIN)
        assert parts.readiness.stalled == ()
    finally:
        await parts.close()
        await broker.close()
