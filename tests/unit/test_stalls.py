"""Stalls are seen (DESIGN.md, *Stalls*; ``service.daemon.stalls``): the rules alone, then
the whole daemon over the fakes (``service.testing.fake_kafka``) failing /livez and
showing the gauges when a fetch loop or a partition stands still, and not when a
partition is paused or idle.  The real broker's twin: tests/daemon/test_liveness.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition

from service.config import ConfigError, load_settings
from service.daemon.app import Daemon
from service.daemon.stalls import PartitionView, StallWatch
from service.store.errors import TransientDatabaseError
from service.store.migrate import upgrade
from service.testing.fake_edges import FakeApplier, daemon_over_fakes, fake_edges, fake_settings
from service.testing.fake_kafka import FakeBroker
from service.testing.model import event_doc
from service.testing.polling import poll

TP = TopicPartition("events", 0)
OWNER = object()
BOUND = 10.0


def view(
    committed: int | None, end: int | None, paused: bool = False, owner: object = OWNER
) -> PartitionView:
    return PartitionView(owner=owner, committed=committed, end=end, paused=paused)


# -- the rules ---------------------------------------------------------------------------
def test_a_partition_with_lag_that_does_not_commit_for_longer_than_the_bound_is_stalled() -> None:
    watch = StallWatch(BOUND)
    assert watch.stalled_partitions(0.0, {TP: view(5, 9)}) == []
    assert watch.stalled_partitions(BOUND, {TP: view(5, 9)}) == []  # at the bound: not yet
    assert watch.stalled_partitions(BOUND + 0.1, {TP: view(5, 9)}) == [TP]


def test_progress_a_pause_idleness_or_a_new_owner_starts_the_clock_again() -> None:
    for interruption in (
        view(6, 9),
        view(5, 9, paused=True),
        view(9, 9),
        view(5, 9, owner=object()),
    ):
        watch = StallWatch(BOUND)
        watch.stalled_partitions(0.0, {TP: view(5, 9)})
        watch.stalled_partitions(8.0, {TP: interruption})
        later = view(interruption.committed, 12, owner=interruption.owner)
        assert watch.stalled_partitions(8.0 + BOUND, {TP: later}) == [], interruption
        assert watch.stalled_partitions(8.1 + BOUND, {TP: later}) == [TP], interruption


def test_a_paused_or_idle_partition_is_never_stalled() -> None:
    watch = StallWatch(BOUND)
    for now in (0.0, BOUND * 5, BOUND * 50):
        assert watch.stalled_partitions(now, {TP: view(5, 9, paused=True)}) == []
    idle = TopicPartition("events", 1)
    for now in (0.0, BOUND * 5, BOUND * 50):
        assert watch.stalled_partitions(now, {idle: view(7, 7)}) == []
    unknown = TopicPartition("events", 2)  # the committed offset not known yet
    for now in (0.0, BOUND * 5, BOUND * 50):
        assert watch.stalled_partitions(now, {unknown: view(None, 7)}) == []


def test_each_partition_is_judged_on_its_own_and_the_stalled_are_listed_in_order() -> None:
    """Several partitions seen at once: one whose clock starts (new, or just committed)
    does not keep those after it from being judged; every stalled one is named, in
    topic and partition order whatever the order the probe saw them in (the gauge,
    /livez's body and the log name the same list)."""
    watch = StallWatch(BOUND)
    p10, p2, p3 = (TopicPartition("events", p) for p in (10, 2, 3))
    other = TopicPartition("audit", 7)
    seen = {p10: view(5, 9), p2: view(5, 9), other: view(5, 9), p3: view(5, 9)}
    assert watch.stalled_partitions(0.0, seen) == []
    # Partition 10 commits (its clock starts again), the others stand still past the bound.
    seen[p10] = view(6, 9)
    assert watch.stalled_partitions(BOUND + 1, seen) == [other, p2, p3]
    assert watch.stalled_partitions(BOUND * 2 + 2, seen) == [other, p2, p3, p10]


def test_a_fetch_loop_that_does_not_poll_is_stalled_unless_the_broker_is_away() -> None:
    watch = StallWatch(BOUND)
    assert not watch.fetch_loop_stalled(100.0, online=True)  # not polling yet: starting
    watch.polled(0.0)
    assert not watch.fetch_loop_stalled(BOUND, online=True)
    assert watch.fetch_loop_stalled(BOUND + 0.1, online=True)
    assert not watch.fetch_loop_stalled(BOUND * 9, online=False)  # parked: waiting is right
    assert not watch.fetch_loop_stalled(BOUND * 10, online=True)  # the clock starts again
    watch.polled(BOUND * 10)
    assert watch.fetch_loop_stalled(BOUND * 11.5, online=True)


def test_the_stall_bound_must_be_below_the_poll_interval_limit() -> None:
    assert load_settings(stall_seconds=299, max_poll_interval_ms=300_000).stall_seconds == 299
    with pytest.raises(
        ConfigError, match=r"CONSUMERGEN_STALL_SECONDS: .*CONSUMERGEN_MAX_POLL_INTERVAL_MS"
    ):
        load_settings(stall_seconds=300, max_poll_interval_ms=300_000)
    with pytest.raises(ConfigError, match="CONSUMERGEN_STALL_SECONDS"):
        load_settings(stall_seconds=0)
    assert load_settings().stall_bound == 120  # unset: the default
    assert load_settings(max_poll_interval_ms=100_000).stall_bound == 40  # below the limit


# -- the daemon over fakes ---------------------------------------------------------------
STALL = 0.6


@pytest.fixture
async def database(sqlite_url: str) -> str:
    await upgrade(fake_settings(sqlite_url))
    return sqlite_url


def produce(broker: FakeBroker, partition: int, count: int) -> None:
    for n in range(count):
        consumer = f"00000000-0000-4000-8000-{partition:04d}{n:08d}"
        doc = event_doc(consumer, project="p", user="u")
        broker.produce(partition, json.dumps(doc).encode(), consumer.encode())


async def livez(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}/livez"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def gauge(daemon: Daemon, name: str) -> float:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not served")


