"""The daemon's outer loop: group membership, fetching, rebalances, shutdown.

Fetching happens in one loop; each assigned partition has its own worker task, so
partitions progress concurrently while each stays strictly in offset order.  A
partition whose worker has too much queued, or whose infrastructure is failing, is
paused at the consumer so that memory stays bounded and nothing is fetched in vain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from service.apply.engine import Applier, TransientDatabaseError
from service.apply.outcomes import Outcome
from service.broker import client_options
from service.config import Settings
from service.daemon.health import HealthServer, Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.partition import PartitionWorker
from service.daemon.publish import Publisher

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
    from sqlalchemy.ext.asyncio import AsyncEngine

    from service.daemon.partition import DeadLetter

log = structlog.get_logger(__name__)

#: Commit errors that only mean "the group moved on": the next owner re-reads from the
#: last durable commit and the inbox turns what it re-reads into duplicates.
_HARMLESS_COMMIT_ERRORS = (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._daemon.release(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._daemon.adopt(list(assigned))


class Daemon:
    """Consume the events topic and apply it; see ``run`` for the life cycle."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics or DaemonMetrics()
        self.readiness = Readiness()
        self.applier = Applier(engine, settings)
        self.publisher = Publisher(settings)
        self.consumer = self._make_consumer()
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self._paused_by: dict[TopicPartition, set[str]] = {}
        self._commit_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._high_water = settings.batch_max_events * 4
        self.health: HealthServer | None = None
        self.fatal_error: BaseException | None = None

    def _make_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            **client_options(settings),
            group_id=settings.group_id,
            group_instance_id=settings.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1_048_576, settings.max_event_bytes * 2),
        )

    # -- life cycle -----------------------------------------------------------------------
    def fatal(self, exc: BaseException) -> None:
        """A worker hit a bug: stop the whole daemon, which then exits non-zero."""
        if self.fatal_error is None:
            self.fatal_error = exc
        self.request_stop()

    def request_stop(self) -> None:
        self._stop.set()
        self.readiness.stopping = True

    async def run(self, health: bool = True) -> None:
        """Start, consume until ``request_stop``, then stop gracefully."""
        if health:
            self.health = HealthServer(
                self.settings.health_host, self.settings.health_port, self.readiness, self.metrics
            )
            self.health.start()
            log.info("health endpoints up", port=self.health.port)
        try:
            await self._start_clients()
            if self._stop.is_set():
                return
            self.consumer.subscribe([self.settings.topic], listener=_Rebalance(self))
            self.readiness.started = True
            log.info("daemon started", topic=self.settings.topic, group=self.settings.group_id)
            await self._fetch_loop()
        finally:
            await self._shutdown()

    async def _start_clients(self) -> None:
        """Connect to the broker, retrying with capped backoff: the broker may come later."""
        delay = self.settings.infra_retry_wait_initial_seconds
        while not self._stop.is_set():
            try:
                await self.publisher.start()
                await self.consumer.start()
                self.readiness.broker_ok = True
                return
            except KafkaError as exc:
                self.readiness.broker_ok = False
                self.metrics.infrastructure_failures.labels("broker").inc()
                log.warning("broker unavailable at start, retrying", error=str(exc), retry_in=delay)
                with contextlib.suppress(Exception):
                    await self.publisher.stop()
                with contextlib.suppress(Exception):
                    await self.consumer.stop()
                self.consumer = self._make_consumer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, self.settings.infra_retry_wait_max_seconds)

    async def _fetch_loop(self) -> None:
        stop_waiter = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                fetch = asyncio.create_task(
                    self.consumer.getmany(
                        timeout_ms=500, max_records=self.settings.batch_max_events * 2
                    )
                )
                done, _ = await asyncio.wait(
                    {fetch, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                if fetch not in done:
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    break
                try:
                    batches = fetch.result()
                except KafkaError as exc:
                    self.metrics.infrastructure_failures.labels("broker").inc()
                    log.warning("fetch failed, retrying", error=str(exc))
                    await asyncio.sleep(self.settings.infra_retry_wait_initial_seconds)
                    continue
                for tp, records in batches.items():
                    worker = self.workers.get(tp)
                    if worker is None:  # revoked while the fetch was in flight
                        continue
                    worker.feed(records)
                    if worker.backlog >= self._high_water:
                        self._pause(tp, "backpressure")
        finally:
            stop_waiter.cancel()

    async def _shutdown(self) -> None:
        self.readiness.stopping = True
        grace = self.settings.shutdown_grace_seconds
        if self.workers:
            clean = await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
            log.info(
                "daemon stopping",
                partitions=len(clean),
                abandoned_batches=sum(1 for ok in clean if not ok),
            )
        self.workers.clear()
        with contextlib.suppress(Exception):
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.publisher.stop()
        if self.health is not None:
            self.health.stop()
        log.info("daemon stopped")

    # -- rebalances -----------------------------------------------------------------------
    def adopt(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self.workers:
                worker = PartitionWorker(self, tp)
                self.workers[tp] = worker
                worker.start()
        self.readiness.assigned = len(self.workers)
        self.metrics.assigned_partitions.set(len(self.workers))
        log.info("partitions assigned", count=len(assigned), total=len(self.workers))

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Finish (or abandon) the in-flight batch of each revoked partition; each batch
        commits its own offset when durable, so what is done is committed before the
        partitions go."""
        workers = [self.workers.pop(tp) for tp in revoked if tp in self.workers]
        grace = min(self.settings.shutdown_grace_seconds, 20.0)
        await asyncio.gather(*(w.stop(grace) for w in workers))
        for tp in revoked:
            self._paused_by.pop(tp, None)
            self.readiness.paused.discard(f"{tp.topic}/{tp.partition}")
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        self.metrics.paused_partitions.set(len(self.readiness.paused))
        self.readiness.assigned = len(self.workers)
        self.metrics.assigned_partitions.set(len(self.workers))
        log.info("partitions revoked", count=len(revoked), total=len(self.workers))

    # -- services for the partition workers ----------------------------------------------
    async def commit(self, tp: TopicPartition, offset: int) -> None:
        async with self._commit_lock:
            try:
                await self.consumer.commit({tp: offset})
            except _HARMLESS_COMMIT_ERRORS as exc:
                log.info("commit refused by a rebalance; redelivery is absorbed", error=str(exc))
                return
        high = self.consumer.highwater(tp)
        if high is not None:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset))

    def _pause(self, tp: TopicPartition, why: str) -> None:
        reasons = self._paused_by.setdefault(tp, set())
        if not reasons and tp in self.consumer.assignment():
            self.consumer.pause(tp)
        reasons.add(why)

    def _resume(self, tp: TopicPartition, why: str) -> None:
        reasons = self._paused_by.get(tp)
        if not reasons or why not in reasons:
            return
        reasons.discard(why)
        if not reasons and tp in self.consumer.assignment():
            self.consumer.resume(tp)

    def relieve_backpressure(self, tp: TopicPartition, backlog: int) -> None:
        if backlog < self._high_water // 2:
            self._resume(tp, "backpressure")

    def infrastructure_failed(self, tp: TopicPartition, what: str, exc: BaseException) -> None:
        kind = "database" if isinstance(exc, TransientDatabaseError) else "broker"
        if what in ("dead_letter", "outcomes", "commit"):
            self.readiness.broker_ok = False
        else:
            self.readiness.database_ok = False
        self._pause(tp, "infrastructure")
        self.readiness.paused.add(f"{tp.topic}/{tp.partition}")
        self.metrics.paused_partitions.set(len(self.readiness.paused))
        self.metrics.infrastructure_failures.labels(kind).inc()
        log.warning(
            "partition paused: infrastructure failure, retrying with backoff",
            partition=f"{tp.topic}/{tp.partition}",
            step=what,
            error_class=type(exc).__name__,
            error=str(exc),
        )

    def infrastructure_recovered(self, tp: TopicPartition, what: str) -> None:
        self._resume(tp, "infrastructure")
        self.readiness.paused.discard(f"{tp.topic}/{tp.partition}")
        self.metrics.paused_partitions.set(len(self.readiness.paused))
        if not self.readiness.paused:
            self.readiness.database_ok = True
            self.readiness.broker_ok = True
        log.info("partition resumed", partition=f"{tp.topic}/{tp.partition}", step=what)

    def record_batch(
        self,
        tp: TopicPartition,
        batch: list[ConsumerRecord],
        outcomes: list[Outcome],
        dead: list[DeadLetter],
        seconds: float,
    ) -> None:
        counts: dict[tuple[str, str], int] = {}
        for outcome in outcomes:
            key = (outcome.kind.value, outcome.reason.value if outcome.reason else "")
            counts[key] = counts.get(key, 0) + 1
            if outcome.attempts > 1:
                self.metrics.cas_retries.inc(outcome.attempts - 1)
        for letter in dead:
            self.metrics.dead_lettered.labels(letter.reason).inc()
            if letter.invalid:
                counts[("invalid", letter.reason)] = counts.get(("invalid", letter.reason), 0) + 1
        for (kind, reason), n in counts.items():
            self.metrics.events.labels(kind, reason).inc(n)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(seconds)
        log.info(
            "batch committed",
            partition=f"{tp.topic}/{tp.partition}",
            first_offset=batch[0].offset,
            last_offset=batch[-1].offset,
            events=len(batch),
            outcomes={f"{k}:{r}" if r else k: n for (k, r), n in sorted(counts.items())},
            seconds=round(seconds, 4),
        )


async def run_daemon(settings: Settings, engine: AsyncEngine) -> int:
    """Run until SIGTERM/SIGINT; a second signal exits at once (nothing more is committed)."""
    daemon = Daemon(settings, engine)
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting at once", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("stop requested", signal=signal.Signals(signum).name)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    began = time.monotonic()
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if daemon.fatal_error is not None:
        log.error(
            "daemon exited after an internal error", error_class=type(daemon.fatal_error).__name__
        )
        return 1
    log.info("daemon exited", seconds=round(time.monotonic() - began, 1))
    return 0
