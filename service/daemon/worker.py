"""One partition, strictly in offset order, in batches, through three stages.

For each batch: decode every record (invalid ones become dead letters), apply the
valid ones in one call to the applier (one transaction when possible), hand the dead
letters and the outcome records to their sinks and wait until they are durable, and
only then commit the offset after the batch.  Any infrastructure failure along the way
pauses the partition and retries the *same* step with capped backoff
(``service.daemon.step_retry``), so nothing is committed past an event whose outcome is
not durable and nothing is skipped.

The critical path of an event is fetched → admitted → its batch's transaction → its
outcome record acknowledged; nothing else waits on it.  So the batches of a partition
go through three stages, each its own task, joined by order rather than by waiting for
one another's tails:

* **apply** (``_apply_loop``): takes the next batch as soon as the previous batch's
  transaction committed, so the database sees the partition in offset order, one
  transaction after another, and never waits for sinks or commits;
* **send** (``_send_loop``): writes the applied batches' dead letters and outcome
  records, in offset order: one write at a time (the producer keeps their order), which
  carries every batch applied while the previous write waited for its acknowledgement;
  it never waits for an offset commit;
* **commit** (``_commit_loop``): commits the offset after the last batch whose records
  were acknowledged, asynchronously and coalesced (one commit of this partition in
  flight; the batches acknowledged meanwhile go in the next), through the daemon's
  coalescer (``service.daemon.commits``).  A committed batch is then counted and logged.

At most ``_DEPTH`` applied batches wait for the send stage (bounded memory; the queue of
records is bounded by the fetch loop's backpressure).  Each batch's time per stage is
counted (``service.daemon.stages``).

Failures are sorted positively by ``service.failures``: only the infrastructure's (a
broker or a database that cannot serve now, a sink's ``SinkUnavailable``) is retried; a
record refusal is handled inside the sink that writes it (``service.sinks.base``);
anything else is a bug: every stage stops at once and the daemon stops
(``WorkerHost.fatal``), with nothing committed past the failing batch.

The worker knows the rest of the daemon only through ``WorkerHost``: the applier, the
sinks, the commit, flow control and reporting.  Tests drive it with in-memory sinks.

Why this module is long: the three stages, their hand-offs and what a stop or a bug
does to each are one argument (nothing committed past an unacknowledged batch, nothing
skipped, a stop waiting only for what was in flight), and it reads in one place; the
retry of a step is apart (``step_retry``), as are a batch's pure parts (``batch``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import structlog
from aiokafka import TopicPartition

from service.daemon.batch import admit_batch, failed_letters, outcome_messages
from service.daemon.ports import Applies, WorkerConfig, WorkerHost
from service.daemon.step_retry import StepRetry
from service.domain.outcomes import Outcome
from service.failures import classify
from service.sinks.base import DeadLetter, OutcomeMessage
from service.tracing import batch_trace

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.tracing.daemon import BatchTrace

log = structlog.get_logger(__name__)
__all__ = ["Applies", "PartitionWorker", "WorkerConfig", "WorkerHost"]

#: Applied batches that may wait for the send stage.
_DEPTH: Final = 4


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
    #: The batch's spans, ended once its records are acknowledged (None: not tracing).
    trace: BatchTrace | None = None

    @property
    def next_offset(self) -> int:
        offset: int = self.batch[-1].offset
        return offset + 1


class PartitionWorker:
    """Owns one assigned partition until it is revoked or the daemon stops."""

    def __init__(self, host: WorkerHost, tp: TopicPartition) -> None:
        self.host = host
        self.tp = tp
        self.queue: asyncio.Queue[ConsumerRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: The apply stage waiting for a record or a stop (``_take``), woken by either.
        self._waiting: asyncio.Future[None] | None = None
        self._label = f"{tp.topic}/{tp.partition}"
        #: The group's committed offset as far as this worker knows (None: not yet known).
        self.committed: int | None = None
        self._retry = StepRetry(host, tp)
        #: The apply of the batch being taken in (a stop cancels it when an earlier
        #: batch is still in flight, as it would have waited for that one before).
        self._applying: asyncio.Future[_Settled] | None = None
        #: Applied batches for the send stage, in order; None: no more (a stop).
        self._settled: asyncio.Queue[_Settled | None] = asyncio.Queue(_DEPTH)
        #: Acknowledged batches whose offset is not committed yet, in order.
        self._acknowledged: deque[_Settled] = deque()
        self._acked_offset: int | None = None
        self._sent_all = False
        self._to_commit = asyncio.Event()
        #: First offsets of the batches taken and not yet committed or given up
        #: (``consumergen_batches_in_progress``).
        self._open: set[int] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"partition-{self._label}")

    def feed(self, records: list[ConsumerRecord]) -> None:
        self.host.metrics.stages.stamp("fetched", records)
        for record in records:
            self.queue.put_nowait(record)
        self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    @property
    def backlog(self) -> int:
        return self.queue.qsize()

    async def stop(self, grace: float) -> bool:
        """Take no new batch; let the batches in flight finish within ``grace`` seconds.

        Returns False when a batch had to be abandoned (its offset is then not
        committed, so its events come again and the inbox makes them duplicates).
        """
        self._stopping.set()
        self._wake()
        if self._applying is not None and len(self._open) > 1:
            self._applying.cancel()  # only the batches in flight before it are waited for
        task = self._task
        if task is None or task.done():
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
        """The three stages; a bug in any stops all of them, and the daemon."""
        stages = [
            asyncio.create_task(self._apply_loop(), name=f"apply-{self._label}"),
            asyncio.create_task(self._send_loop(), name=f"send-{self._label}"),
            asyncio.create_task(self._commit_loop(), name=f"commit-{self._label}"),
        ]
        try:
            pending = set(stages)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for stage in done:
                    if not stage.cancelled() and stage.exception() is not None:
                        raise stage.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not an infrastructure failure: stop loudly rather than stall the
            # partition silently.  Nothing past the failing batch is committed: the
            # other stages are stopped first.
            await _cancel(stages)
            log.exception(
                "partition worker crashed",
                partition=self._label,
                failure_class=classify(exc).value,
                error_class=type(exc).__name__,
            )
            self.host.fatal(exc)
        finally:
            await _cancel(stages)
            self._close_all()

    # -- the stages ---------------------------------------------------------------------
    async def _apply_loop(self) -> None:
        while not self._stopping.is_set():
            batch = await self._take()
            if batch is None:
                break
            self._opened(batch)
            applying = self._applying = asyncio.ensure_future(self._settle(batch))
            try:
                settled = await applying
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if applying.cancelled() and not (task and task.cancelling()):
                    # cancelled by a stop: its transaction rolled back or, if it
                    # committed, its events come again as duplicates (no offset commit)
                    self._closed(batch)
                    break
                raise
            finally:
                self._applying = None
            await self._settled.put(settled)
            self.host.relieve_backpressure(self.tp, self.backlog)
        await self._settled.put(None)

    async def _send_loop(self) -> None:
        clock = self.host.metrics.stages
        done = False
        while not done:
            first = await self._settled.get()
            if first is None:
                break
            # Every batch applied meanwhile goes in the same write, in offset order: as
            # the records of one batch share requests, so do those of batches that queued
            # while the previous write waited for its acknowledgement.
            ready = [first]
            while not self._settled.empty():
                following = self._settled.get_nowait()
                if following is None:
                    done = True
                    break
                ready.append(following)
            await self._write(ready)
            for settled in ready:
                clock.stamp("acknowledged", settled.batch)
                if settled.trace is not None:
                    settled.trace.end()
                self._acknowledged.append(settled)
            self._acked_offset = ready[-1].next_offset
            self._to_commit.set()
        self._sent_all = True
        self._to_commit.set()

    async def _commit_loop(self) -> None:
        host = self.host
        clock = host.metrics.stages
        requested: int | None = None
        while True:
            await self._to_commit.wait()
            self._to_commit.clear()
            while self._acked_offset is not None and self._acked_offset != requested:
                offset = self._acked_offset

                def commit_latest() -> Awaitable[bool]:
                    nonlocal offset
                    offset = self._acked_offset or offset  # the latest, at each attempt
                    return host.commit(self.tp, offset)

                committed = await clock.timed(
                    "commit",
                    self._retry.run("commit", commit_latest),
                )
                requested = offset
                if committed:
                    self.committed = offset
                self._account(offset, committed)
            if self._sent_all:
                return

    # -- one batch ----------------------------------------------------------------------
    async def _take(self) -> list[ConsumerRecord] | None:
        """The next batch: wait for one record, then take what else is queued (None: a
        stop came first).  Adaptive: a lone event goes at once, and under load the queue
        fills while the previous batch is in the database, so batches grow."""
        while self.queue.empty() and not self._stopping.is_set():
            # One future that ``feed`` and ``stop`` resolve (``_wake``): a batch at light
            # load is often one record, and racing two tasks for it (the queue's getter
            # and the stop's waiter) cost more than the rest of taking it.
            waiting = self._waiting = asyncio.get_running_loop().create_future()
            try:
                await waiting
            finally:
                self._waiting = None
        if self._stopping.is_set():
            return None  # (records not taken at a stop are read again by the next owner)
        batch = [self.queue.get_nowait()]
        limit = self.host.config.batch_max_events
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _settle(self, batch: list[ConsumerRecord]) -> _Settled:
        """Decode, apply and encode one batch: everything up to its writes to the sinks."""
        began = time.perf_counter()
        host = self.host
        clock = host.metrics.stages
        trace = batch_trace(self.tp.topic, self.tp.partition, batch, host.config.group_id)
        try:
            with clock.sync("admit"):
                admitted = admit_batch(batch, host.config.max_event_bytes)
            clock.stamp("admitted", batch)
            outcomes: list[Outcome] = []
            if admitted.valid:
                with _step([trace], "database transaction"):
                    outcomes = await clock.timed(
                        "apply",
                        self._retry.run(
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
                    messages = outcome_messages(settled, admitted.invalid, now, host.config.replies)
                if trace is not None:
                    dead, messages = trace.stamp(settled, admitted.invalid, dead, messages)
        except BaseException as exc:
            if trace is not None:
                trace.end(exc)
            raise
        occurred = [event.occurred_at for event, _ in admitted.valid]
        return _Settled(batch, outcomes, dead, messages, began, occurred, trace)

    async def _write(self, ready: list[_Settled]) -> None:
        """The batches' dead letters and outcome records, in offset order, until
        acknowledged."""
        host = self.host
        clock = host.metrics.stages
        dead = [letter for settled in ready for letter in settled.dead]
        messages = (
            None
            if host.outcomes is None
            else [message for settled in ready for message in settled.messages or ()]
        )
        traces = [settled.trace for settled in ready]
        if dead:
            with _step(traces, "send dead letters"):
                await clock.timed(
                    "send",
                    self._retry.run(
                        "dead_letter", lambda: host.dead_letters.write_dead_letters(dead)
                    ),
                )
        sink = host.outcomes
        if sink is not None and messages:
            with _step(traces, "send outcomes"):
                await clock.timed(
                    "send", self._retry.run("outcomes", lambda: sink.write_outcomes(messages))
                )

    def _account(self, offset: int, committed: bool) -> None:
        """The acknowledged batches up to ``offset`` are committed (or the group moved
        on: ``committed`` False): count and log each."""
        host = self.host
        clock = host.metrics.stages
        while self._acknowledged and self._acknowledged[0].next_offset <= offset:
            settled = self._acknowledged.popleft()
            if committed:
                host.metrics.observe_committed(settled.occurred)
                clock.stamp("offset", settled.batch)
            with clock.sync("account"):
                host.record_batch(
                    self.tp,
                    settled.batch,
                    settled.outcomes,
                    settled.dead,
                    time.perf_counter() - settled.began,
                )
            self._closed(settled.batch)

    def _opened(self, batch: list[ConsumerRecord]) -> None:
        self._open.add(batch[0].offset)
        self.host.metrics.batches_in_progress.inc()

    def _closed(self, batch: list[ConsumerRecord]) -> None:
        if batch[0].offset in self._open:
            self._open.discard(batch[0].offset)
            self.host.metrics.batches_in_progress.dec()

    def _close_all(self) -> None:
        """Whatever way the stages end, no batch stays counted in progress."""
        self.host.metrics.batches_in_progress.dec(len(self._open))
        self._open.clear()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _step(traces: list[BatchTrace | None], name: str) -> AbstractContextManager[object]:
    """A span of one step in each traced batch it serves; nothing when not tracing."""
    traced = [trace for trace in traces if trace is not None]
    if not traced:
        return nullcontext()
    stack = ExitStack()
    for trace in traced:
        stack.enter_context(trace.step(name))
    return stack
