"""Group membership: a worker per assigned partition, adopted and released at rebalances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from service.daemon.health import Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.worker import PartitionWorker, WorkerHost

log = structlog.get_logger(__name__)


class Membership:
    """The partitions this daemon owns, each with its running worker."""

    def __init__(
        self,
        host: WorkerHost,
        *,
        pauses: Pauses,
        readiness: Readiness,
        metrics: DaemonMetrics,
        revoke_grace: float,
    ) -> None:
        self.host = host
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self._pauses = pauses
        self._readiness = readiness
        self._metrics = metrics
        #: How long a revoked partition may take to finish its in-flight batch.
        self.revoke_grace = revoke_grace
        #: Bumped at every assignment and revocation: a fetch that saw it change while in
        #: flight checks its records are still current (``service.daemon.fetch``).
        self.changes = 0

    def listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    def adopt(self, assigned: list[TopicPartition]) -> None:
        self.changes += 1
        for tp in assigned:
            if tp not in self.workers:
                worker = PartitionWorker(self.host, tp)
                self.workers[tp] = worker
                worker.start()
        self._count()
        log.info("partitions assigned", count=len(assigned), total=len(self.workers))

    async def release(self, revoked: list[TopicPartition], grace: float | None = None) -> None:
        """Finish (or abandon, after ``grace``: ``revoke_grace`` unless given) the in-flight
        batch of each revoked partition; each batch commits its own offset when durable,
        so what is done is committed before the partitions go."""
        self.changes += 1
        workers = [self.workers.pop(tp) for tp in revoked if tp in self.workers]
        wait = self.revoke_grace if grace is None else min(grace, self.revoke_grace)
        clean = await asyncio.gather(*(w.stop(wait) for w in workers))
        for tp in revoked:
            self._pauses.forget(tp)
            self._readiness.failing.pop(f"{tp.topic}/{tp.partition}", None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp.topic, str(tp.partition))
        self._metrics.paused_partitions.set(len(self._readiness.failing))
        if not all(clean):
            log.warning(
                "revoked partitions left a batch unfinished; the next owner redoes it",
                abandoned_batches=sum(1 for ok in clean if not ok),
            )
        self._count()
        log.info("partitions revoked", count=len(revoked), total=len(self.workers))

    async def stop_all(self, grace: float) -> None:
        """At shutdown: every worker finishes (or abandons) its in-flight batch."""
        if self.workers:
            clean = await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
            log.info(
                "daemon stopping",
                partitions=len(clean),
                abandoned_batches=sum(1 for ok in clean if not ok),
            )
        self.workers.clear()

    def _count(self) -> None:
        self._readiness.assigned = len(self.workers)
        self._metrics.assigned_partitions.set(len(self.workers))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, membership: Membership) -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._membership.release(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._membership.adopt(list(assigned))
