"""One partition, strictly in offset order, in batches.

For each batch: decode every record (invalid ones become dead letters), apply the
valid ones in one call to the applier (one transaction when possible), hand the dead
letters and the outcome records to their sinks and wait until they are durable, and
only then commit the offset after the batch.  Any infrastructure failure along the way
pauses the partition and retries the *same* batch with capped backoff, so nothing is
committed past an event whose outcome is not durable and nothing is skipped.

Failures are sorted positively by ``service.failures``: only what is recognised as the
infrastructure's (a broker or a database that cannot serve now, a sink's
``SinkUnavailable``) is retried; a record refusal is handled inside the sink that
writes it (``service.sinks.base``); anything else is a bug and stops the daemon
(``WorkerHost.fatal``), with nothing committed past the failing batch.

The worker knows the rest of the daemon only through ``WorkerHost``: the applier, the
sinks, the commit, flow control and reporting.  Tests drive it with in-memory sinks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import stamina
import structlog
from aiokafka import TopicPartition

from service.config import Settings
from service.daemon.batch import admit_batch, failed_letters, outcome_messages
from service.daemon.metrics import DaemonMetrics
from service.daemon.retries import retry_scope
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome
from service.failures import classify, is_infrastructure
from service.sinks.base import DeadLetter, DeadLetterSink, OutcomeSink

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The settings a worker reads."""

    batch_max_events: int
    max_event_bytes: int
    retry_wait_initial: float
    retry_wait_max: float
    #: The one topic the outcomes sink may send replies to (``contract.replies``).
    reply_topic: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            batch_max_events=settings.batch_max_events,
            max_event_bytes=settings.max_event_bytes,
            retry_wait_initial=settings.infra_retry_wait_initial_seconds,
            retry_wait_max=settings.infra_retry_wait_max_seconds,
            reply_topic=settings.reply_topic,
        )


class Applies(Protocol):
    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]: ...


class WorkerHost(Protocol):
    """What a partition worker needs from the daemon: its ports, nothing more."""

    config: WorkerConfig
    applier: Applies
    dead_letters: DeadLetterSink
    #: None: outcome records are not written (no outcomes topic configured).
    outcomes: OutcomeSink | None
    #: Where stamina's retries of this worker are counted.
    metrics: DaemonMetrics

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        """Commit ``offset``; False when the group moved on (harmless)."""
        ...

    def relieve_backpressure(self, tp: TopicPartition, backlog: int) -> None: ...

    def infrastructure_failed(self, tp: TopicPartition, step: str, exc: BaseException) -> None:
        """A step failed on the infrastructure: pause ``tp``, report it not ready."""
        ...

    def infrastructure_recovered(self, tp: TopicPartition, step: str, *, resumed: bool) -> None:
        """The failing step succeeded (``resumed``) or its batch was abandoned."""
        ...

    def record_batch(
        self,
        tp: TopicPartition,
        batch: list[ConsumerRecord],
        outcomes: list[Outcome],
        dead: list[DeadLetter],
        seconds: float,
    ) -> None:
        """A batch is committed: count it and log it."""
        ...

    def fatal(self, exc: BaseException) -> None:
        """A bug: stop the whole daemon."""
        ...


class PartitionWorker:
    """Owns one assigned partition until it is revoked or the daemon stops."""

    def __init__(self, host: WorkerHost, tp: TopicPartition) -> None:
        self.host = host
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
            self.host.fatal(exc)

    async def _loop(self) -> None:
        limit = self.host.config.batch_max_events
        while not self._stopping:
            batch = [await self.queue.get()]
            while len(batch) < limit and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._busy = True
            try:
                await self._process(batch)
            finally:
                self._busy = False
            self.host.relieve_backpressure(self.tp, self.backlog)

    # -- one batch ----------------------------------------------------------------------
    async def _process(self, batch: list[ConsumerRecord]) -> None:
        began = time.perf_counter()
        host = self.host
        admitted = admit_batch(batch, host.config.max_event_bytes)
        outcomes: list[Outcome] = []
        if admitted.valid:
            outcomes = await self._retry_infrastructure(
                "database", lambda: host.applier.apply_batch(admitted.valid)
            )
        settled = list(zip(admitted.records, outcomes, strict=True))
        now = datetime.now(UTC)
        dead = admitted.dead + failed_letters(settled, now)
        if dead:
            await self._retry_infrastructure(
                "dead_letter", lambda: host.dead_letters.write_dead_letters(dead)
            )
        sink = host.outcomes
        if sink is not None:
            messages = outcome_messages(settled, admitted.invalid, now, host.config.reply_topic)
            await self._retry_infrastructure("outcomes", lambda: sink.write_outcomes(messages))
        next_offset = batch[-1].offset + 1
        if await self._retry_infrastructure("commit", lambda: host.commit(self.tp, next_offset)):
            self.committed = next_offset
        host.record_batch(self.tp, batch, outcomes, dead, time.perf_counter() - began)

    async def _retry_infrastructure(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it succeeds: pause the partition and report not-ready
        while it fails with an infrastructure failure (``failures.is_infrastructure``),
        resume once it works.  Never gives up on its own; only a stop or a revocation
        (which cancel this task) ends it.  Any other failure propagates at once: a bug,
        or a record refusal the step should have handled itself."""
        failing = False
        resumed = True
        config = self.host.config
        try:
            with retry_scope(self.host.metrics, what):
                async for attempt in stamina.retry_context(
                    on=is_infrastructure,
                    attempts=None,
                    timeout=None,
                    wait_initial=config.retry_wait_initial,
                    wait_max=config.retry_wait_max,
                ):
                    with attempt:
                        try:
                            return await operation()
                        except Exception as exc:
                            if not is_infrastructure(exc):
                                raise  # not retried (stamina's predicate says the same)
                            if not failing:
                                failing = True
                                self.host.infrastructure_failed(self.tp, what, exc)
                            raise
        except asyncio.CancelledError:
            resumed = False  # abandoned at a revocation or a stop, not recovered
            raise
        finally:
            if failing:
                self.host.infrastructure_recovered(self.tp, what, resumed=resumed)
        raise AssertionError("unreachable: retries are unbounded")  # pragma: no cover
