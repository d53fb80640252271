"""Compare-and-swap contention inside a running daemon (a real broker; SQLite and
PostgreSQL): an event that loses its CAS is retried while the rest of its partition
waits, in offset order; an event that never wins is ``failed`` and dead-lettered, and,
delivered again and failing again, it stays one failure.

The contention is made deterministic in the store the daemon's own ``Applier`` writes
through (``StrikingUnits``): between the read and the write of every transaction that
holds the target event, another writer changes the target's consumer.  On PostgreSQL
that is a real second writer committing real events through an engine of its own (an
outside writer: "Nothing in the service may assume it is the only writer"); SQLite lets
no one else write while the daemon's transaction holds the write lock, so there the
stand-in is the same change made on the daemon's own connection, which the lost
attempt's rollback undoes (as in ``tests/apply/test_apply_engine.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.apply.applier import Applier
from service.config import Settings
from service.contract.decode import decode_document
from service.domain.consumer import ConsumerState
from service.domain.events import ConsumerEvent
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind
from service.domain.rules import Write
from service.kafka.partitioning import partition_for
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.store.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from service.testing.daemon import Topics, assert_matches_model, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import (
    commit_offsets,
    committed_offsets,
    end_offsets,
    produce_docs,
    read_all,
    wait_all_committed,
)
from service.testing.model import Model, event_doc
from service.testing.polling import poll
from service.testing.workload import mixed_stream
from tests.conftest import TopicFactory

pytestmark = [pytest.mark.kafka]

Strike = Callable[[AsyncConnection], Awaitable[None]]
PARTITIONS = [0, 1, 2, 3]


class StrikingUnits:
    """A ``UnitOfWorkFactory`` over the daemon's own: ``strike`` runs between the reads
    and the writes of every transaction that read ``target`` (an event id), while that
    transaction holds other events too (the batch then splits) and, once the target is
    alone in its transaction, ``alone`` times: each of those is one CAS retry of it."""

    def __init__(
        self,
        inner: SqlUnitOfWorkFactory,
        target: str,
        strike: Strike,
        alone: int,
        watch: Callable[[list[str], AsyncConnection], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.target = target
        self.strike = strike
        self.alone = alone
        self.watch = watch
        self.in_batches = 0
        self.alone_strikes = 0

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[_StrikingUnit]:
        async with self.inner.begin(read_only=read_only) as unit:
            yield _StrikingUnit(unit, self)

    async def before_writes(self, read: list[str], connection: AsyncConnection) -> None:
        if self.target not in read:
            return
        if self.watch is not None:
            await self.watch(read, connection)
        if len(read) > 1:
            self.in_batches += 1
        elif self.alone_strikes < self.alone:
            self.alone_strikes += 1
        else:
            return
        await self.strike(connection)


class _StrikingUnit:
    def __init__(self, inner: SqlUnitOfWork, units: StrikingUnits) -> None:
        self.inner = inner
        self.units = units
        self.read: list[str] = []

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        self.read = list(event_ids)
        return await self.inner.load_inbox(self.read)

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        return await self.inner.load_consumers(uuids)

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        await self.units.before_writes(self.read, self.inner.connection)
        await self.inner.write_consumers(writes, now)

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        await self.inner.write_inbox(rows, now)


def bump_in_own_transaction(consumer: str) -> Strike:
    """The stand-in writer: the consumer's generation moves on inside the daemon's own
    transaction, so its compare-and-swap misses and its rollback undoes the move."""

    async def strike(connection: AsyncConnection) -> None:
        await connection.execute(
            text("UPDATE consumers SET generation = generation + 1 WHERE uuid = :u"),
            {"u": consumer},
        )

    return strike


class Outsider:
    """A second writer with an engine of its own, committing real events of one consumer
    (each an unconditional upsert, kept in ``docs`` for the model)."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.engine: AsyncEngine = create_engine(settings)
        self.applier = Applier(SqlUnitOfWorkFactory(self.engine), settings)
        self.consumer = consumer
        self.docs: list[dict[str, Any]] = []

    async def apply(self, doc: dict[str, Any]) -> None:
        outcome = await self.applier.apply(decode_document(doc))
        assert outcome.kind is OutcomeKind.APPLIED, outcome

    async def strike(self, connection: AsyncConnection) -> None:
        doc = event_doc(self.consumer, project=f"outsider-{len(self.docs)}", user="outsider")
        self.docs.append(doc)
        await self.apply(doc)