async def test_a_wedged_fetch_loop_fails_livez_and_shows_in_metrics(database: str) -> None:
    broker = FakeBroker("events", 2)
    wedged = asyncio.Event()

    async def on_fetch(*_: Any) -> None:
        if wedged.is_set():
            await asyncio.Event().wait()  # this fetch never returns

    broker.on_fetch = on_fetch
    fakes = fake_edges(broker)
    settings = fake_settings(database, stall_seconds=STALL)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None and daemon.readiness.started, 10, "started")
        assert await gauge(daemon, "consumergen_fetch_loop_stalled") == 0
        assert await gauge(daemon, "consumergen_stalled_partitions") == 0
        produce(broker, 0, 2)
        await poll(broker.all_committed, 10, "a first batch committed")
        for _ in range(3):  # polling while idle: alive for several bounds
            await asyncio.sleep(STALL)
            assert (await livez(daemon))[0] == 200
        wedged.set()
        produce(broker, 1, 1)

        async def dead() -> bool:
            return (await livez(daemon))[0] == 503

        await poll(dead, 10, "/livez failing")
        _, body = await livez(daemon)
        assert body["stalled"] == ["fetch loop"], body
        assert await gauge(daemon, "consumergen_fetch_loop_stalled") == 1


async def test_a_partition_with_lag_and_no_progress_fails_livez_a_paused_or_idle_one_does_not(
    database: str,
) -> None:
    """Partition 0's transaction fails (the database, for it alone) for several bounds:
    paused, not a stall.  It recovers; then a later transaction of it hangs without
    failing: unpaused, lag, no progress: a stall.  Partition 1 flows, then idles for
    all that time: never a stall."""
    broker = FakeBroker("events", 2)
    mode = {"partition 0": "works"}

    async def before_apply(items: Any) -> None:
        if any(source.partition == 0 for _, source in items):
            if mode["partition 0"] == "fails":
                raise TransientDatabaseError("down for partition 0")
            if mode["partition 0"] == "hangs":
                await asyncio.Event().wait()

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    settings = fake_settings(database, stall_seconds=STALL)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None and daemon.readiness.started, 10, "started")
        produce(broker, 1, 3)
        mode["partition 0"] = "fails"
        produce(broker, 0, 3)
        await poll(lambda: bool(daemon.readiness.failing), 10, "partition 0 paused")
        for _ in range(3):
            await asyncio.sleep(STALL)
            assert (await livez(daemon))[0] == 200, "a paused partition called a stall"
        mode["partition 0"] = "works"
        await poll(broker.all_committed, 10, "partition 0 resumed and committed")
        mode["partition 0"] = "hangs"
        produce(broker, 0, 1)

        async def dead() -> bool:
            return (await livez(daemon))[0] == 503

        await poll(dead, 10, "/livez failing")
        _, body = await livez(daemon)
        assert body["stalled"] == ["events/0"], body
        assert await gauge(daemon, "consumergen_stalled_partitions") == 1
        assert await gauge(daemon, "consumergen_fetch_loop_stalled") == 0


async def test_a_parking_that_fails_stops_the_daemon_loudly_instead_of_standing_still(
    database: str,
) -> None:
    """Parking the clients at a broker outage fails on a bug (here the sinks' producer
    cannot be dropped): the clients would stay parked and the fetch loop wait for good,
    which no probe calls a stall (the broker is away).  The daemon stops on it."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)

    async def abandon() -> None:
        raise RuntimeError("a bug while dropping the producer")

    fakes.producer.abandon = abandon  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="stopped on a bug: RuntimeError"):
        async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
            await poll(lambda: daemon.readiness.started, 10, "started")
            broker.go_down()
            await poll(lambda: daemon.fatal_error is not None, 10, "the daemon stopping")
