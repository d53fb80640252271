"""The daemon's invariants, fast: the whole daemon (fetch loop, membership, pauses,
broker outages, offset commits, partition workers) over a fake broker, memory sinks and
a fake applier (``service.testing.fake_kafka``, ``fake_edges``), no broker.

One test per invariant, named after it.  Each reads only what a user of Kafka and of the
sinks could see: what the consumer committed and when, which partitions it paused, which
consumers were stopped, what the sinks received in which order, what was applied.  None
reads the daemon's private state or counts its batches or requests, so the daemon's
pipeline may be rebuilt under them (issue 22) and they still hold it to the same promises.

The slow twins over the real broker and databases are in tests/daemon/ (test_poison,
test_database_outage, test_broker_gone, test_chaos_crash, test_overlapping_outages).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from service.daemon.retries import install_retry_hooks
from service.domain.outcomes import EventSource
from service.sinks.base import SinkUnavailable
from service.store.errors import TransientDatabaseError
from service.store.migrate import upgrade
from service.testing.fake_edges import (
    FakeApplier,
    FakeEdges,
    daemon_over_fakes,
    fake_edges,
    fake_settings,
)
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.model import event_doc
from service.testing.polling import poll

WITHIN = 20.0
#: A property test's example handles a few dozen records in well under a second; a
#: broken daemon that stalls fails it after this long instead (times many examples).
WITHIN_EXAMPLE = 10.0
#: No shrinking: a failing example is reported as drawn, at once (mutation testing runs
#: these tests against many broken daemons; each stalled example costs WITHIN_EXAMPLE).
PROPERTY = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- set-up --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file for the module: the daemon reads its schema at start and
    probes it; the events go to the fake applier."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('inv') / 'consumergen.sqlite3'}"
    asyncio.run(upgrade(fake_settings(url)))
    install_retry_hooks()
    return url


def produce_events(broker: FakeBroker, partition: int, count: int) -> list[int]:
    offsets = []
    for _ in range(count):
        consumer = str(uuid.uuid4())
        doc = event_doc(consumer, project="p", user="u")
        offsets.append(broker.produce(partition, json.dumps(doc).encode(), consumer.encode()))
    return offsets


def produce_invalid(broker: FakeBroker, partition: int) -> int:
    return broker.produce(partition, b"not json", b"key")


def applied(fakes: FakeEdges, tp: TopicPartition) -> list[int]:
    return [s.offset for s in fakes.applier.applied if s.partition == tp.partition]


def outcomes_of(fakes: FakeEdges, tp: TopicPartition) -> list[int]:
    return [offset for part, offset in fakes.outcomes.sources() if part == tp.partition]


def first_occurrences(offsets: list[int]) -> list[int]:
    seen: set[int] = set()
    firsts = []
    for offset in offsets:
        if offset not in seen:
            seen.add(offset)
            firsts.append(offset)
    return firsts


def daemon_consumer(fakes: FakeEdges) -> FakeConsumer:
    return fakes.current_consumer()


def assigned_everything(fakes: FakeEdges) -> Callable[[], bool]:
    def check() -> bool:
        broker = fakes.broker
        consumer = daemon_consumer(fakes)
        wanted = {tp for tp in broker.partitions if tp not in broker.reserved}
        return consumer.in_group and consumer.assignment() == wanted

    return check


def all_committed(fakes: FakeEdges) -> Callable[[], bool]:
    return fakes.broker.all_committed


class CommitAudit:
    """At every commit: everything below the committed offset was applied and has its
    outcome record, and every dead letter it needs, in the sinks already."""

    def __init__(self, fakes: FakeEdges) -> None:
        self.fakes = fakes
        self.violations: list[str] = []
        #: Offsets of records that are dead letters (invalid or failed), per partition.
        self.dead: dict[int, set[int]] = {}
        #: Offsets of invalid records (never applied), per partition.
        self.invalid: dict[int, set[int]] = {}

    async def __call__(self, consumer: FakeConsumer, offsets: dict[TopicPartition, int]) -> None:
        fakes = self.fakes
        for tp, offset in offsets.items():
            done = set(applied(fakes, tp)) | self.invalid.get(tp.partition, set())
            reported = set(outcomes_of(fakes, tp))
            lettered = {
                letter.origin.offset
                for letter in fakes.dead_letters.letters
                if letter.origin.partition == tp.partition
            }
            for below in range(offset):
                if below not in done:
                    self.violations.append(f"{tp.partition}@{below} committed before applied")
                if below not in reported:
                    self.violations.append(f"{tp.partition}@{below} committed before its outcome")
                if below in self.dead.get(tp.partition, set()) and below not in lettered:
                    self.violations.append(
                        f"{tp.partition}@{below} committed before its dead letter"
                    )


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# -- 1. no record skipped or applied twice at any batch boundary ------------------------
#: One fake's behaviour at one call: how many loop turns it takes, and whether it fails.
STEP = st.tuples(st.integers(0, 6), st.booleans())


class Script:
    """Plays a hypothesis-drawn list of (turns, fail) steps, then passes for ever."""

    def __init__(self, steps: list[tuple[int, bool]], error: Callable[[], Exception]) -> None:
        self._steps: Iterator[tuple[int, bool]] = iter(steps)
        self._error = error

    async def __call__(self, *_: Any) -> None:
        delay, fail = next(self._steps, (0, False))
        await turns(delay)
        if fail:
            raise self._error()


@settings(PROPERTY, max_examples=25)
@given(
    batch_max=st.integers(1, 4),
    arrivals=st.lists(
        st.tuples(st.integers(0, 1), st.integers(1, 6), st.integers(0, 8)), min_size=1, max_size=8
    ),
    apply_steps=st.lists(STEP, max_size=12),
    sink_steps=st.lists(STEP, max_size=12),
    commit_steps=st.lists(STEP, max_size=12),
    fetch_turns=st.lists(st.integers(0, 6), max_size=12),
)
def test_no_record_is_skipped_or_applied_twice_at_any_batch_boundary(
    database: str,
    batch_max: int,
    arrivals: list[tuple[int, int, int]],
    apply_steps: list[tuple[int, bool]],
    sink_steps: list[tuple[int, bool]],
    commit_steps: list[tuple[int, bool]],
    fetch_turns: list[int],
) -> None:
    """Records arrive in bursts (some while the previous batch of their partition is
    still being applied, acknowledged or committed); the applier, the sinks and the
    commits each take their drawn number of loop turns and fail when drawn to (the
    database, the broker: infrastructure).  Every record is applied exactly once, in
    offset order, has exactly one outcome record, and is committed."""

    async def scenario() -> None:
        broker = FakeBroker("events", 2)
        fetch_delays = iter(fetch_turns)

        async def on_fetch(*_: Any) -> None:
            await turns(next(fetch_delays, 0))

        broker.on_fetch = on_fetch
        broker.on_sink = Script(sink_steps, lambda: SinkUnavailable("drawn", kind="broker"))
        broker.on_commit = Script(commit_steps, lambda: KafkaConnectionError("drawn"))
        applier = FakeApplier(
            before_apply=Script(apply_steps, lambda: TransientDatabaseError("drawn"))
        )
        fakes = fake_edges(broker, applier)
        audit = CommitAudit(fakes)
        commit_script = broker.on_commit

        async def audited_commit(
            consumer: FakeConsumer, offsets: dict[TopicPartition, int]
        ) -> None:
            await commit_script(consumer, offsets)
            await audit(consumer, offsets)

        broker.on_commit = audited_commit
        config = fake_settings(database, batch_max_events=batch_max)
        async with daemon_over_fakes(config, fakes):
            await poll(assigned_everything(fakes), WITHIN_EXAMPLE, "assigned", every=0.005)
            for partition, count, pause in arrivals:
                produce_events(broker, partition, count)
                await turns(pause)
            await poll(all_committed(fakes), WITHIN_EXAMPLE, "all committed", every=0.005)
        for tp in broker.partitions:
            end = broker.end(tp)
            assert applied(fakes, tp) == list(range(end)), f"applied {tp}"
            assert outcomes_of(fakes, tp) == list(range(end)), f"outcomes {tp}"
            assert broker.committed.get(tp, 0) == end
        assert audit.violations == []

    asyncio.run(scenario())


# -- 2. an offset is committed only after its batch's transaction and every ack --------
class Held:
    """Holds one step of partition 0 (pending, or failing on the infrastructure) until
    released; partition 1 goes through."""

    def __init__(self, mode: str, error: Callable[[], Exception]) -> None:
        self.mode = mode
        self._error = error
        self.released = asyncio.Event()
        self.entered = asyncio.Event()

    async def __call__(self, partition: int) -> None:
        if partition != 0 or self.released.is_set():
            return
        self.entered.set()
        if self.mode == "pending":
            await self.released.wait()
        else:
            raise self._error()


def _partitions_of(items: Any) -> set[int]:
    found = set()
    for item in items:
        if isinstance(item, tuple):  # the applier's (event, source)
            found.add(item[1].partition)
        elif hasattr(item, "origin"):  # a dead letter
            found.add(item.origin.partition)
        else:  # an outcome record
            found.add(json.loads(item.value)["source"]["partition"])
    return found


@pytest.mark.parametrize("mode", ["pending", "failing"])
@pytest.mark.parametrize("step", ["transaction", "dead_letters", "outcomes"])
async def test_an_offset_is_committed_only_after_its_batch_transaction_and_every_sink_ack(
    database: str, step: str, mode: str
) -> None:
    """Partition 0's transaction, or its dead letters' or outcome records' acknowledgement,
    is held (pending, or failing with the infrastructure's error) while partition 1
    flows and commits past everything it has (commits carry every partition: a commit of
    partition 0 that did not wait would go with them).  Partition 0 stays uncommitted
    until its step is released; then everything commits, each commit after what it
    covers is applied, reported and dead-lettered."""
    broker = FakeBroker("events", 2)
    error: Callable[[], Exception] = (
        (lambda: TransientDatabaseError("held"))
        if step == "transaction"
        else (lambda: SinkUnavailable("held", kind="broker"))
    )
    held = Held(mode, error)

    async def hold(items: Any) -> None:
        for partition in _partitions_of(items):
            await held(partition)

    async def on_sink(sink: str, items: Any) -> None:
        if sink == step:
            await hold(items)

    broker.on_sink = on_sink
    applier = FakeApplier(
        before_apply=hold if step == "transaction" else FakeApplier().before_apply,
        # every third event loses every compare-and-swap: a failed outcome, a dead letter
        attempts=lambda source: 99 if source.offset % 3 == 2 else 1,
    )
    fakes = fake_edges(broker, applier)
    audit = CommitAudit(fakes)
    broker.on_commit = audit
    async with daemon_over_fakes(fake_settings(database, batch_max_events=3), fakes):
        await poll(assigned_everything(fakes), WITHIN, "partitions assigned")
        for partition in (0, 1):
            produce_events(broker, partition, 4)
            audit.invalid.setdefault(partition, set()).add(produce_invalid(broker, partition))
            produce_events(broker, partition, 2)
            audit.dead[partition] = audit.invalid[partition] | {
                offset
                for offset in range(broker.end(broker.partitions[partition]))
                if offset % 3 == 2
            }
        tp0, tp1 = broker.partitions
        await poll(held.entered.is_set, WITHIN, f"partition 0's {step} held")
        await poll(
            lambda: broker.committed.get(tp1, 0) == broker.end(tp1),
            WITHIN,
            "partition 1 committed past everything",
        )
        assert broker.committed.get(tp0, 0) == 0, "partition 0 committed past a held step"
        held.released.set()
        await poll(all_committed(fakes), WITHIN, "everything committed once released")
    assert audit.violations == []
    assert {
        letter.origin.offset
        for letter in fakes.dead_letters.letters
        if letter.origin.partition == 0
    } == audit.dead[0]


# -- 3. from one fetch, a revoked partition's records dropped, the others' kept --------
async def test_from_one_fetch_a_revoked_partitions_records_are_dropped_and_the_others_kept(
    database: str,
) -> None:
    """A fetch returns records of partitions 0 and 1; while it is in flight partition 0
    is revoked (and handed to another member), partition 1 stays, its position past
    those records.  Partition 1's records are applied, every one; partition 0's from that
    fetch are not (they are its next owner's); given back, partition 0 resumes from its
    committed offset with nothing skipped."""
    broker = FakeBroker("events", 2)
    fakes = fake_edges(broker)
    tp0, tp1 = broker.partitions
    revoked_in_flight: list[list[int]] = []

    async def on_fetch(consumer: FakeConsumer, fetched: dict[TopicPartition, Any]) -> None:
        if not revoked_in_flight and tp0 in fetched and tp1 in fetched:
            revoked_in_flight.append([r.offset for r in fetched[tp0]])
            await broker.revoke_only(consumer, {tp0})

    async with daemon_over_fakes(fake_settings(database, batch_max_events=2), fakes):
        await poll(assigned_everything(fakes), WITHIN, "partitions assigned")
        broker.on_fetch = on_fetch
        produce_events(broker, 0, 5)
        produce_events(broker, 1, 5)
        await poll(lambda: bool(revoked_in_flight), WITHIN, "a fetch with both partitions")
        await poll(
            lambda: broker.committed.get(tp1, 0) == broker.end(tp1),
            WITHIN,
            "partition 1 applied and committed",
        )
        assert applied(fakes, tp1) == list(range(5))
        assert not set(applied(fakes, tp0)) & set(revoked_in_flight[0]), (
            "records of a revoked partition were applied after its revocation"
        )
        broker.reserved.clear()
        await broker.rebalance()
        produce_events(broker, 1, 2)
        await poll(all_committed(fakes), WITHIN, "everything committed after the hand-back")
    assert first_occurrences(applied(fakes, tp0)) == list(range(5))
    assert first_occurrences(applied(fakes, tp1)) == list(range(7))


async def test_records_fetched_before_a_rebalance_are_not_applied_ahead_of_earlier_ones(
    database: str,
) -> None:
    """Offsets 0 and 1 are taken and not yet committed (the transaction hangs); a fetch
    brings 2 and 3, and while it is in flight the group rebalances: the partition is
    revoked and assigned to the same daemon again, which reads it from its committed
    offset, 0.  The fetched 2 and 3 are stale: applied first, their commit would move
    past 0 and 1.  Every commit comes after what it covers, in offset order."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    gate = asyncio.Event()

    async def before_apply(items: Any) -> None:
        await gate.wait()

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    audit = CommitAudit(fakes)
    broker.on_commit = audit
    rebalanced: list[list[int]] = []

    async def on_fetch(consumer: FakeConsumer, fetched: dict[TopicPartition, Any]) -> None:
        offsets = [r.offset for r in fetched.get(tp, [])]
        if not rebalanced and offsets and offsets[0] >= 2:
            rebalanced.append(offsets)
            await broker.rebalance()
            gate.set()

    async with daemon_over_fakes(fake_settings(database, batch_max_events=1), fakes):
        await poll(assigned_everything(fakes), WITHIN, "assigned")
        produce_events(broker, 0, 2)
        await poll(lambda: daemon_consumer(fakes).position_of(tp) == 2, WITHIN, "0, 1 fetched")
        broker.on_fetch = on_fetch
        produce_events(broker, 0, 2)
        await poll(lambda: bool(rebalanced), WITHIN, "a rebalance during a fetch of 2, 3")
        await poll(all_committed(fakes), WITHIN, "everything committed")
    assert audit.violations == []
    assert first_occurrences(applied(fakes, tp)) == [0, 1, 2, 3]
    assert first_occurrences(outcomes_of(fakes, tp)) == [0, 1, 2, 3]


# -- 4. outcome records of a partition leave in offset order ---------------------------
@settings(PROPERTY, max_examples=12)
@given(
    batch_max=st.integers(1, 4),
    attempts=st.lists(st.integers(1, 12), min_size=1, max_size=20),
    sink_steps=st.lists(STEP, max_size=16),
    rebalances=st.lists(st.integers(0, 30), max_size=3),
)
def test_outcome_records_of_one_partition_leave_in_offset_order(
    database: str,
    batch_max: int,
    attempts: list[int],
    sink_steps: list[tuple[int, bool]],
    rebalances: list[int],
) -> None:
    """Under compare-and-swap retries (some exhausted: failed, dead-lettered), a sink
    that is slow or unavailable when drawn to, and rebalances at drawn moments, each
    partition's outcome records first appear in offset order, every offset's (a record
    re-read after a rebalance may be reported again, never before an earlier one)."""

    async def scenario() -> None:
        broker = FakeBroker("events", 2)
        broker.on_sink = Script(sink_steps, lambda: SinkUnavailable("drawn", kind="broker"))

        def tries(source: EventSource) -> int:
            return attempts[source.offset % len(attempts)]

        fakes = fake_edges(broker, FakeApplier(attempts=tries))
        async with daemon_over_fakes(fake_settings(database, batch_max_events=batch_max), fakes):
            await poll(assigned_everything(fakes), WITHIN_EXAMPLE, "assigned", every=0.005)
            moments = sorted(rebalances)
            for n in range(30):
                produce_events(broker, n % 2, 1)
                if n % 5 == 4:
                    produce_invalid(broker, n % 2)
                while moments and moments[0] == n:
                    moments.pop(0)
                    await broker.rebalance()
                await turns(n % 4)
            await poll(all_committed(fakes), WITHIN_EXAMPLE, "all committed", every=0.005)
        for tp in broker.partitions:
            written = outcomes_of(fakes, tp)
            assert first_occurrences(written) == list(range(broker.end(tp))), tp

    asyncio.run(scenario())


# -- 5. every outage parks and resumes the clients, the tenth as well as the first -----
async def test_every_outage_parks_and_resumes_the_clients_the_second_and_the_tenth_too(
    database: str,
) -> None:
    """Ten broker outages in one daemon's life: in each, the consumer the daemon was
    using is stopped (parked) while the broker is down, no fetch is made on a parked
    consumer, the sinks' producer is dropped; once the broker is back a new consumer
    joins, and an event produced then is applied and committed."""
    broker = FakeBroker("events", 2)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(fake_settings(database), fakes):
        await poll(assigned_everything(fakes), WITHIN, "partitions assigned")
        for outage in range(1, 11):
            produce_events(broker, outage % 2, 1)
            await poll(all_committed(fakes), WITHIN, f"committed before outage {outage}")
            active = daemon_consumer(fakes)
            abandoned = fakes.producer.abandoned
            broker.go_down()
            await poll(
                lambda active=active: active.stopped, WITHIN, f"outage {outage}: consumer parked"
            )
            await poll(
                lambda abandoned=abandoned: fakes.producer.abandoned > abandoned,
                WITHIN,
                f"outage {outage}: producer dropped",
            )
            assert active.fetches_while_down <= 1, f"outage {outage}: fetching while parked"
            broker.come_up()
            await poll(assigned_everything(fakes), WITHIN, f"outage {outage}: rejoined")
            assert daemon_consumer(fakes) is not active
        produce_events(broker, 0, 1)
        await poll(all_committed(fakes), WITHIN, "committed after the tenth outage")
    assert sum(1 for c in broker.consumers if c.stopped) >= 10


# -- 6. a partition paused for the database resumes after an overlapping broker outage -
ORDERS = [
    "database back, then broker back",
    "broker back, then database back",
    "broker outage, then database outage",
    "rebalance during the database pause",
    "broker outage during a rebalance during the database pause",
]


@pytest.mark.parametrize("order", ORDERS)
async def test_a_partition_paused_for_the_database_resumes_after_an_overlapping_broker_outage(
    database: str, order: str
) -> None:
    """The database fails for partition 0 (paused: infrastructure) while partition 1
    flows; then the broker goes and comes back (clients parked and renewed), in each
    order against the database's return, or a rebalance comes during the pause.  After
    both are back, partition 0 is fetched again: events produced then are applied and
    committed, and no partition is left paused at the consumer."""
    broker = FakeBroker("events", 2)
    database_down = asyncio.Event()

    async def before_apply(items: Any) -> None:
        if database_down.is_set() and 0 in _partitions_of(items):
            raise TransientDatabaseError("database down for partition 0")

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    tp0, _ = broker.partitions

    async def database_pause() -> None:
        database_down.set()
        produce_events(broker, 0, 3)
        await poll(lambda: tp0 in daemon_consumer(fakes).paused(), WITHIN, "partition 0 paused")

    async def broker_parked() -> FakeConsumer:
        active = daemon_consumer(fakes)
        broker.go_down()
        await poll(lambda: active.stopped, WITHIN, "clients parked")
        return active

    async with daemon_over_fakes(fake_settings(database), fakes):
        await poll(assigned_everything(fakes), WITHIN, "partitions assigned")
        produce_events(broker, 1, 2)
        if order == "broker outage, then database outage":
            await broker_parked()
            database_down.set()
            produce_events(broker, 0, 3)
            broker.come_up()
            await poll(assigned_everything(fakes), WITHIN, "rejoined")
            await poll(lambda: tp0 in daemon_consumer(fakes).paused(), WITHIN, "partition 0 paused")
            database_down.clear()
        elif order == "broker outage during a rebalance during the database pause":
            # The fault run: the fetch loop waits, inside the consumer's fetch,
            # for the assignment the rebalance would bring; the broker goes before it
            # does, the clients are parked and renewed, and the fetch on the old
            # consumer must not hold the fetch loop for ever.
            await database_pause()
            rebalancing = asyncio.create_task(broker.rebalance())
            old = daemon_consumer(fakes)
            await poll(lambda: old.reassignment_in_progress, WITHIN, "rebalance begun")
            produce_events(broker, 1, 1)  # wakes the fetch in flight: it waits on
            await turns(20)
            await broker_parked()
            await rebalancing
            database_down.clear()
            broker.come_up()
        elif order == "rebalance during the database pause":
            await database_pause()
            await broker.rebalance()
            await poll(assigned_everything(fakes), WITHIN, "reassigned")
            await broker_parked()
            broker.come_up()
            await poll(assigned_everything(fakes), WITHIN, "rejoined")
            database_down.clear()
        else:
            await database_pause()
            await broker_parked()
            if order == "database back, then broker back":
                database_down.clear()
                broker.come_up()
            else:
                broker.come_up()
                await poll(assigned_everything(fakes), WITHIN, "rejoined")
                database_down.clear()
        await poll(assigned_everything(fakes), WITHIN, "assigned after both outages")
        produce_events(broker, 0, 2)
        produce_events(broker, 1, 2)
        await poll(all_committed(fakes), WITHIN, "partition 0 fetched and committed again")
        assert daemon_consumer(fakes).paused() == set()
    assert first_occurrences(applied(fakes, tp0)) == list(range(broker.end(tp0)))
