"""The Applier and the dry run need nothing of the store but the UnitOfWork protocol:
here they run over an in-memory one (no database, no SQLAlchemy)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime

from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.apply.applier import Applier
from service.apply.dryrun import DryRun
from service.config import load_settings
from service.domain.consumer import ConsumerState
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.domain.rules import Write
from service.store.writes import RaceKind, StoreRace


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


# --- CAS retries: exponential backoff with full jitter, bounded in attempts and time -----


class LosingUnit(MemoryUnit):
    """Every compare-and-swap misses: another writer always got there first."""

    async def write_consumers(self, writes: Sequence[Write], now: datetime) -> None:
        raise StoreRace(RaceKind.CONSUMER)


class LosingStore(MemoryStore):
    """A ``UnitOfWorkFactory`` whose every write transaction loses its CAS (reads work)."""

    @asynccontextmanager
    async def begin(self, *, read_only: bool = False) -> AsyncIterator[MemoryUnit]:
        self.transactions += 1
        unit = LosingUnit(dict(self.consumers), dict(self.inbox), read_only)
        yield unit
        self.inbox = unit.inbox  # only the FAILED row is ever written


@contextmanager
def retry_waits() -> Iterator[list[RetryDetails]]:
    """Every retry stamina schedules (its wait included), while the block runs."""
    seen: list[RetryDetails] = []
    before = get_on_retry_hooks()
    set_on_retry_hooks([seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(before)


async def test_cas_retry_waits_use_full_jitter() -> None:
    """DESIGN.md: a lost CAS is retried "with exponential backoff and full jitter": the
    wait before retry n is uniform over [0, min(max, initial * 2**(n-1))], so racing
    writers spread out.  No jitter (always the ceiling) and "equal" jitter (the upper
    half only) both fail the lower-end check; a wait over the ceiling fails the bound."""
    saved = random.getstate()
    random.seed(17)  # the applier draws from the module's generator: a fixed spread
    initial, maximum, attempts = 0.0001, 0.0008, 6
    settings = load_settings(
        cas_retry_attempts=attempts,
        cas_retry_timeout_seconds=60,
        cas_retry_wait_initial_seconds=initial,
        cas_retry_wait_max_seconds=maximum,
    )
    store = LosingStore()
    applier = Applier(store, settings)
    try:
        with retry_waits() as seen:
            outcomes = [await applier.apply(upsert(str(uuid.uuid4()))) for _ in range(150)]
    finally:
        random.setstate(saved)
    assert {(o.kind, o.attempts) for o in outcomes} == {(OutcomeKind.FAILED, attempts)}
    by_retry: dict[int, list[float]] = {}
    for details in seen:
        by_retry.setdefault(details.retry_num, []).append(details.wait_for)
    assert sorted(by_retry) == list(range(1, attempts))
    for retry, waits in by_retry.items():
        ceiling = min(maximum, initial * 2 ** (retry - 1))
        assert len(waits) == 150
        assert all(0 <= w <= ceiling for w in waits), (retry, max(waits), ceiling)
        assert min(waits) < 0.1 * ceiling and max(waits) > 0.9 * ceiling, (retry, waits)
        below_half = sum(w < ceiling / 2 for w in waits) / len(waits)
        assert 0.35 < below_half < 0.65, (retry, below_half)
    # Exponential: the ceilings double up to the maximum (and the waits follow them).
    means = [sum(by_retry[n]) / 150 for n in sorted(by_retry)]
    assert means[1] > 1.5 * means[0] and means[2] > 1.5 * means[1]


async def test_cas_retries_are_bounded_in_time_even_with_huge_attempts() -> None:
    """DESIGN.md, "bounded in attempts and time": with attempts practically unlimited, the
    time bound alone ends the retries, and the event is recorded ``failed``."""
    bound = 0.4
    settings = load_settings(
        cas_retry_attempts=10**9,
        cas_retry_timeout_seconds=bound,
        cas_retry_wait_initial_seconds=0.001,
        cas_retry_wait_max_seconds=0.02,
    )
    store = LosingStore()
    applier = Applier(store, settings)
    ev = upsert(str(uuid.uuid4()))
    began = time.monotonic()
    outcome = await asyncio.wait_for(applier.apply(ev), 30)
    took = time.monotonic() - began
    assert (outcome.kind, outcome.reason) == (OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED)
    assert bound <= took < bound + 2.0, took
    assert 2 < outcome.attempts < 10_000, outcome.attempts
    assert applier.stats.cas_retries == outcome.attempts - 1 and applier.stats.failed == 1
    assert store.inbox[ev.event_id].outcome is OutcomeKind.FAILED
