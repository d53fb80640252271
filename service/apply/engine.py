"""The Applier: runs the pure rules against the store, in transactions, with CAS.

One event (``apply``): read the inbox row and the consumer, decide, write the effect and
the outcome in one transaction.  A compare-and-swap that misses means someone changed
the consumer between our read and our write:

* an unconditional event is retried from a fresh read, with exponential backoff and
  full jitter (stamina, bounded by ``cas_retry_attempts`` and
  ``cas_retry_timeout_seconds``); when the bound is hit it is recorded FAILED;
* a conditional event is decided again at once from a fresh read.  That is not a retry
  of its precondition: generations only grow, so the fresh read can only confirm the
  conflict (rejected) or show that the same event settled elsewhere (duplicate).

Many events (``apply_batch``): one transaction, one SELECT per table, the rules run in
memory in order (so two events of one consumer, duplicates and a conflict in the middle
behave as one-at-a-time processing), then bulk CAS writes.  If an outside writer raced
the batch, the transaction is rolled back and the batch is split in halves, down to
single events, each half committed before the next starts: the outcomes are always
those of one-at-a-time processing and nothing is half-committed.

Infrastructure failures become ``TransientDatabaseError`` with nothing committed for the
failing unit; they are never turned into an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import stamina
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.config import Settings
from service.domain.consumer import Owners
from service.domain.errors import ConcurrencyConflict
from service.domain.events import ConsumerEvent
from service.domain.inbox import InboxWrite
from service.domain.outcomes import EventSource, Outcome, OutcomeKind
from service.domain.rules import Decision, InvalidEventError, decide_failed, plan, validate
from service.store.engine import read_only
from service.store.errors import TransientDatabaseError, describe, is_transient
from service.store.repository import (
    InboxRow,
    OwnerCache,
    RaceKind,
    StoreRace,
    load_consumers,
    load_inbox,
    write_consumers,
    write_inbox,
)

__all__ = [
    "Applier",
    "ApplierStats",
    "InvalidEventError",
    "TransientDatabaseError",
]

log = structlog.get_logger(__name__)

Item = tuple[ConsumerEvent, EventSource | None]

#: Passes of one attempt: a conditional CAS loss or an inbox race is settled by the next
#: read (rejected or duplicate), so more than three passes would be a bug.
_MAX_PASSES = 4


class _CasLost(ConcurrencyConflict):
    """An unconditional event lost a compare-and-swap race (stamina retries this)."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"compare-and-swap lost on attempt {attempt}")
        self.attempt = attempt


class _BatchRaced(ConcurrencyConflict):
    """A batch transaction met an outside writer; it was rolled back."""


@dataclass
class ApplierStats:
    """Counters for metrics and tests (process-local, monotonic)."""

    events: int = 0
    batches: int = 0
    cas_retries: int = 0
    batch_fallbacks: int = 0
    failed: int = 0


