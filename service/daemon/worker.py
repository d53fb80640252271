"""One partition, strictly in offset order, in batches.

For each batch: decode every record (invalid ones become dead letters), apply the
valid ones in one call to the applier (one transaction when possible), hand the dead
letters and the outcome records to their sinks and wait until they are durable, and
only then commit the offset after the batch.  Any infrastructure failure along the way
pauses the partition and retries the *same* batch with capped backoff, so nothing is
committed past an event whose outcome is not durable and nothing is skipped.

The batches of a partition go through a pipeline two deep (``PartitionWorker._loop``):
while one batch waits for its acknowledgements and its offset commit, the next one is
decoded and applied.  Each batch's time per stage is counted (``service.daemon.stages``).

Failures are sorted positively by ``service.failures``: only the infrastructure's (a
broker or a database that cannot serve now, a sink's ``SinkUnavailable``) is retried; a
record refusal is handled inside the sink that writes it (``service.sinks.base``);
anything else is a bug and stops the daemon (``WorkerHost.fatal``).

The worker knows the rest of the daemon only through ``WorkerHost``: the applier, the
sinks, the commit, flow control and reporting.  Tests drive it with in-memory sinks.
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

from service.daemon.batch import admit_batch, failed_letters, outcome_messages
from service.daemon.ports import Applies, WorkerConfig, WorkerHost
from service.daemon.retries import retry_scope
from service.domain.outcomes import Outcome
from service.failures import classify, is_infrastructure
from service.sinks.base import DeadLetter, OutcomeMessage

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = structlog.get_logger(__name__)
T = TypeVar("T")
__all__ = ["Applies", "PartitionWorker", "WorkerConfig", "WorkerHost"]


@dataclass(frozen=True, slots=True)
class _Settled:
    """A batch applied to the database, its sinks' records encoded, not yet committed."""

    batch: list[ConsumerRecord]
    outcomes: list[Outcome]
    dead: list[DeadLetter]
    #: None: no outcomes topic.
    messages: list[OutcomeMessage] | None
    began: float
    #: The valid events' ``occurred_at``: the end-to-end latency once the offset commits.
    occurred: list[datetime]


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
        #: Steps of this partition failing on the infrastructure right now (0, 1 or 2).
        self._failing_steps = 0
        #: The batch being settled while the previous one is in flight (a stop cancels it).
        self._settling: asyncio.Future[_Settled] | None = None
        #: First offsets of the batches taken and not yet committed or given up
        #: (``consumergen_batches_in_progress``: up to two with the pipeline).
        self._open: set[int] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"partition-{self._label}")

    def feed(self, records: list[ConsumerRecord]) -> None:
        self.host.metrics.stages.stamp("fetched", records)
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
        if self._settling is not None:
            self._settling.cancel()  # only the batch in flight is waited for
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
        """A pipeline two batches deep: while one batch's dead letters, outcome records
        and offset commit are awaited (``_finish``), the next one is taken, decoded and
        applied (``_settle``).  A batch's sinks are written only after the previous
        batch's offset is committed, so outcome records stay in offset order and every
        commit still follows its own batch's database commit and acknowledged sinks; the
        next batch's transaction starts only after the previous one committed, so the
        database sees the partition in offset order too."""
        settled: _Settled | None = None
        try:
            while True:
                if settled is None:
                    if self._stopping:
                        return
                    batch = await self._take()
                    self._busy = True
                    settled = await self._settle(batch)
                finishing = asyncio.ensure_future(self._finish(settled))
                settled = None
                try:
                    following = await self._next_while(finishing)
                    if following is not None:
                        settled = await self._settle_unless_stopped(following)
                except BaseException:
                    # a bug in the next batch, or this task is cancelled (revoked,
                    # stopping): the previous batch's finish goes too, so nothing past
                    # it is committed and its events come again as duplicates
                    finishing.cancel()
                    await asyncio.gather(finishing, return_exceptions=True)
                    raise
                await finishing  # its bug, if any, stops the worker (``_run``)
                self._busy = settled is not None
                self.host.relieve_backpressure(self.tp, self.backlog)
        finally:
            self._busy = False
            self._close_all()

    def _opened(self, batch: list[ConsumerRecord]) -> None:
        self._open.add(batch[0].offset)
        self.host.metrics.batches_in_progress.inc()

    def _closed(self, batch: list[ConsumerRecord]) -> None:
        if batch[0].offset in self._open:
            self._open.discard(batch[0].offset)
            self.host.metrics.batches_in_progress.dec()

    def _close_all(self) -> None:
        """Whatever way the loop ends, no batch stays counted in progress."""
        self.host.metrics.batches_in_progress.dec(len(self._open))
        self._open.clear()

    async def _settle_unless_stopped(self, batch: list[ConsumerRecord]) -> _Settled | None:
        """``_settle`` the batch that follows one in flight; a stop cancels it (None), so
        that a stop waits for the batch in flight only, as without the pipeline (the
        cancelled batch's transaction rolls back or, if it committed, its events come
        again as duplicates: its offset is not committed)."""
        settling = self._settling = asyncio.ensure_future(self._settle(batch))
        try:
            return await settling
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if settling.cancelled() and self._stopping and not (task and task.cancelling()):
                return None
            raise
        finally:
            self._settling = None

    async def _next_while(self, finishing: asyncio.Future[None]) -> list[ConsumerRecord] | None:
        """The next batch if one is queued, or arrives before ``finishing`` is done;
        None when the worker is stopping or the previous batch finished first."""
        if self._stopping:
            return None
        if not self.queue.empty():
            return self._take_queued()
        getter = asyncio.ensure_future(self.queue.get())
        try:
            await asyncio.wait((finishing, getter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
            await asyncio.gather(getter, return_exceptions=True)
        if getter.cancelled() or self._stopping:
            return None  # (a record taken at a stop is read again by the next owner)
        return self._take_queued([getter.result()])

    async def _take(self) -> list[ConsumerRecord]:
        """The next batch: wait for one record, then take what else is queued.

        Adaptive: a lone event goes at once (no waiting for a full batch), and under
        load the queue fills while the previous batch is in flight, so batches grow."""
        first = await self.queue.get()
        return self._take_queued([first])

    def _take_queued(self, batch: list[ConsumerRecord] | None = None) -> list[ConsumerRecord]:
        batch = batch or [self.queue.get_nowait()]
        limit = self.host.config.batch_max_events
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _settle(self, batch: list[ConsumerRecord]) -> _Settled:
        """Decode, apply and encode one batch: everything up to its writes to the sinks."""
        began = time.perf_counter()
        host = self.host
        clock = host.metrics.stages
        self._opened(batch)
        with clock.sync("admit"):
            admitted = admit_batch(batch, host.config.max_event_bytes)
        clock.stamp("admitted", batch)
        outcomes: list[Outcome] = []
        if admitted.valid:
            outcomes = await clock.timed(
                "apply",
                self._retry_infrastructure(
                    "database", lambda: host.applier.apply_batch(admitted.valid)
                ),
            )
        clock.stamp("committed", batch)
        with clock.sync("encode"):
            settled = list(zip(admitted.records, outcomes, strict=True))
            now = datetime.now(UTC)
            dead = admitted.dead + failed_letters(settled, now)
            messages = None
            if host.outcomes is not None:
                messages = outcome_messages(settled, admitted.invalid, now, host.config.reply_topic)
        occurred = [event.occurred_at for event, _ in admitted.valid]
        return _Settled(batch, outcomes, dead, messages, began, occurred)

    async def _finish(self, settled: _Settled) -> None:
        """Write the batch's dead letters and outcome records, then commit its offset."""
        try:
            await self._write_and_commit(settled)
        finally:
            self._closed(settled.batch)

    async def _write_and_commit(self, settled: _Settled) -> None:
        host = self.host
        clock = host.metrics.stages
        dead, messages = settled.dead, settled.messages
        if dead:
            await clock.timed(
                "send",
                self._retry_infrastructure(
                    "dead_letter", lambda: host.dead_letters.write_dead_letters(dead)
                ),
            )
        sink = host.outcomes
        if sink is not None and messages is not None:
            await clock.timed(
                "send",
                self._retry_infrastructure("outcomes", lambda: sink.write_outcomes(messages)),
            )
        clock.stamp("acknowledged", settled.batch)
        next_offset = settled.batch[-1].offset + 1
        committed = await clock.timed(
            "commit",
            self._retry_infrastructure("commit", lambda: host.commit(self.tp, next_offset)),
        )
        if committed:
            self.committed = next_offset
            host.metrics.observe_committed(settled.occurred)
            clock.stamp("offset", settled.batch)
        with clock.sync("account"):
            host.record_batch(
                self.tp,
                settled.batch,
                settled.outcomes,
                dead,
                time.perf_counter() - settled.began,
            )

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
                                self._failing_steps += 1
                                self.host.infrastructure_failed(self.tp, what, exc)
                            raise
        except asyncio.CancelledError:
            resumed = False  # abandoned at a revocation or a stop, not recovered
            raise
        finally:
            if failing:
                # Two steps of a partition may fail at once (the pipeline's database step
                # of one batch, a sink of the previous one): the partition is resumed
                # only once neither is failing any more.
                self._failing_steps -= 1
                if not self._failing_steps:
                    self.host.infrastructure_recovered(self.tp, what, resumed=resumed)
        raise AssertionError("unreachable: retries are unbounded")  # pragma: no cover
