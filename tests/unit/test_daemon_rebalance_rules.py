"""What a revocation and a broker outage leave behind, fast: the whole daemon over the
fakes (``service.testing.fake_kafka``, ``fake_edges``), no broker.

Each test reads what a user of Kafka and of the daemon's endpoints could see: which
partitions the consumer paused and how far it fetched, whether a consumer's close
finished, what /metrics serves.  The invariants themselves (nothing skipped, nothing
committed early, outages parked and resumed) are ``test_daemon_invariants.py``'s; these
hold the bookkeeping around them, which a mutation run found unwatched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.daemon.app import Daemon
from service.daemon.ports import DaemonEdges
from service.store.errors import TransientDatabaseError
from service.testing.fake_edges import (
    FakeApplier,
    FakeEdges,
    daemon_over_fakes,
    fake_edges,
    fake_settings,
    migrated_sqlite,
    produce_new_consumers,
)
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll

WITHIN = 20.0


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("rebalance"))


def lag_series(daemon: Daemon) -> dict[str, float]:
    """``consumergen_consumer_lag`` as /metrics serves it: partition -> value."""
    text = generate_latest(daemon.metrics.registry).decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "consumergen_consumer_lag":
            for sample in family.samples:
                found[sample.labels["partition"]] = sample.value
    return found


def log_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The JSON log lines, without their timestamp and logger."""
    found = []
    for line in caplog.text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        found.append({k: v for k, v in event.items() if k not in ("timestamp", "logger")})
    return found


def gauge(daemon: Daemon, name: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name)


# -- a revoked partition's pause reasons go with it -----------------------------------
async def test_a_partition_paused_for_backpressure_and_revoked_is_paused_again_when_it_fills(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Partition 0's transaction hangs, so its worker's queue fills and the partition is
    paused (backpressure: bounded memory).  It is revoked and assigned again: the new
    worker's queue fills again, and the partition must be paused again; a pause reason
    kept from before the revocation would make the daemon think it still paused, and
    fetch everything into memory."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    gate = asyncio.Event()

    async def before_apply(items: Any) -> None:
        await gate.wait()

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    # batch_max_events 1: a worker with 4 queued is paused (``DaemonWorkerHost.high_water``).
    settings = fake_settings(database, batch_max_events=1)
    async with daemon_over_fakes(settings, fakes):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 30)
        consumer = fakes.current_consumer()
        await poll(lambda: tp in consumer.paused(), WITHIN, "paused for backpressure")
        first_stop = consumer.position_of(tp)
        assert first_stop is not None and first_stop < broker.end(tp)

        await broker.rebalance()  # revoked (its hanging batch abandoned), assigned again
        await poll(fakes.assigned_everything, WITHIN, "assigned again")

        def settled() -> bool:
            return tp in consumer.paused() or consumer.position_of(tp) == broker.end(tp)

        await poll(settled, WITHIN, "paused again, or everything fetched")
        assert tp in consumer.paused(), "a revoked partition's old pause reason was kept"
        position = consumer.position_of(tp)
        assert position is not None and position < broker.end(tp)
        gate.set()
        await poll(broker.all_committed, WITHIN, "everything committed once the gate opens")
    # The revocation said what it did: the batch in flight abandoned after the grace.
    logged = log_events(caplog)
    membership = [
        {k: v for k, v in e.items() if k != "level"}
        for e in logged
        if e["event"].startswith(("partitions ", "revoked partitions", "batch abandoned"))
    ]
    assert membership == [
        {"event": "partitions revoked", "count": 0, "total": 0},  # the join: nothing yet
        {"event": "partitions assigned", "count": 1, "total": 1},
        {"event": "batch abandoned at stop", "partition": "events/0", "grace_seconds": 1.0},
        {
            "event": "revoked partitions left a batch unfinished; the next owner redoes it",
            "abandoned_batches": 1,
        },
        {"event": "partitions revoked", "count": 1, "total": 0},
        {"event": "partitions assigned", "count": 1, "total": 1},
    ]
    [stopping] = [e for e in logged if e["event"] == "daemon stopping"]
    assert stopping == {
        "level": "info",
        "event": "daemon stopping",
        "partitions": 1,
        "abandoned_batches": 0,
    }