class Applier:
    """Applies validated events to the store with exactly one outcome each."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._placeholders = Owners(settings.incomplete_project_id, settings.incomplete_user_id)
        self.stats = ApplierStats()
        self._owner_cache = OwnerCache()
        # SQLite has one writer at a time: BEGIN IMMEDIATE of a second connection waits in
        # SQLite's busy handler, which sleeps in steps of up to 100 ms and is not fair, so
        # concurrent partitions of one process queued there for hundreds of milliseconds.
        # Queue them here instead (FIFO, woken the moment the writer commits); writers in
        # other processes still meet the busy timeout.
        self._write_turn: asyncio.Lock | None = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else None
        )

    # --- public API -------------------------------------------------------------

    async def apply(self, event: ConsumerEvent, source: EventSource | None = None) -> Outcome:
        """Apply one event in its own transaction (with CAS retries)."""
        validate(event)
        self.stats.events += 1
        return await self._apply_one(event, source)

    async def apply_batch(self, items: Sequence[Item]) -> list[Outcome]:
        """Apply events (in order) with outcomes identical to ``apply`` one by one.

        One transaction for the batch when no outside writer interferes; otherwise
        halves, down to single events.  ``TransientDatabaseError`` leaves the failing
        unit uncommitted (earlier halves of a split batch may have committed; their
        events are duplicates when the caller re-sends the batch).
        """
        work = list(items)
        for event, _ in work:
            validate(event)
        self.stats.events += len(work)
        return await self._apply_units(work)

    async def dry_run_batch(self, items: Sequence[Item]) -> list[Outcome]:
        """The outcomes ``apply_batch`` would give now, computed by the same rules from
        one consistent read; nothing is written."""
        work = list(items)
        for event, _ in work:
            validate(event)
        if not work:
            return []
        hashes = [event.payload_hash() for event, _ in work]
        async with self._transaction(read_only_=True) as connection:
            decisions = await self._plan_in(connection, work, hashes)
        return [_outcome(event, d, 1) for (event, _), d in zip(work, decisions, strict=True)]

    # --- batches ------------------------------------------------------------------

    async def _apply_units(self, items: list[Item]) -> list[Outcome]:
        if not items:
            return []
        if len(items) == 1:
            event, source = items[0]
            return [await self._apply_one(event, source)]
        try:
            return await self._batch_once(items)
        except _BatchRaced:
            self.stats.batch_fallbacks += 1
            log.info("batch_split_after_race", events=len(items))
            middle = len(items) // 2
            first = await self._apply_units(items[:middle])
            return first + await self._apply_units(items[middle:])

    async def _batch_once(self, items: list[Item]) -> list[Outcome]:
        started = time.perf_counter()
        hashes = [event.payload_hash() for event, _ in items]
        try:
            async with self._transaction() as connection:
                decisions = await self._plan_in(connection, items, hashes, write=True)
        except StoreRace:
            raise _BatchRaced() from None
        self.stats.batches += 1
        log.debug(
            "batch_applied",
            events=len(items),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return [_outcome(event, d, 1) for (event, _), d in zip(items, decisions, strict=True)]

    async def _plan_in(
        self,
        connection: AsyncConnection,
        items: list[Item],
        hashes: list[str],
        *,
        write: bool = False,
        attempts: int = 1,
    ) -> list[Decision]:
        """Read, decide in memory, and (``write``) perform the writes, in ``connection``'s
        transaction.  Raises ``StoreRace`` when a write finds the state changed."""
        events = [event for event, _ in items]
        inbox = await load_inbox(connection, (e.event_id for e in events))
        consumers = await load_consumers(connection, (e.consumer_uuid for e in events))
        result = plan(list(zip(events, hashes, strict=True)), consumers, inbox, self._placeholders)
        if write:
            await self._between_read_and_write(connection)
            now = datetime.now(UTC)
            await write_consumers(connection, result.writes, now, self._owner_cache)
            rows = [
                _inbox_row(items[i], hashes[i], result.decisions[i], attempts)
                for i in result.recorded
            ]
            await write_inbox(connection, rows, now)
        return result.decisions

    # --- one event ------------------------------------------------------------------

    async def _apply_one(self, event: ConsumerEvent, source: EventSource | None) -> Outcome:
        payload_hash = event.payload_hash()
        settings = self._settings
        last_attempt = 1
        try:
            async for attempt in stamina.retry_context(
                on=self._backoff,
                attempts=settings.cas_retry_attempts,
                timeout=settings.cas_retry_timeout_seconds,
                wait_initial=settings.cas_retry_wait_initial_seconds,
                wait_max=settings.cas_retry_wait_max_seconds,
                wait_jitter=0.0,
            ):
                with attempt:
                    last_attempt = attempt.num
                    if attempt.num > 1:
                        self.stats.cas_retries += 1
                    return await self._settle(event, payload_hash, source, attempt.num)
        except _CasLost:
            return await self._record_failed(event, payload_hash, source, last_attempt)
        raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover

    def _backoff(self, error: Exception) -> bool | float:
        """stamina's hook: retry only CAS losses, waiting with *full* jitter,
        uniform(0, min(max, initial * 2 ** (attempt - 1))), so that racing writers
        spread out instead of colliding again in lock-step."""
        if not isinstance(error, _CasLost):
            return False
        settings = self._settings
        ceiling = min(
            settings.cas_retry_wait_max_seconds,
            settings.cas_retry_wait_initial_seconds * 2.0 ** (error.attempt - 1),
        )
        return random.uniform(0.0, ceiling)

    async def _settle(
        self, event: ConsumerEvent, payload_hash: str, source: EventSource | None, attempt: int
    ) -> Outcome:
        item: Item = (event, source)
        for _ in range(_MAX_PASSES):
            try:
                async with self._transaction() as connection:
                    (decision,) = await self._plan_in(
                        connection, [item], [payload_hash], write=True, attempts=attempt
                    )
                return _outcome(event, decision, attempt)
            except StoreRace as race:
                if race.kind is RaceKind.CONSUMER and event.is_unconditional:
                    raise _CasLost(attempt) from None
                # A conditional CAS loss or an inbox race: decide again from a fresh read.
        raise RuntimeError("event did not settle after repeated races (a bug)")

    async def _record_failed(
        self, event: ConsumerEvent, payload_hash: str, source: EventSource | None, attempts: int
    ) -> Outcome:
        for _ in range(_MAX_PASSES):
            try:
                async with self._transaction() as connection:
                    inbox = await load_inbox(connection, [event.event_id])
                    consumers = await load_consumers(connection, [event.consumer_uuid])
                    decision = decide_failed(
                        payload_hash,
                        consumers.get(event.consumer_uuid),
                        inbox.get(event.event_id),
                    )
                    if decision.inbox is not InboxWrite.NONE:
                        row = _inbox_row((event, source), payload_hash, decision, attempts)
                        await write_inbox(connection, [row], datetime.now(UTC))
            except StoreRace:
                continue
            if decision.kind is OutcomeKind.FAILED:
                self.stats.failed += 1
                log.warning("cas_retries_exhausted", attempts=attempts)
            return _outcome(event, decision, attempts)
        raise RuntimeError("failure could not be recorded after repeated races (a bug)")

    # --- plumbing ---------------------------------------------------------------

    async def _between_read_and_write(self, connection: AsyncConnection) -> None:
        """A seam for tests that need another writer to act between read and write."""

    @asynccontextmanager
    async def _transaction(self, *, read_only_: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction whose infrastructure failures surface as TransientDatabaseError
        (after rollback); races and bugs propagate unchanged."""
        turn = self._write_turn if not read_only_ else None
        try:
            async with turn or contextlib.nullcontext(), self._engine.connect() as connection:
                if read_only_:
                    connection = await read_only(connection)
                async with connection.begin():
                    yield connection
        except (StoreRace, _CasLost, InvalidEventError):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise TransientDatabaseError(describe(exc)) from exc
            raise


def _inbox_row(item: Item, payload_hash: str, decision: Decision, attempts: int) -> InboxRow:
    event, source = item
    return InboxRow(
        how=decision.inbox,
        event_id=event.event_id,
        consumer_uuid=event.consumer_uuid,
        event_type=event.type.value,
        payload_hash=payload_hash,
        outcome=decision.kind,
        reason=decision.reason,
        generation_after=decision.generation_after,
        attempts=attempts,
        source_topic=source.topic if source else None,
        source_partition=source.partition if source else None,
        source_offset=source.offset if source else None,
    )


def _outcome(event: ConsumerEvent, decision: Decision, attempts: int) -> Outcome:
    return Outcome(
        event_id=event.event_id,
        consumer_uuid=event.consumer_uuid,
        kind=decision.kind,
        reason=decision.reason,
        generation_after=decision.generation_after,
        attempts=attempts,
        original=decision.original,
    )
