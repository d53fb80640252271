"""Group commit (``service.apply.group``) over an in-memory group writer: no database.

What must hold: batches handed in together share one transaction; every outcome is
what the applier gives one batch at a time; a compare-and-swap race in one part (another
writer changed a row it read) undoes that part alone, the rest of the group commits,
and only that part is planned again, from a fresh read; a failure of the transaction
itself reaches every caller with nothing committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import pytest

from service.apply.applier import Applier
from service.apply.group import GroupCommit
from service.config import load_settings
from service.domain.consumer import ConsumerState
from service.domain.events import ConsumerEvent
from service.domain.inbox import ProcessedEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.domain.rules import Write
from service.store.errors import TransientDatabaseError
from service.store.writes import RaceKind, StoreRace
from tests.unit.test_applier_in_memory import MemoryStore, MemoryUnit, upsert

T = TypeVar("T")


class MemoryGroupWriter:
    """A ``GroupWriter`` over a ``MemoryStore``: parts are savepoints, the group commits
    what it changed (keys it wrote) into the store at the end."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.transactions = 0
        #: uuid -> the outside write that lands just before a part writes it (once).
        self.outside: dict[str, ConsumerState] = {}
        self.fail_next: BaseException | None = None

    async def run_group(self, work: Callable[[Any], T]) -> T:
        await asyncio.sleep(0)  # a real writer hands the work to its thread
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        group = MemoryGroup(self)
        result = work(group)
        self.store.consumers.update(group.consumers)
        self.store.inbox.update(group.inbox)
        self.transactions += 1
        return result

    async def close(self) -> None:
        pass


class MemoryGroup:
    def __init__(self, writer: MemoryGroupWriter) -> None:
        self.writer = writer
        #: What this transaction wrote (on top of the store).
        self.consumers: dict[str, ConsumerState] = {}
        self.inbox: dict[str, ProcessedEvent] = {}
        self.parts = 0

    @contextmanager
    def part(self) -> Iterator[MemoryUnit]:
        self.parts += 1
        store = self.writer.store
        unit = RacingUnit(
            {**store.consumers, **self.consumers}, {**store.inbox, **self.inbox}, False
        )
        unit.writer = self.writer
        yield unit  # an exception leaves the group's writes as they were (rolled back)
        self.consumers.update(unit.written)
        self.inbox.update({k: v for k, v in unit.inbox.items() if k not in store.inbox})


class RacingUnit(MemoryUnit):
    """A part's unit: a write of a row another writer changed since the read misses."""

    writer: MemoryGroupWriter

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.written: dict[str, ConsumerState] = {}

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        for write in writes:
            outside = self.writer.outside.pop(write.after.uuid, None)
            if outside is not None:
                # another process committed this row between our read and our write
                self.writer.store.consumers[outside.uuid] = outside
                raise StoreRace(RaceKind.CONSUMER)
        await super().write_consumers(writes, now)
        self.written.update({w.after.uuid: w.after for w in writes})


def _items(events: list[ConsumerEvent], partition: int) -> list[tuple[ConsumerEvent, Any]]:
    return [(e, EventSource("events", partition, i)) for i, e in enumerate(events)]


def _summary(outcomes: list[Outcome]) -> list[tuple[OutcomeKind, Reason | None, int | None]]:
    return [(o.kind, o.reason, o.generation_after) for o in outcomes]


async def _one_at_a_time(parts: list[list[ConsumerEvent]]) -> list[list[Outcome]]:
    """What the plain applier gives each batch in its own transaction."""
    applier = Applier(MemoryStore(), load_settings())
    return [await applier.apply_batch(_items(p, i)) for i, p in enumerate(parts)]


def _parts() -> list[list[ConsumerEvent]]:
    """Three partitions' batches: creates, then updates with right and stale generations."""
    parts = []
    for _ in range(3):
        c = str(uuid.uuid4())
        parts.append([upsert(c, None), upsert(c, 1), upsert(c, 1), upsert(c)])
    return parts


async def test_batches_handed_in_together_share_one_transaction() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    parts = _parts()
    results = await asyncio.gather(*(group.apply_batch(_items(p, i)) for i, p in enumerate(parts)))
    assert writer.transactions == 1 and (group.groups, group.parts) == (1, 3)
    expected = await _one_at_a_time(parts)
    assert [_summary(r) for r in results] == [_summary(r) for r in expected]
    assert [o.generation_after for o in results[0]] == [1, 2, 2, 3]
    assert store.transactions == 0  # nothing went through the applier's own transactions


def _outside(consumer: str) -> ConsumerState:
    """The row another process commits for ``consumer`` just before a part writes it."""
    return ConsumerState(
        uuid=consumer,
        generation=7,
        deleted=False,
        project_id="elsewhere",
        user_id="someone",
        consumer_type=None,
        last_event_id=str(uuid.uuid4()),
    )


async def test_a_race_in_one_part_replans_only_that_part() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    applier = Applier(store, load_settings())
    group = GroupCommit(applier, writer)
    parts = _parts()
    raced = parts[1][0].consumer_uuid
    # Another process creates the second partition's consumer between the group's read
    # and its write: that part's create now finds it taken.
    writer.outside[raced] = _outside(raced)
    results = await asyncio.gather(*(group.apply_batch(_items(p, i)) for i, p in enumerate(parts)))
    expected = await _one_at_a_time(parts)
    # The other parts were committed by the one group transaction, as if alone.
    assert writer.transactions == 1 and group.parts == 3
    assert _summary(results[0]) == _summary(expected[0])
    assert _summary(results[2]) == _summary(expected[2])
    # Only the raced part was planned again (in the applier's own transaction), from a
    # fresh read that sees the other writer's row: what one-at-a-time processing after
    # that write gives.
    assert applier.stats.batch_fallbacks == 1 and store.transactions == 1
    assert _summary(results[1]) == [
        (OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS, 7),
        (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 7),
        (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 7),
        (OutcomeKind.APPLIED, None, 8),
    ]
    assert store.consumers[raced].generation == 8
    assert {e.event_id for p in parts for e in p} <= set(store.inbox)


async def test_a_failed_transaction_reaches_every_caller_with_nothing_committed() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    writer.fail_next = TransientDatabaseError("OperationalError: database is locked")
    parts = _parts()
    results = await asyncio.gather(
        *(group.apply_batch(_items(p, i)) for i, p in enumerate(parts)),
        return_exceptions=True,
    )
    assert all(isinstance(r, TransientDatabaseError) for r in results)
    assert store.consumers == {} and store.inbox == {}
    # The same batches again: applied as if the failure never happened.
    again = await asyncio.gather(*(group.apply_batch(_items(p, i)) for i, p in enumerate(parts)))
    assert [_summary(r) for r in again] == [_summary(r) for r in await _one_at_a_time(parts)]


async def test_a_batch_arriving_during_a_group_goes_into_the_next_one() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    parts = _parts()
    first = asyncio.ensure_future(group.apply_batch(_items(parts[0], 0)))
    await asyncio.sleep(0)  # the leader took the first batch and runs its group
    late = [
        asyncio.ensure_future(group.apply_batch(_items(p, i + 1))) for i, p in enumerate(parts[1:])
    ]
    await asyncio.gather(first, *late)
    assert (writer.transactions, group.parts) == (2, 3)


@pytest.mark.parametrize("empty", [[]])
async def test_an_empty_batch_needs_no_transaction(empty: list[Any]) -> None:
    writer = MemoryGroupWriter(MemoryStore())
    group = GroupCommit(Applier(writer.store, load_settings()), writer)
    assert await group.apply_batch(empty) == []
    assert writer.transactions == 0
