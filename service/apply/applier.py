"""The Applier: runs the pure rules against the store, in units of work, with CAS.

It knows the store only as ``UnitOfWorkFactory`` (``service.store.unit_of_work``): each
transaction is one ``UnitOfWork``; which database it is, how its writers queue and how
its failures are classified is the factory's business.

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

Infrastructure failures become ``TransientDatabaseError`` (the factory classifies them)
with nothing committed for the failing unit; they are never turned into an outcome.
What ``apply_batch`` would do without writing is ``service.apply.dryrun.DryRun``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import stamina
import structlog

from service.config import Settings
from service.domain.consumer import Owners
from service.domain.errors import ConcurrencyConflict
from service.domain.events import ConsumerEvent
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind
from service.domain.rules import Decision, InvalidEventError, decide_failed, plan, validate
from service.store.errors import TransientDatabaseError
from service.store.unit_of_work import UnitOfWork, UnitOfWorkFactory
from service.store.writes import RaceKind, StoreRace

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

    def __init__(self, units: UnitOfWorkFactory, settings: Settings) -> None:
        """``units`` opens the transactions (``SqlUnitOfWorkFactory(engine)`` in the
        service: it also queues SQLite's writers fairly and classifies failures)."""
        self._units = units
        self._settings = settings
        self._placeholders = Owners(settings.incomplete_project_id, settings.incomplete_user_id)
        self.stats = ApplierStats()

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

    async def apply_validated(self, items: list[Item]) -> list[Outcome]:
        """``apply_batch`` for events already validated and counted (a part of a group
        that raced, ``service.apply.group``)."""
        return await self._apply_units(items)

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
            async with self._units.begin() as unit:
                decisions = await self.plan_in(unit, items, hashes)
        except StoreRace:
            raise _BatchRaced() from None
        self.stats.batches += 1
        log.debug(
            "batch_applied",
            events=len(items),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return [outcome_of(event, d, 1) for (event, _), d in zip(items, decisions, strict=True)]

    async def plan_in(
        self,
        unit: UnitOfWork,
        items: list[Item],
        hashes: list[str],
        *,
        attempts: int = 1,
    ) -> list[Decision]:
        """Read, decide in memory and perform the writes, in ``unit``'s transaction.
        Raises ``StoreRace`` when a write finds the state changed.  Public for the group
        commit (``service.apply.group``), which runs it inside a shared transaction."""
        events = [event for event, _ in items]
        inbox = await unit.load_inbox(e.event_id for e in events)
        consumers = await unit.load_consumers(e.consumer_uuid for e in events)
        result = plan(list(zip(events, hashes, strict=True)), consumers, inbox, self._placeholders)
        await self._between_read_and_write(unit)
        now = datetime.now(UTC)
        await unit.write_consumers(result.writes, now)
        rows = [
            _inbox_row(items[i], hashes[i], result.decisions[i], attempts) for i in result.recorded
        ]
        await unit.write_inbox(rows, now)
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

    def _backoff(self, error: BaseException) -> bool | float:
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
                async with self._units.begin() as unit:
                    (decision,) = await self.plan_in(unit, [item], [payload_hash], attempts=attempt)
                return outcome_of(event, decision, attempt)
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
                async with self._units.begin() as unit:
                    inbox = await unit.load_inbox([event.event_id])
                    consumers = await unit.load_consumers([event.consumer_uuid])
                    decision = decide_failed(
                        payload_hash,
                        consumers.get(event.consumer_uuid),
                        inbox.get(event.event_id),
                    )
                    if decision.inbox is not InboxWrite.NONE:
                        row = _inbox_row((event, source), payload_hash, decision, attempts)
                        await unit.write_inbox([row], datetime.now(UTC))
            except StoreRace:
                continue
            if decision.kind is OutcomeKind.FAILED:
                self.stats.failed += 1
                log.warning("cas_retries_exhausted", attempts=attempts)
            return outcome_of(event, decision, attempts)
        raise RuntimeError("failure could not be recorded after repeated races (a bug)")

    # --- plumbing ---------------------------------------------------------------

    async def _between_read_and_write(self, unit: UnitOfWork) -> None:
        """A seam for tests that need another writer to act between read and write."""


def _inbox_row(
    item: Item, payload_hash: str, decision: Decision, attempts: int
) -> tuple[InboxWrite, ProcessedEvent]:
    event, source = item
    return decision.inbox, decision.record(event, payload_hash, attempts=attempts, source=source)


def outcome_of(event: ConsumerEvent, decision: Decision, attempts: int) -> Outcome:
    return Outcome(
        event_id=event.event_id,
        consumer_uuid=event.consumer_uuid,
        kind=decision.kind,
        reason=decision.reason,
        generation_after=decision.generation_after,
        attempts=attempts,
        original=decision.original,
        state_after=decision.state_after,
    )
