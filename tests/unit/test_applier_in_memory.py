"""The Applier and the dry run need nothing of the store but the UnitOfWork protocol:
here they run over an in-memory one (no database, no SQLAlchemy)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from service.apply.applier import Applier
from service.apply.dryrun import DryRun
from service.config import load_settings
from service.domain.consumer import ConsumerState
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.domain.rules import Write


class MemoryStore:
    """A ``UnitOfWorkFactory``: each transaction works on copies, committed on success."""

    def __init__(self) -> None:
        self.consumers: dict[str, ConsumerState] = {}
        self.inbox: dict[str, ProcessedEvent] = {}
        self.transactions = 0

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[MemoryUnit]:
        unit = MemoryUnit(dict(self.consumers), dict(self.inbox), read_only)
        yield unit
        self.transactions += 1
        self.consumers, self.inbox = unit.consumers, unit.inbox


class MemoryUnit:
    def __init__(
        self,
        consumers: dict[str, ConsumerState],
        inbox: dict[str, ProcessedEvent],
        read_only: bool,
    ) -> None:
        self.consumers, self.inbox, self.read_only = consumers, inbox, read_only

    async def load_inbox(self, event_ids: Iterable[str]) -> dict[str, ProcessedEvent]:
        return {i: self.inbox[i] for i in event_ids if i in self.inbox}

    async def load_consumers(self, uuids: Iterable[str]) -> dict[str, ConsumerState]:
        return {u: self.consumers[u] for u in uuids if u in self.consumers}

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        assert not self.read_only
        for write in writes:
            assert self.consumers.get(write.after.uuid) == write.before  # no outside writer
            self.consumers[write.after.uuid] = write.after

    async def write_inbox(
        self, rows: Sequence[tuple[InboxWrite, ProcessedEvent]], now: datetime
    ) -> None:
        assert not self.read_only
        for how, row in rows:
            assert how is not InboxWrite.NONE and row.event_type is not None
            self.inbox[row.event_id] = row


def upsert(consumer: str, expected: Precondition = UNCONDITIONAL) -> ConsumerEvent:
    return ConsumerEvent(
        event_id=str(uuid.uuid4()),
        type=EventType.UPSERT,
        consumer_uuid=consumer,
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
        expected_generation=expected,
    )


async def test_the_applier_runs_over_any_unit_of_work() -> None:
    store = MemoryStore()
    applier = Applier(store, load_settings())
    c = str(uuid.uuid4())
    first = upsert(c, None)
    created = await applier.apply(first, EventSource("t", 1, 2))
    assert (created.kind, created.generation_after) == (OutcomeKind.APPLIED, 1)
    recorded = store.inbox[first.event_id]
    assert (recorded.event_type, recorded.attempts, recorded.source) == (
        EventType.UPSERT, 1, EventSource("t", 1, 2),
    )  # fmt: skip
    batch = [(upsert(c, 1), None), (first, None), (upsert(c, 1), None)]
    predicted = await DryRun(store, load_settings()).apply_batch(batch)
    outcomes = await applier.apply_batch(batch)
    assert [(o.kind, o.reason, o.generation_after) for o in outcomes] == [
        (OutcomeKind.APPLIED, None, 2),
        (OutcomeKind.DUPLICATE, None, 1),
        (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 2),
    ]
    assert predicted == outcomes
    assert store.consumers[c].generation == 2 and len(store.inbox) == 3
    assert applier.stats.batches == 1 and store.transactions == 3
