"""Group commit (``service.apply.group``) at its edges, over the in-memory group writer of
``test_group_commit``: what its callers and the daemon's figures see besides the
outcomes' kinds.

What must hold: the applier's counters and each outcome's attempts are what the plain
applier gives the same batches one at a time; the ``turn`` lock is held while a group's
transaction runs; a batch that arrives while a group fails goes into the next group; a
raced part whose own transactions fail hands that failure to its caller; a part whose
unit of work suspends is a bug that stops loudly, as is a planner that loses a
decision; the tasks carry names (what a task dump shows) and leave no error in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from service.apply.applier import Applier, Item
from service.apply.group import GroupCommit
from service.config import load_settings
from service.domain.events import ConsumerEvent
from service.domain.inbox import ProcessedEvent
from service.domain.rules import Decision
from service.store.errors import TransientDatabaseError
from service.store.unit_of_work import UnitOfWork
from tests.unit.test_applier_in_memory import MemoryStore, MemoryUnit
from tests.unit.test_group_commit import (
    MemoryGroupWriter,
    _items,
    _one_at_a_time,
    _outside,
    _parts,
)

#: How long a caller may wait for its outcomes before the test calls it a hang.
DEADLINE = 10.0


async def _gather(group: GroupCommit, parts: list[list[ConsumerEvent]]) -> list[Any]:
    calls = (group.apply_batch(_items(p, i)) for i, p in enumerate(parts))
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=DEADLINE)


async def test_counters_and_attempts_are_those_of_one_at_a_time() -> None:
    """Two groups of three batches: the applier's counters (the daemon's metrics) and
    each outcome's ``attempts`` as the plain applier gives them batch by batch."""
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    first, second = _parts(), _parts()
    results = await _gather(group, first) + await _gather(group, second)
    alone = Applier(MemoryStore(), load_settings())
    expected = [await alone.apply_batch(_items(p, i)) for i, p in enumerate(first + second)]
    assert group.applier.stats == alone.stats
    assert (alone.stats.events, alone.stats.batches) == (24, 6)
    assert [[o.attempts for o in r] for r in results] == [[1] * 4] * 6
    assert [[o.attempts for o in r] for r in expected] == [[1] * 4] * 6
    assert (writer.transactions, group.groups, group.parts) == (2, 2, 6)


async def test_every_raced_part_counts_as_a_fallback() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    parts = _parts()
    for raced in (parts[0][0].consumer_uuid, parts[2][0].consumer_uuid):
        writer.outside[raced] = _outside(raced)
    results = await _gather(group, parts)
    assert not any(isinstance(r, BaseException) for r in results)
    assert group.applier.stats.batch_fallbacks == 2 and store.transactions == 2


class FailingStore(MemoryStore):
    """The applier's own transactions fail: the database went away after the group."""

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[MemoryUnit]:
        raise TransientDatabaseError("OperationalError: unable to open database file")
        yield  # pragma: no cover - an async generator


async def test_a_raced_part_whose_own_transaction_fails_hands_the_failure_to_its_caller() -> None:
    store = FailingStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    parts = _parts()
    raced = parts[1][0].consumer_uuid
    writer.outside[raced] = _outside(raced)
    results = await _gather(group, parts)
    assert isinstance(results[1], TransientDatabaseError)
    assert "unable to open database file" in str(results[1])
    expected = await _one_at_a_time([parts[0], parts[2]])
    assert [o.generation_after for o in results[0]] == [o.generation_after for o in expected[0]]
    assert [o.generation_after for o in results[2]] == [o.generation_after for o in expected[1]]