# -- a revocation takes the partition's series and count with it -----------------------
async def test_a_revoked_partition_leaves_the_lag_series_and_the_assigned_count(
    database: str,
) -> None:
    """Both partitions commit, and /metrics has a lag series for each; partition 0 is
    revoked (handed to another member): its series goes (a stale lag of a partition this
    daemon no longer reads would page an operator for nothing), partition 1's stays, and
    the assigned-partitions gauge and /readyz's count say 1."""
    broker = FakeBroker("events", 2)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 2)
        produce_new_consumers(broker, 1, 2)
        await poll(broker.all_committed, WITHIN, "committed")
        await poll(lambda: set(lag_series(daemon)) == {"0", "1"}, WITHIN, "a lag series each")
        assert lag_series(daemon) == {"0": 0.0, "1": 0.0}
        assert gauge(daemon, "consumergen_assigned_partitions") == 2
        assert daemon.readiness.verdict()[1]["assigned_partitions"] == 2

        await broker.revoke_only(fakes.current_consumer(), {broker.partitions[0]})
        await poll(lambda: set(lag_series(daemon)) == {"1"}, WITHIN, "partition 0's series gone")
        assert gauge(daemon, "consumergen_assigned_partitions") == 1
        assert daemon.readiness.verdict()[1]["assigned_partitions"] == 1
        produce_new_consumers(broker, 1, 1)
        await poll(
            lambda: broker.committed.get(broker.partitions[1]) == 3, WITHIN, "partition 1 flows"
        )
        await asyncio.sleep(0.1)  # several probe intervals: the series does not come back
        assert set(lag_series(daemon)) == {"1"}


# -- the old consumer's stop at a parking: bounded for the parking, never cut short -----
CLOSE_SECONDS = 1.5


class SlowToClose(FakeConsumer):
    """Leaves the group at once, then takes ``CLOSE_SECONDS`` to close (as aiokafka's
    stop waits for its heartbeat and fetch tasks); ``closed`` once that is done."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__(broker)
        self.closed = False

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await asyncio.sleep(CLOSE_SECONDS)
            self.closed = True


@dataclasses.dataclass
class SlowToCloseEdges(FakeEdges):
    @property
    def edges(self) -> DaemonEdges:
        return dataclasses.replace(super().edges, make_consumer=lambda: SlowToClose(self.broker))


async def test_the_old_consumers_stop_at_a_parking_is_bounded_and_never_cut_short(
    database: str,
) -> None:
    """The broker goes: the clients are parked, the old consumer stopped.  Its close takes
    longer than the request timeout: the parking goes on after that bound (the broker is
    back meanwhile: a new consumer joins and works while the old one is still closing),
    and the old one's close is let finish in the background, not cut short (cut short,
    aiokafka's consumer keeps its heartbeat and fetch tasks running: a member of the
    group that never fetches)."""
    broker = FakeBroker("events", 2)
    plain = fake_edges(broker)
    fakes = SlowToCloseEdges(
        plain.broker, plain.producer, plain.dead_letters, plain.outcomes, plain.applier
    )
    settings = fake_settings(database, request_timeout_seconds=0.3)
    async with daemon_over_fakes(settings, fakes):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 1)
        await poll(broker.all_committed, WITHIN, "a first event committed")
        old = fakes.current_consumer()
        assert isinstance(old, SlowToClose)
        broker.go_down()
        await poll(lambda: old.stopped, WITHIN, "the old consumer stopping (parked)")
        broker.come_up()
        await poll(
            lambda: fakes.current_consumer() is not old and fakes.assigned_everything(),
            WITHIN,
            "a new consumer joined",
        )
        produce_new_consumers(broker, 1, 1)
        await poll(broker.all_committed, WITHIN, "the new consumer working")
        assert not old.closed, "the parking waited for the old consumer's close"
        await poll(
            lambda: old.closed, CLOSE_SECONDS * 4, "the old consumer's close finished, not cut"
        )


# -- backpressure: paused at the high-water mark, resumed below half of it ---------------
class Recorded(FakeConsumer):
    """Records, at each pause and resume of a partition, how many of its fetched records
    the daemon had not yet taken into a batch (``queued``)."""

    def __init__(self, broker: FakeBroker, taken: list[int]) -> None:
        super().__init__(broker)
        self._taken = taken
        self.flow: list[tuple[str, int]] = []

    def _queued(self, tp: TopicPartition) -> int:
        position = self.position_of(tp)
        assert position is not None
        return position - (max(self._taken, default=-1) + 1)

    def pause(self, *tps: TopicPartition) -> None:
        self.flow += [("pause", self._queued(tp)) for tp in tps]
        super().pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.flow += [("resume", self._queued(tp)) for tp in tps]
        super().resume(*tps)


async def test_backpressure_pauses_at_the_high_water_mark_and_resumes_below_half_of_it(
    database: str,
) -> None:
    """One event per batch (``batch_max_events`` 1: a high-water mark of 4 queued
    records), each batch let through by the test one at a time: the partition is paused
    once 4 or more records wait, and resumed only once fewer than 2 do (not at every
    batch, which would make it flap); everything is then applied in order."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    taken: list[int] = []
    permits = asyncio.Semaphore(0)

    async def before_apply(items: Any) -> None:
        taken.extend(source.offset for _, source in items)
        await permits.acquire()

    plain = fake_edges(broker, FakeApplier(before_apply=before_apply))

    @dataclasses.dataclass
    class RecordedEdges(FakeEdges):
        @property
        def edges(self) -> DaemonEdges:
            return dataclasses.replace(
                super().edges, make_consumer=lambda: Recorded(self.broker, taken)
            )

    fakes = RecordedEdges(
        plain.broker, plain.producer, plain.dead_letters, plain.outcomes, plain.applier
    )
    async with daemon_over_fakes(fake_settings(database, batch_max_events=1), fakes):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        consumer = fakes.current_consumer()
        assert isinstance(consumer, Recorded)
        produce_new_consumers(broker, 0, 16)
        await poll(lambda: tp in consumer.paused(), WITHIN, "paused")
        for done in range(16):
            permits.release()
            await poll(lambda done=done: len(fakes.applier.applied) > done, WITHIN, f"batch {done}")
        await poll(broker.all_committed, WITHIN, "everything committed")
    assert [s.offset for s in fakes.applier.applied] == list(range(16))
    pauses = [queued for what, queued in consumer.flow if what == "pause"]
    resumes = [queued for what, queued in consumer.flow if what == "resume"]
    assert pauses and all(queued >= 4 for queued in pauses), consumer.flow
    assert 4 in pauses or 5 in pauses, consumer.flow  # at the mark (a fetch brings 2)
    assert resumes and all(queued < 2 for queued in resumes), consumer.flow
    assert 1 in resumes, consumer.flow  # as soon as fewer than half wait


