"""Group commit: the batches ready on several partitions share one transaction and one sync.

A single-writer store (SQLite) takes one transaction at a time, so six partitions that
each commit their own batch queue behind one another, one sync each.  ``GroupCommit``
is the ``Applies`` port of the workers on such a store: a batch handed to
``apply_batch`` joins the next group; while a group's transaction runs, the batches
that arrive wait, and all of them go into the one after it (no timer: a lone batch goes
at once, and under load groups grow by themselves, as the commit coalescer's requests
do).

Each batch is a *part* of the group, in a savepoint of its own
(``GroupTransaction.part``), planned exactly as ``Applier.apply_batch`` plans one
transaction (``Applier.plan_in``: the same reads, the rules in order, the same
writes), so every outcome is what one-at-a-time processing gives.  A part whose
compare-and-swap or inbox write finds the state changed by another writer (another
process on the same file) is rolled back to its savepoint alone; the rest of the group
commits, and that part is then re-planned from a fresh read by the applier on its own
(``Applier.apply_validated``: a transaction per batch, splitting on a race, retrying
unconditional events), while its caller waits.  Any other failure fails the whole
group: each caller gets it (a ``TransientDatabaseError`` is retried by its worker; a
bug stops the daemon) and nothing of the group is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from service.apply.applier import Applier, Item, outcome_of
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome
from service.domain.rules import validate
from service.store.unit_of_work import GroupTransaction, GroupWriter
from service.store.writes import StoreRace

T = TypeVar("T")

#: A part that met another writer: re-planned on its own after the group.
RACED: Final = object()


@dataclass(slots=True)
class _Part:
    items: list[Item]
    hashes: list[str]
    future: asyncio.Future[list[Outcome]]


class GroupCommit:
    """``Applies`` over a ``GroupWriter``; ``applier`` plans each part (see above)."""

    def __init__(
        self,
        applier: Applier,
        writer: GroupWriter,
        turn: asyncio.Lock | None = None,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        """``turn``: the lock the applier's own transactions take on the same store
        (``SqlUnitOfWorkFactory.write_turn``), so that a raced part's transactions and
        the groups never wait for each other inside the database; ``on_group`` is told
        how many batches each committed transaction carried (the daemon's metric)."""
        self.applier = applier
        self.writer = writer
        self._turn = turn
        self._on_group = on_group
        self._waiting: list[_Part] = []
        self._leader: asyncio.Task[None] | None = None
        #: Raced parts being re-planned on their own (referenced until done).
        self._raced: set[asyncio.Task[None]] = set()
        #: Transactions run and parts they carried (for tests and curiosity).
        self.groups = 0
        self.parts = 0

    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]:
        """The outcomes of ``items`` (in order), as ``Applier.apply_batch`` gives them."""
        work = list(items)
        if not work:
            return []
        for event, _ in work:
            validate(event)
        self.applier.stats.events += len(work)
        hashes = [event.payload_hash() for event, _ in work]
        part = _Part(work, hashes, asyncio.get_running_loop().create_future())
        self._waiting.append(part)
        if self._leader is None or self._leader.done():
            self._leader = asyncio.create_task(self._lead(), name="group-commit")
        return await part.future

    async def _lead(self) -> None:
        while self._waiting:
            parts = [part for part in self._waiting if not part.future.done()]
            self._waiting = []
            if not parts:
                continue
            try:
                async with self._turn or contextlib.nullcontext():
                    results = await self.writer.run_group(partial(self._group, parts=parts))
            except Exception as exc:  # each caller's worker classifies it (failures.py)
                for part in parts:
                    if not part.future.done():
                        part.future.set_exception(exc)
                continue
            self.groups += 1
            self.parts += len(parts)
            if self._on_group is not None:
                self._on_group(len(parts))
            for part, result in zip(parts, results, strict=True):
                if result is RACED:
                    task = asyncio.create_task(self._alone(part), name="group-commit-raced")
                    self._raced.add(task)
                    task.add_done_callback(self._raced.discard)
                elif not part.future.done():
                    part.future.set_result(result)

    def _group(self, group: GroupTransaction, *, parts: list[_Part]) -> list[Any]:
        """On the writer's thread, inside the group's transaction: each part in its
        savepoint; a race undoes that part only."""
        results: list[Any] = []
        for part in parts:
            try:
                with group.part() as unit:
                    decisions = run_to_end(self.applier.plan_in(unit, part.items, part.hashes))
            except StoreRace:
                results.append(RACED)
                continue
            self.applier.stats.batches += 1
            results.append(
                [
                    outcome_of(event, decision, 1)
                    for (event, _), decision in zip(part.items, decisions, strict=True)
                ]
            )
        return results

    async def _alone(self, part: _Part) -> None:
        """A raced part, re-planned from a fresh read in transactions of its own."""
        self.applier.stats.batch_fallbacks += 1
        try:
            outcomes = await self.applier.apply_validated(part.items)
        except Exception as exc:  # its caller's worker classifies it
            if not part.future.done():
                part.future.set_exception(exc)
            return
        if not part.future.done():
            part.future.set_result(outcomes)


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its awaits are on a unit of work whose
    methods complete at once) to its result, here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a group part suspended: its unit of work must not await I/O")