async def test_the_turn_is_held_while_a_group_runs() -> None:
    """The applier's own transactions on the same store wait for the group (and the
    group for them), so the two never wait for each other inside the database."""
    store = MemoryStore()
    turn = asyncio.Lock()
    seen: list[bool] = []

    class Watching(MemoryGroupWriter):
        async def run_group(self, work: Callable[[Any], Any]) -> Any:
            seen.append(turn.locked())
            return await super().run_group(work)

    group = GroupCommit(Applier(store, load_settings()), Watching(store), turn)
    async with turn:  # the applier's own transaction is running
        pending = asyncio.ensure_future(group.apply_batch(_items(_parts()[0], 0)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert seen == [] and not pending.done()
    outcomes = await asyncio.wait_for(pending, timeout=DEADLINE)
    assert [o.generation_after for o in outcomes] == [1, 2, 2, 3]
    assert seen == [True] and not turn.locked()


async def test_a_batch_arriving_while_a_group_fails_goes_into_the_next_group() -> None:
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(Applier(store, load_settings()), writer)
    writer.fail_next = TransientDatabaseError("OperationalError: database is locked")
    parts = _parts()
    first = asyncio.ensure_future(group.apply_batch(_items(parts[0], 0)))
    await asyncio.sleep(0)  # the leader took the first batch and runs its (failing) group
    late = asyncio.ensure_future(group.apply_batch(_items(parts[1], 1)))
    done = await asyncio.wait_for(
        asyncio.gather(first, late, return_exceptions=True), timeout=DEADLINE
    )
    assert isinstance(done[0], TransientDatabaseError) and isinstance(done[1], list)
    assert [o.generation_after for o in done[1]] == [1, 2, 2, 3]
    assert (writer.transactions, group.groups, group.parts) == (1, 1, 1)


class SuspendingUnit(MemoryUnit):
    """A unit of work that awaits I/O: a bug under group commit."""

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        await asyncio.sleep(0)
        return await super().load_inbox(event_ids)


async def test_a_part_whose_unit_suspends_stops_every_caller_loudly() -> None:
    store = MemoryStore()

    class Writer(MemoryGroupWriter):
        async def run_group(self, work: Callable[[Any], Any]) -> Any:
            class Group:
                @staticmethod
                def part() -> Any:
                    return nullcontext(SuspendingUnit({}, {}, False))

            return work(Group())

    group = GroupCommit(Applier(store, load_settings()), Writer(store))
    results = await _gather(group, _parts()[:2])
    for result in results:
        assert isinstance(result, RuntimeError)
        assert str(result) == "a group part suspended: its unit of work must not await I/O"
    assert store.consumers == {}


class LosingPlanner(Applier):
    """A planner with a bug: one decision short."""

    async def plan_in(
        self, unit: UnitOfWork, items: list[Item], hashes: list[str], *, attempts: int = 1
    ) -> list[Decision]:
        decisions = await super().plan_in(unit, items, hashes, attempts=attempts)
        return decisions[:-1]


async def test_a_planner_that_loses_a_decision_fails_the_group_loudly() -> None:
    """No caller gets fewer outcomes than it handed events in: the group fails."""
    store = MemoryStore()
    writer = MemoryGroupWriter(store)
    group = GroupCommit(LosingPlanner(store, load_settings()), writer)
    results = await _gather(group, _parts()[:2])
    assert all(isinstance(r, ValueError) for r in results)
    assert writer.transactions == 0 and store.consumers == {}


async def test_the_tasks_are_named_and_leave_no_error_in_the_loop() -> None:
    """A task dump names the group's leader and a raced part's re-plan; and the raced
    part's task, once done, leaves nothing for the loop to report."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    names: list[str] = []

    class NamingStore(MemoryStore):
        @asynccontextmanager
        async def begin(self, *, read_only: bool = False) -> AsyncIterator[MemoryUnit]:
            names.append(_current_name())
            async with super().begin(read_only=read_only) as unit:
                yield unit

    class NamingWriter(MemoryGroupWriter):
        async def run_group(self, work: Callable[[Any], Any]) -> Any:
            names.append(_current_name())
            return await super().run_group(work)

    try:
        store = NamingStore()
        writer = NamingWriter(store)
        group = GroupCommit(Applier(store, load_settings()), writer)
        parts = _parts()
        raced = parts[0][0].consumer_uuid
        writer.outside[raced] = _outside(raced)
        results = await _gather(group, parts)
        assert not any(isinstance(r, BaseException) for r in results)
        deadline = loop.time() + DEADLINE
        while any(t.get_name() == "group-commit-raced" for t in asyncio.all_tasks()):
            assert loop.time() < deadline, "the raced part's task never finished"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # its done callbacks run
    finally:
        loop.set_exception_handler(previous)
    assert names == ["group-commit", "group-commit-raced"]
    assert errors == []


def _current_name() -> str:
    task = asyncio.current_task()
    assert task is not None
    return task.get_name()