class HoldingApplier:
    """The daemon's applier, except that the first batch holding ``target`` waits (before
    any transaction) until ``until`` returns: the partition is held at that event while
    the test watches what the daemon does with the other partitions."""

    def __init__(self, inner: Applier, target: str, until: Callable[[], Awaitable[object]]) -> None:
        self.inner = inner
        self.target = target
        self.until = until
        self.held = False

    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]:
        if not self.held and any(event.event_id == self.target for event, _ in items):
            self.held = True
            await self.until()
        return await self.inner.apply_batch(items)


async def _daemon_topics(new_topic: TopicFactory) -> Topics:
    """Events on 4 partitions; outcomes on ONE partition, so that the outcome records of
    each events partition are read back in the order the daemon wrote them."""
    return Topics(
        events=await new_topic(partitions=len(PARTITIONS), prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )


def _partition(doc: dict[str, Any]) -> int:
    return partition_for(doc["consumer_uuid"].encode(), PARTITIONS)


def _with_target(
    others: list[dict[str, Any]], target: dict[str, Any], followers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``others`` with the target and its consumer's followers placed after the first
    third of the target's partition: events of that partition before it and after it."""
    same = [i for i, doc in enumerate(others) if _partition(doc) == _partition(target)]
    assert len(same) >= 9, "too few events share the target's partition"
    cut = same[len(same) // 3]
    return [*others[:cut], target, *followers, *others[cut:]]


async def _records(bootstrap: str, topic: str) -> dict[tuple[int, int], dict[str, Any]]:
    """(partition, offset) -> the event document of each record of the events topic."""
    return {
        (record.partition, record.offset): json.loads(record.value)
        for record in await read_all(bootstrap, topic)
    }


def _spot(records: dict[tuple[int, int], dict[str, Any]], event_id: str) -> tuple[int, int]:
    (spot,) = [spot for spot, doc in records.items() if doc["event_id"] == event_id]
    return spot


async def _outcome_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in await read_all(bootstrap, topic)]


def _in_offset_order(outcomes: list[dict[str, Any]], topic: str) -> dict[int, list[int]]:
    """The source offsets each events partition's outcome records were written in."""
    order: dict[int, list[int]] = {}
    for body in outcomes:
        source = body["source"]
        assert source["topic"] == topic
        order.setdefault(source["partition"], []).append(source["offset"])
    return order


async def _rows(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(sql), params)]
    finally:
        await engine.dispose()


async def test_one_partition_stays_in_offset_order_while_an_event_is_retried(
    kafka_bootstrap: str, database_url: str, new_topic: TopicFactory
) -> None:
    """DESIGN.md, delivery and ordering: "one partition strictly in offset order, even
    while an event in it is being retried".  The target loses its compare-and-swap in its
    batch (which splits) and then three times alone (three CAS retries with backoff);
    meanwhile no later event of its partition is recorded, every outcome record of a
    partition comes in offset order, and the end state, every outcome record and the
    target consumer's generation after each of its events are the independent model's.

    And "Partitions are processed concurrently": the target's partition is first held at
    the target's batch until every other partition is committed to its end."""
    topics = await _daemon_topics(new_topic)
    settings = daemon_settings(
        kafka_bootstrap,
        database_url,
        topics,
        batch_max_events=10,
        cas_retry_attempts=10,
        cas_retry_timeout_seconds=60,
        cas_retry_wait_initial_seconds=0.05,
        cas_retry_wait_max_seconds=0.2,
    )
    await upgrade(settings)
    consumer = str(uuid.uuid4())
    model = Model()
    created = event_doc(consumer, expected=None, project="p0", user="u0", consumer_type="VM")
    outsider = Outsider(settings, consumer)
    try:
        await outsider.apply(created)  # the consumer exists: its CAS has a row to lose
        model.apply(created)
        target = event_doc(consumer, project="retried", user="u1")
        followers = [event_doc(consumer, project=f"after-{i}") for i in range(3)]
        stream = _with_target(mixed_stream(consumers=16, events=240, seed=171), target, followers)
        await produce_docs(kafka_bootstrap, topics.events, stream)
        records = await _records(kafka_bootstrap, topics.events)
        partition, offset = _spot(records, target["event_id"])
        spots_of: dict[str, list[tuple[int, int]]] = {}
        for spot, doc in records.items():
            spots_of.setdefault(doc["event_id"], []).append(spot)

        seen: list[tuple[int, int, bool]] = []  # (later events recorded, backlog, later read)
        later = text(
            "SELECT count(*) FROM processed_events WHERE source_topic = :t"
            " AND source_partition = :p AND source_offset > :o"
        )
        tp = TopicPartition(topics.events, partition)

        async with running_daemon(settings) as daemon:

            async def watch(read: list[str], connection: AsyncConnection) -> None:
                params = {"t": topics.events, "p": partition, "o": offset}
                recorded = (await connection.execute(later, params)).scalar_one()
                worker = daemon.workers.get(tp)
                read_later = any(
                    p == partition and o > offset
                    for event_id in read
                    for p, o in spots_of.get(event_id, [])
                )
                seen.append((int(recorded), worker.backlog if worker else 0, read_later))

            strike = bump_in_own_transaction(consumer) if settings.is_sqlite else outsider.strike
            units = StrikingUnits(
                SqlUnitOfWorkFactory(daemon.engine), target["event_id"], strike, 3, watch
            )
            others = [p for p in PARTITIONS if p != partition]

            async def others_done() -> bool:
                ends = await end_offsets(kafka_bootstrap, topics.events)
                done = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
                return all(done.get(p, 0) >= ends[p] for p in others)

            async def until_others_done() -> None:
                await poll(others_done, 60, "the other partitions committed while one is held")

            holding = HoldingApplier(
                Applier(units, settings), target["event_id"], until_others_done
            )
            daemon.host.applier = holding
            began = time.monotonic()
            try:
                await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
            finally:  # a failed check inside the daemon stops it: say which
                assert daemon.fatal_error is None, repr(daemon.fatal_error)
            took = time.monotonic() - began
            cas_retries = daemon.metrics.registry.get_sample_value("consumergen_cas_retries_total")
        print(f"\n[cas contention] {len(stream)} events committed in {took:.2f}s")
    finally:
        await outsider.engine.dispose()

    # The target lost its CAS three times alone: three retries, the fourth attempt won.
    assert holding.held and units.alone_strikes == 3
    assert await _rows(
        database_url,
        "SELECT outcome, attempts FROM processed_events WHERE event_id = :e",
        e=target["event_id"],
    ) == [("applied", 4)]
    assert cas_retries == 3  # the metric counts exactly the retries of the target
    # While it was being retried, nothing after it in its partition was recorded, and
    # later events of the partition were there, fetched, waiting (in its batch or queued).
    assert seen and all(recorded == 0 for recorded, _, _ in seen), seen
    assert any(backlog > 0 or read_later for _, backlog, read_later in seen), seen

    # One outcome record per record of each partition, in strictly increasing offsets.
    outcomes = await _outcome_records(kafka_bootstrap, topics.outcomes)
    order = _in_offset_order(outcomes, topics.events)
    assert set(order) == {p for p, _ in records}
    for p, offsets in order.items():
        assert offsets == sorted(o for q, o in records if q == p), p

    # The model: the outside writer's events (PostgreSQL) went in while the target was
    # being retried, so before it; everything else in the order of the stream.
    expected: list[tuple[str, str, str | None, str | None, int | None]] = []
    for doc in stream:
        if doc is target:
            for outside in outsider.docs:
                model.apply(outside)
        mine = doc["consumer_uuid"] == consumer
        said = model.report(doc)
        generation = model.consumers[consumer].generation if mine else None
        expected.append((doc["event_id"], *said, generation))
    got = [
        (
            body["event_id"],
            body["outcome"],
            body["reason"],
            body.get("original_outcome"),
            body["generation_after"] if body["consumer_uuid"] == consumer else None,
        )
        for body in outcomes
    ]
    assert sorted(got, key=str) == sorted(expected, key=str)
    mine_in_order = [g for g in got if g[4] is not None]
    assert mine_in_order == [e for e in expected if e[4] is not None]
    assert settings.is_sqlite or len(outsider.docs) == units.in_batches + 3
    assert_matches_model(await consumer_state(database_url), await inbox(database_url), model)
    assert await read_all(kafka_bootstrap, topics.dlq) == []


async def test_a_failed_event_is_dead_lettered_and_failing_again_stays_one_failure(
    kafka_bootstrap: str, database_url: str, new_topic: TopicFactory
) -> None:
    """DESIGN.md, outcomes: ``failed`` (CAS retries exhausted) goes to the dead-letter
    topic before its offset is committed.  Delivered again (the group's offset rewound to
    it: what a daemon that died between the letter's acknowledgement and the offset
    commit leaves behind) and failing again, it is still ONE ``failed`` inbox row, and
    its letters all carry one origin (dead letters are at-least-once, de-duplicated by
    origin); the events after it come again as duplicates reporting their original
    outcome.  Delivered once more without contention, it is applied and the state is the
    model's."""
    topics = await _daemon_topics(new_topic)
    settings = daemon_settings(
        kafka_bootstrap,
        database_url,
        topics,
        batch_max_events=10,
        cas_retry_attempts=3,
        cas_retry_timeout_seconds=30,
        cas_retry_wait_initial_seconds=0.001,
        cas_retry_wait_max_seconds=0.01,
    )
    await upgrade(settings)
    consumer = str(uuid.uuid4())
    created = event_doc(consumer, expected=None, project="p0", user="u0")
    outsider = Outsider(settings, consumer)
    try:
        await outsider.apply(created)
    finally:
        await outsider.engine.dispose()
    target = event_doc(consumer, project="late", user="u1")
    followers = [event_doc(consumer, project=f"after-{i}") for i in range(2)]
    stream = _with_target(mixed_stream(consumers=12, events=120, seed=172), target, followers)
    await produce_docs(kafka_bootstrap, topics.events, stream)
    records = await _records(kafka_bootstrap, topics.events)
    partition, offset = _spot(records, target["event_id"])
    tail = sorted(o for p, o in records if p == partition and o >= offset)
    again = [records[(partition, o)] for o in tail]  # what a rewind to the target delivers

    # Without the target, the stream is the model (a failed event changes nothing).
    model = Model()
    model.apply(created)
    for doc in stream:
        if doc is not target:
            model.apply(doc)

    async def run(contended: bool) -> float:
        began = time.monotonic()
        async with running_daemon(settings) as daemon:
            if contended:
                daemon.host.applier = Applier(
                    StrikingUnits(
                        SqlUnitOfWorkFactory(daemon.engine),
                        target["event_id"],
                        bump_in_own_transaction(consumer),
                        alone=10**6,
                    ),
                    settings,
                )
            try:
                await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
            finally:
                assert daemon.fatal_error is None, repr(daemon.fatal_error)
        return time.monotonic() - began

    failed = "SELECT event_id, attempts FROM processed_events WHERE outcome = 'failed'"
    took = [await run(contended=True)]
    assert await _rows(database_url, failed) == [(target["event_id"], 3)]
    assert len(await read_all(kafka_bootstrap, topics.dlq)) == 1
    outcomes = await _outcome_records(kafka_bootstrap, topics.outcomes)
    assert [o["outcome"] for o in outcomes if o["event_id"] == target["event_id"]] == ["failed"]

    # Delivered again from the target on, and failing again.
    await commit_offsets(kafka_bootstrap, topics.group, topics.events, {partition: offset})
    took.append(await run(contended=True))
    assert await _rows(database_url, failed) == [(target["event_id"], 3)]
    letters = await read_all(kafka_bootstrap, topics.dlq)
    assert len(letters) == 2  # at-least-once: one letter per processing of the record
    origins = set()
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        assert (headers["error.class"], headers["error.reason"], headers["attempts"]) == (
            "failed", "cas_retries_exhausted", "3",
        )  # fmt: skip
        assert json.loads(letter.value) == target
        origins.add(
            (headers["origin.topic"], headers["origin.partition"], headers["origin.offset"])
        )
    assert origins == {(topics.events, str(partition), str(offset))}  # one, de-duplicated
    redelivered = (await _outcome_records(kafka_bootstrap, topics.outcomes))[len(outcomes) :]
    expected = [("failed", "cas_retries_exhausted", None)]
    expected += [model.report(doc) for doc in again[1:]]
    said = [(o["outcome"], o["reason"], o.get("original_outcome")) for o in redelivered]
    assert [o["event_id"] for o in redelivered] == [doc["event_id"] for doc in again]
    assert said == expected
    assert {kind for kind, _, _ in said[1:]} <= {"duplicate", "rejected"}

    # Once more, without contention: applied, the failed row replaced, the model's state.
    await commit_offsets(kafka_bootstrap, topics.group, topics.events, {partition: offset})
    took.append(await run(contended=False))
    assert await _rows(database_url, failed) == []
    model.apply(target)
    assert_matches_model(await consumer_state(database_url), await inbox(database_url), model)
    assert len(await read_all(kafka_bootstrap, topics.dlq)) == 2
    print(f"\n[failed, failed again, applied] daemon runs took {[round(t, 2) for t in took]} s")
