"""One partition, strictly in offset order, in batches.

For each batch: decode every record (invalid ones become dead letters), apply the
valid ones in one call to the apply engine (one transaction when possible), write
the dead letters and the outcome records and wait for the broker's acks, and only
then commit the offset after the batch.  Any infrastructure failure along the way
pauses the partition and retries the *same* batch with capped backoff, so nothing is
committed past an event whose outcome is not durable and nothing is skipped.

Failures are sorted positively by ``service.failures``: only what is recognised as the
infrastructure's (a broker or a database that cannot serve now) is retried; a broker
refusal concerning a record's size is handled where the record is written (the
publisher cuts the dead letter to fit); anything else is a bug and stops the daemon
(``Daemon.fatal``), with nothing committed past the failing batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import stamina
import structlog
from aiokafka import TopicPartition

from service.apply.admission import admit
from service.contract.decode import InvalidEvent
from service.contract.records import dead_letter_headers, invalid_event_headers
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind
from service.failures import classify, is_infrastructure
from service.kafka.records import UndecodableRecord, undecodable_event

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.daemon.runner import Daemon

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record bound for the dead-letter topic, with its error headers already built."""

    record: ConsumerRecord
    reason: str
    invalid: bool
    headers: list[tuple[str, bytes]]


class PartitionWorker:
    """Owns one assigned partition until it is revoked or the daemon stops."""

    def __init__(self, daemon: Daemon, tp: TopicPartition) -> None:
        self.daemon = daemon
        self.tp = tp
        self.queue: asyncio.Queue[ConsumerRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._label = f"{tp.topic}/{tp.partition}"
        #: The group's committed offset as far as this worker knows (None: not yet known).
        self.committed: int | None = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"partition-{self._label}")

    def feed(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            self.queue.put_nowait(record)

    @property
    def backlog(self) -> int:
        return self.queue.qsize()

    async def stop(self, grace: float) -> bool:
        """Take no new batch; let the one in flight finish within ``grace`` seconds.

        Returns False when the in-flight batch had to be abandoned (its offset is then
        not committed, so its events come again and the inbox makes them duplicates).
        """
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return True
        if not self._busy:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return True
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
            return True
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.warning("batch abandoned at stop", partition=self._label, grace_seconds=grace)
            return False

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not an infrastructure failure: stop loudly rather than stall the
            # partition silently.  Nothing past the failing batch was committed.
            log.exception(
                "partition worker crashed",
                partition=self._label,
                failure_class=classify(exc).value,
                error_class=type(exc).__name__,
            )
            self.daemon.fatal(exc)

    async def _loop(self) -> None:
        limit = self.daemon.settings.batch_max_events
        while not self._stopping:
            batch = [await self.queue.get()]
            while len(batch) < limit and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._busy = True
            try:
                await self._process(batch)
            finally:
                self._busy = False
            self.daemon.relieve_backpressure(self.tp, self.backlog)

    # -- one batch ----------------------------------------------------------------------
    async def _process(self, batch: list[ConsumerRecord]) -> None:
        began = time.perf_counter()
        settings = self.daemon.settings
        valid: list[tuple[ConsumerEvent, EventSource]] = []
        records_of_valid: list[ConsumerRecord] = []
        dead: list[DeadLetter] = []
        invalid_reports: list[tuple[ConsumerRecord, InvalidEvent]] = []
        for record in batch:
            try:
                if isinstance(record, UndecodableRecord):
                    raise undecodable_event(record)
                event = admit(record.key, record.value, settings.max_event_bytes)
            except InvalidEvent as exc:
                headers = invalid_event_headers(
                    exc,
                    original_headers=list(record.headers or ()),
                    origin_topic=record.topic,
                    origin_partition=record.partition,
                    origin_offset=record.offset,
                )
                dead.append(DeadLetter(record, exc.reason.value, True, headers))
                invalid_reports.append((record, exc))
                continue
            valid.append((event, EventSource(record.topic, record.partition, record.offset)))
            records_of_valid.append(record)

        outcomes: list[Outcome] = []
        if valid:
            outcomes = await self._retry_infrastructure(
                "database", lambda: self.daemon.applier.apply_batch(valid)
            )
        settled = list(zip(records_of_valid, outcomes, strict=True))
        now = datetime.now(UTC)
        for record, outcome in settled:
            if outcome.kind is OutcomeKind.FAILED:
                headers = dead_letter_headers(
                    list(record.headers or ()),
                    error_class="failed",
                    reason="cas_retries_exhausted",
                    message=f"compare-and-swap lost {outcome.attempts} times to other writers",
                    origin_topic=record.topic,
                    origin_partition=record.partition,
                    origin_offset=record.offset,
                    attempts=outcome.attempts,
                    first_failed_at=now,
                    failed_at=now,
                )
                dead.append(DeadLetter(record, "cas_retries_exhausted", False, headers))
        if dead:
            await self._retry_infrastructure(
                "dead_letter", lambda: self.daemon.publisher.dead_letters(dead)
            )
        if self.daemon.publisher.outcomes_enabled:
            await self._retry_infrastructure(
                "outcomes",
                lambda: self.daemon.publisher.outcomes(settled, invalid_reports),
            )
        next_offset = batch[-1].offset + 1
        if await self._retry_infrastructure(
            "commit", lambda: self.daemon.commit(self.tp, next_offset)
        ):
            self.committed = next_offset
        self.daemon.record_batch(self.tp, batch, outcomes, dead, time.perf_counter() - began)

    async def _retry_infrastructure(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it succeeds: pause the partition and report not-ready
        while it fails with an infrastructure failure (``failures.is_infrastructure``),
        resume once it works.  Never gives up on its own; only a stop or a revocation
        (which cancel this task) ends it.  Any other failure propagates at once: a bug,
        or a record refusal the step should have handled itself."""
        failing = False
        resumed = True
        try:
            async for attempt in stamina.retry_context(
                on=is_infrastructure,
                attempts=None,
                timeout=None,
                wait_initial=self.daemon.settings.infra_retry_wait_initial_seconds,
                wait_max=self.daemon.settings.infra_retry_wait_max_seconds,
            ):
                with attempt:
                    try:
                        return await operation()
                    except Exception as exc:
                        if not is_infrastructure(exc):
                            raise  # not retried (stamina's predicate says the same)
                        if not failing:
                            failing = True
                            self.daemon.infrastructure_failed(self.tp, what, exc)
                        raise
        except asyncio.CancelledError:
            resumed = False  # abandoned at a revocation or a stop, not recovered
            raise
        finally:
            if failing:
                self.daemon.infrastructure_recovered(self.tp, what, resumed=resumed)
        raise AssertionError("unreachable: retries are unbounded")  # pragma: no cover
