"""Probes: can the broker and the database be reached at all, and how far behind is
each partition.  Readiness must drop even when no event is flowing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.daemon.health import Readiness
from service.daemon.membership import Membership
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
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
