"""Probes: can the broker and the database be reached at all, how far behind is each
partition, and does anything stand still (``service.daemon.stalls``).  Readiness must
drop even when no event is flowing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.daemon.health import Readiness
from service.daemon.membership import Membership
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.stalls import PartitionView, StallWatch
from service.store.engine import read_only
from service.store.errors import describe, is_transient

log = structlog.get_logger(__name__)


class Probes:
    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Callable[[], AIOKafkaConsumer],
        engine: AsyncEngine,
        membership: Membership,
        pauses: Pauses,
        readiness: Readiness,
        metrics: DaemonMetrics,
        online: Callable[[], bool],
        broker_lost: Callable[[], None],
        stalls: StallWatch,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._engine = engine
        self._membership = membership
        self._pauses = pauses
        self._readiness = readiness
        self._metrics = metrics
        self._online = online
        self._broker_lost = broker_lost
        self._stalls = stalls

    async def watch(self, stop: asyncio.Event) -> None:
        """Every ``probe_interval_seconds`` until ``stop``: the broker, the database, the lag."""
        interval = self.settings.probe_interval_seconds
        while not stop.is_set():
            # While the clients are parked (``service.daemon.outage``), the reconnect
            # routine is the broker's probe, and there is no lag to read.
            if self._online():
                await self.probe_broker()
            await self.probe_database()
            if self._online():
                await self.refresh_lag()
            await self.check_stalls()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def probe_broker(self) -> None:
        readiness = self._readiness
        workers = self._membership.workers
        try:
            await asyncio.wait_for(self._consumer().topics(), self.settings.request_timeout_seconds)
        except (KafkaError, OSError, TimeoutError) as exc:
            error = " ".join((str(exc) or type(exc).__name__).split())
            readiness.last_error = f"broker: {error}"
            if readiness.broker_reachable:
                readiness.broker_reachable = False
                self._metrics.infrastructure_failures.labels("broker").inc()
                log.warning("broker unreachable: parking the Kafka clients", error=error)
                # aiokafka's clients re-request metadata without any backoff while they
                # have work for an unreachable broker: the daemon stops them and
                # reconnects with capped backoff instead (``service.daemon.outage``).
                self._broker_lost()
            return
        if not readiness.broker_reachable:
            readiness.broker_reachable = True
            for tp in list(workers):
                self._pauses.resume(tp, "broker")
            log.info("broker reachable again: resuming")

    async def probe_database(self) -> None:
        readiness = self._readiness
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                async with self._engine.connect() as connection:
                    # A reader: on SQLite it must not take (or wait for) the write lock.
                    connection = await read_only(connection)
                    await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure makes the database unready; odd ones logged
            if not (is_transient(exc) or isinstance(exc, TimeoutError)):
                log.error("database probe failed unexpectedly", error=describe(exc))
            if readiness.database_reachable:
                readiness.database_reachable = False
                self._metrics.infrastructure_failures.labels("database").inc()
                log.warning("database unreachable", error=describe(exc))
            readiness.last_error = f"database: {describe(exc)}"
            return
        if not readiness.database_reachable:
            readiness.database_reachable = True
            log.info("database reachable again")

    async def refresh_lag(self) -> None:
        consumer = self._consumer()
        workers = self._membership.workers
        for tp, worker in list(workers.items()):
            if worker.committed is None:
                try:
                    worker.committed = await asyncio.wait_for(consumer.committed(tp), 2)
                except (KafkaError, TimeoutError, OSError):
                    continue
            high = consumer.highwater(tp)
            if high is not None and worker.committed is not None and tp in workers:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - worker.committed)
                )

    async def check_stalls(self) -> None:
        """Publish what stands still (``service.daemon.stalls``): /livez, the gauges, a
        log line when a stall begins."""
        online = self._online()
        views = await self._partition_views() if online else {}
        now = time.monotonic()
        fetch_stalled = self._stalls.fetch_loop_stalled(now, online=online)
        partitions = self._stalls.stalled_partitions(now, views)
        stalled = (("fetch loop",) if fetch_stalled else ()) + tuple(
            f"{tp.topic}/{tp.partition}" for tp in partitions
        )
        for what in sorted(set(stalled) - set(self._readiness.stalled)):
            log.error(
                "stalled: failing /livez so that the process is restarted",
                stalled=what,
                bound_seconds=self._stalls.bound,
            )
        self._readiness.stalled = stalled
        self._metrics.stalled_partitions.set(len(partitions))
        self._metrics.fetch_loop_stalled.set(1 if fetch_stalled else 0)

    async def _partition_views(self) -> dict[TopicPartition, PartitionView]:
        """Each assigned partition's committed offset (the worker's), end offset (the
        consumer's high watermark; asked of the broker for a partition not fetched yet,
        which is what a stalled one may be) and whether it is paused."""
        consumer = self._consumer()
        workers = dict(self._membership.workers)
        ends = {tp: consumer.highwater(tp) for tp in workers}
        unknown = [tp for tp, end in ends.items() if end is None]
        if unknown:
            with contextlib.suppress(KafkaError, TimeoutError, OSError):
                asked = await asyncio.wait_for(
                    consumer.end_offsets(unknown), self.settings.request_timeout_seconds
                )
                ends.update(asked)
        return {
            tp: PartitionView(
                owner=worker,
                committed=worker.committed,
                end=ends.get(tp),
                paused=self._pauses.is_paused(tp),
            )
            for tp, worker in workers.items()
        }
