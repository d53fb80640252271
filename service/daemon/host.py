"""The daemon's side of ``WorkerHost``: what the partition workers are given.

The ports (applier, sinks, commit) and what a worker reports back: backpressure,
infrastructure failures (the partition is paused and readiness says so) and the
numbers of each committed batch (counted at once; logged a line per partition at most
every second, ``service.daemon.committed_log``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter

from service.daemon.batch import dead_letter_fields
from service.daemon.commits import CommitCoalescer
from service.daemon.committed_log import CommittedLog
from service.daemon.health import Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.worker import Applies, WorkerConfig
from service.domain.outcomes import Outcome
from service.failures import infrastructure_kind
from service.sinks.base import DeadLetter, DeadLetterSink, OutcomeSink

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = structlog.get_logger(__name__)


class DaemonWorkerHost:
    """Implements ``service.daemon.worker.WorkerHost`` for the daemon."""

    def __init__(
        self,
        *,
        config: WorkerConfig,
        applier: Applies,
        dead_letters: DeadLetterSink,
        outcomes: OutcomeSink | None,
        commits: CommitCoalescer,
        pauses: Pauses,
        readiness: Readiness,
        metrics: DaemonMetrics,
        fatal: Callable[[BaseException], None],
    ) -> None:
        self.config = config
        self.applier = applier
        self.dead_letters = dead_letters
        self.outcomes = outcomes
        self.metrics = metrics
        self._commits = commits
        self._pauses = pauses
        self._readiness = readiness
        self._fatal = fatal
        #: A worker with this many records queued has its partition paused.
        self.high_water = config.batch_max_events * 4
        #: The committed batches' INFO lines, a partition's batches of a second in one.
        self.committed_log = CommittedLog(functools.partial(log.info, "batch committed"))
        #: ``consumergen_events_total``'s child per "kind:reason" key: a label lookup
        #: (validation, a lock, a tuple) per batch and kind is a fixed cost of every
        #: small batch.  Those children are never removed, so they can be kept.
        self._event_counters: dict[str, Counter] = {}

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        return await self._commits.commit(tp, offset)

    def fatal(self, exc: BaseException) -> None:
        self._fatal(exc)

    def relieve_backpressure(self, tp: TopicPartition, backlog: int) -> None:
        if backlog < self.high_water // 2:
            self._pauses.resume(tp, "backpressure")

    def infrastructure_failed(self, tp: TopicPartition, step: str, exc: BaseException) -> None:
        kind = infrastructure_kind(exc) or "broker"  # only infrastructure failures come here
        label = f"{tp.topic}/{tp.partition}"
        self._pauses.pause(tp, "infrastructure")
        self._readiness.failing[label] = kind
        self._readiness.last_error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
        self.metrics.paused_partitions.set(len(self._readiness.failing))
        self.metrics.infrastructure_failures.labels(kind).inc()
        log.warning(
            "partition paused: infrastructure failure, retrying with backoff",
            partition=label,
            step=step,
            error_class=type(exc).__name__,
            error=str(exc),
        )

    def infrastructure_recovered(self, tp: TopicPartition, step: str, *, resumed: bool) -> None:
        """The failing step succeeded (``resumed``), or its batch was abandoned because
        the partition was revoked or the daemon stopped: either way it no longer holds
        readiness down."""
        label = f"{tp.topic}/{tp.partition}"
        self._pauses.resume(tp, "infrastructure")
        self._readiness.failing.pop(label, None)
        self.metrics.paused_partitions.set(len(self._readiness.failing))
        if resumed:
            log.info("partition resumed", partition=label, step=step)
        else:
            log.info("retrying partition given up: revoked or stopping", partition=label)

    def record_batch(
        self,
        tp: TopicPartition,
        batch: list[ConsumerRecord],
        outcomes: list[Outcome],
        dead: list[DeadLetter],
        seconds: float,
    ) -> None:
        metrics = self.metrics
        counts: dict[str, int] = {}
        for outcome in outcomes:
            why = outcome.reason
            key = f"{outcome.kind.value}:{why.value}" if why else outcome.kind.value
            counts[key] = counts.get(key, 0) + 1
            if outcome.attempts > 1:
                metrics.cas_retries.inc(outcome.attempts - 1)
        for letter in dead:
            # One line per dead letter, at WARNING: an operator sees each without
            # reading INFO batch summaries (UUIDs become pseudonyms in the line).
            log.warning("dead-lettered", **dead_letter_fields(letter))
            metrics.dead_lettered.labels(letter.reason).inc()
            if letter.invalid:
                key = f"invalid:{letter.reason}"
                counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            counter = self._event_counters.get(key)
            if counter is None:
                kind, _, label = key.partition(":")
                counter = self._event_counters[key] = metrics.events.labels(kind, label)
            counter.inc(n)
        metrics.batch_size.observe(len(batch))
        metrics.batch_seconds.observe(seconds)
        self.committed_log.committed(
            f"{tp.topic}/{tp.partition}",
            batch[0].offset,
            batch[-1].offset,
            len(batch),
            counts,
            seconds,
        )