# -- a parking does not wait for in-flight batches -------------------------------------------
async def test_a_parking_abandons_a_batch_in_flight_at_once_rather_than_after_the_grace(
    database: str,
) -> None:
    """A batch hangs in its transaction when the broker goes.  Finishing it would need
    the broker (its acknowledgements, its offset commit), so the parking does not give it
    the revocation grace (20 s here): the clients are parked well within that, and the
    batch, not committed, is applied again once the broker is back."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def before_apply(items: Any) -> None:
        entered.set()
        await gate.wait()

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    settings = fake_settings(database, shutdown_grace_seconds=30.0)
    async with daemon_over_fakes(settings, fakes) as daemon:
        assert daemon.revoke_grace == 20.0
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 1)
        await poll(entered.is_set, WITHIN, "a batch in its transaction")
        old = fakes.current_consumer()
        broker.go_down()
        await poll(lambda: old.stopped, 10.0, "parked within half the grace")
        broker.come_up()
        gate.set()
        await poll(broker.all_committed, WITHIN, "the abandoned batch done again")
    assert [s.offset for s in fakes.applier.applied] == [0]
    assert broker.committed[tp] == 1


# -- a partition revoked while paused by the database no longer holds readiness down -------
async def test_a_partition_revoked_while_paused_by_the_database_no_longer_holds_readiness(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Partition 0's transaction fails (the database, for it alone): paused, /readyz 503
    naming it.  It is revoked (another member takes it): its retrying is given up and
    said so, and /readyz no longer names it; the daemon is ready with partition 1."""
    broker = FakeBroker("events", 2)

    async def before_apply(items: Any) -> None:
        if any(source.partition == 0 for _, source in items):
            raise TransientDatabaseError("down for partition 0")

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 2)
        await poll(
            lambda: daemon.readiness.verdict()[1]["paused_partitions"] == ["events/0"],
            WITHIN,
            "partition 0 paused",
        )
        assert not daemon.readiness.verdict()[0]
        assert gauge(daemon, "consumergen_paused_partitions") == 1
        await broker.revoke_only(fakes.current_consumer(), {broker.partitions[0]})
        await poll(lambda: daemon.readiness.verdict()[0], WITHIN, "ready without partition 0")
        assert daemon.readiness.verdict()[1]["paused_partitions"] == []
        assert gauge(daemon, "consumergen_paused_partitions") == 0
        produce_new_consumers(broker, 1, 1)
        tp1 = broker.partitions[1]
        await poll(lambda: broker.committed.get(tp1) == 1, WITHIN, "partition 1 flows")
    given_up = [
        e
        for e in log_events(caplog)
        if e["event"] == "retrying partition given up: revoked or stopping"
    ]
    assert given_up == [
        {
            "level": "info",
            "event": "retrying partition given up: revoked or stopping",
            "partition": "events/0",
        }
    ]


# -- the lag of a partition that falls behind ----------------------------------------------
async def test_the_lag_is_the_end_offset_less_the_committed_one(database: str) -> None:
    """Two events committed, then the transaction hangs while five more arrive: /metrics
    says 5 behind (end 7, committed 2); once they are done, 0."""
    broker = FakeBroker("events", 1)
    gate = asyncio.Event()
    gate.set()

    async def before_apply(items: Any) -> None:
        await gate.wait()

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 2)
        await poll(broker.all_committed, WITHIN, "two committed")
        gate.clear()
        produce_new_consumers(broker, 0, 5)
        await poll(lambda: lag_series(daemon).get("0") == 5, WITHIN, "5 behind")
        gate.set()
        await poll(broker.all_committed, WITHIN, "caught up")
        await poll(lambda: lag_series(daemon).get("0") == 0, WITHIN, "0 behind")
