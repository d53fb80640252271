"""The daemon's outer loop: group membership, fetching, rebalances, shutdown.

Fetching happens in one loop; each assigned partition has its own worker task, so
partitions progress concurrently while each stays strictly in offset order.  A
partition whose worker has too much queued, or whose infrastructure is failing, is
paused at the consumer so that memory stays bounded and nothing is fetched in vain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
    SaslAuthenticationFailed,
    UnknownMemberIdError,
)
from sqlalchemy import text

from service.apply.applier import Applier
from service.config import Settings
from service.daemon.health import HealthServer, Readiness
from service.daemon.metrics import DaemonMetrics
from service.daemon.partition import PartitionWorker
from service.daemon.publish import Publisher
from service.domain.outcomes import Outcome
from service.failures import FailureClass, classify, infrastructure_kind
from service.kafka.clients import BrokerUnavailable, client_options, consumer_options, start_bounded
from service.store.engine import read_only
from service.store.errors import describe, is_transient
from service.store.migrate import ensure_schema_current
from service.store.unit_of_work import SqlUnitOfWorkFactory

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
    # "Partition ... is not assigned": a worker's offset arrived after its revocation.
    # (Retried for ever as "any KafkaError" before failures were classified; it is
    # neither the infrastructure's fault nor a bug, but a rebalance.)
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)


class _RepeatLimiter(logging.Filter):
    """At most one record per message template per ``window`` seconds.

    While a broker is unreachable, aiokafka's metadata synchroniser retries without
    backoff and logs every failure: thousands of identical ERROR lines a second.  One
    line per window (saying how many were held back) tells the operator as much.
    """

    def __init__(self, window: float = 5.0) -> None:
        super().__init__()
        self.window = window
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        last, held = self._last.get(key, (0.0, 0))
        if now - last < self.window:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} similar lines held back]"
        return True


def limit_library_repeats() -> None:
    """Install the repeat limiter on aiokafka's chattiest logger (once)."""
    chatty = logging.getLogger("aiokafka")
    if not any(isinstance(f, _RepeatLimiter) for f in chatty.filters):
        chatty.addFilter(_RepeatLimiter())


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
        self.applier = Applier(SqlUnitOfWorkFactory(engine), settings)
        self.publisher = Publisher(settings, lambda: self.readiness.broker_reachable)
        #: How long a revoked partition may take to finish its in-flight batch.
        self.revoke_grace = min(settings.shutdown_grace_seconds, 20.0)
        self.consumer = self._make_consumer()
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self._paused_by: dict[TopicPartition, set[str]] = {}
        #: Offsets waiting for the committer task, with the future each worker awaits.
        self._pending_commits: dict[TopicPartition, tuple[int, asyncio.Future[bool]]] = {}
        self._committer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._high_water = settings.batch_max_events * 4
        self.health: HealthServer | None = None
        self.fatal_error: BaseException | None = None

    def _make_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            **consumer_options(
                settings,
                group_id=settings.group_id,
                group_instance_id=settings.group_instance_id,
            ),
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            # The group waits for a revoking member to finish its in-flight batch.
            rebalance_timeout_ms=max(
                settings.session_timeout_ms, int(self.revoke_grace * 1000) + 5_000
            ),
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
        watcher: asyncio.Task[None] | None = None
        try:
            await self._wait_for_schema()
            if self._stop.is_set():
                return
            await self._start_clients()
            if self._stop.is_set():
                return
            self.consumer.subscribe([self.settings.topic], listener=_Rebalance(self))
            self.readiness.started = True
            log.info("daemon started", topic=self.settings.topic, group=self.settings.group_id)
            watcher = asyncio.create_task(self._watch(), name="probes")
            await self._fetch_loop()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self._shutdown()

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter for the ``failures``-th failure."""
        cap = min(
            self.settings.infra_retry_wait_initial_seconds * float(2 ** (failures - 1)),
            self.settings.infra_retry_wait_max_seconds,
        )
        return cap * random.uniform(0.5, 1.0)

    async def _wait_for_schema(self) -> None:
        """Refuse to start on a schema this code does not match (``SchemaNotCurrentError``
        propagates); but a database that is down or locked is waited for, with backoff and
        /readyz saying so, like any other infrastructure failure."""
        failures = 0
        while not self._stop.is_set():
            try:
                await ensure_schema_current(self.engine)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                delay = self._backoff(failures)
                self.readiness.database_reachable = False
                self.readiness.last_error = f"database: {describe(exc)}"
                self.metrics.infrastructure_failures.labels("database").inc()
                log.warning(
                    "database unavailable at start, retrying",
                    error=describe(exc),
                    attempt=failures,
                    retry_in=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            self.readiness.database_reachable = True
            if failures:
                log.info("database reachable, starting", failed_attempts=failures)
            return

    async def _start_clients(self) -> None:
        """Connect to the broker, retrying with capped, jittered backoff: the broker may
        come later, or the credentials may be fixed later; either way the daemon neither
        gives up nor hammers the broker, and /readyz says what is wrong."""
        settings = self.settings
        failures = 0
        while not self._stop.is_set():
            try:
                await self.publisher.start()
                await start_bounded(self.consumer, settings, "consumer")
                self.readiness.broker_reachable = True
                self.readiness.last_error = None
                if failures:
                    log.info("broker reachable, starting", failed_attempts=failures)
                return
            except BrokerUnavailable as exc:
                failures += 1
                self.readiness.broker_reachable = False
                self.metrics.infrastructure_failures.labels("broker").inc()
                await self.publisher.stop_quietly()
                self.consumer = self._make_consumer()  # a failed client cannot start again
                delay = self._backoff(failures)
                cause = await self._diagnose_connection()
                if cause is not None and cause.startswith("authentication failed"):
                    self.readiness.last_error = f"broker: {cause}"
                    log.error(
                        "Kafka refused the credentials; check CONSUMERGEN_SASL_USERNAME, "
                        "CONSUMERGEN_SASL_PASSWORD and CONSUMERGEN_SASL_MECHANISM; retrying",
                        bootstrap=settings.bootstrap_servers,
                        security_protocol=settings.security_protocol,
                        mechanism=settings.sasl_mechanism,
                        username=settings.sasl_username,
                        attempt=failures,
                        retry_in=round(delay, 2),
                    )
                else:
                    self.readiness.last_error = f"broker: {cause or exc}"
                    log.warning(
                        "broker unavailable at start, retrying",
                        error=str(exc),
                        cause=cause,
                        attempt=failures,
                        retry_in=round(delay, 2),
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _diagnose_connection(self) -> str | None:
        """Why the first bootstrap server refused us: aiokafka's start error only says
        "unable to bootstrap"; one direct connection tells a wrong password apart from a
        broker that is down.  The answer never contains the credentials."""
        options = client_options(self.settings)
        servers: list[str] = options.pop("bootstrap_servers")
        host, _, port = servers[0].rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), **options), self.settings.request_timeout_seconds
            )
        except SaslAuthenticationFailed as exc:
            text_ = " ".join(str(exc).split())
            return f"authentication failed ({self.settings.sasl_mechanism}): {text_}"
        except (KafkaError, OSError, TimeoutError, ValueError) as exc:
            return " ".join((str(exc) or type(exc).__name__).split())
        conn.close()
        return None

    async def _watch(self) -> None:
        """Every ``probe_interval_seconds``: can the broker and the database be reached at
        all (readiness must drop even when no event is flowing), and how far behind is
        each partition."""
        interval = self.settings.probe_interval_seconds
        while not self._stop.is_set():
            await self._probe_broker()
            await self._probe_database()
            await self._refresh_lag()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _probe_broker(self) -> None:
        try:
            await asyncio.wait_for(self.consumer.topics(), self.settings.request_timeout_seconds)
        except (KafkaError, OSError, TimeoutError) as exc:
            error = " ".join((str(exc) or type(exc).__name__).split())
            self.readiness.last_error = f"broker: {error}"
            if self.readiness.broker_reachable:
                self.readiness.broker_reachable = False
                self.metrics.infrastructure_failures.labels("broker").inc()
                log.warning("broker unreachable: pausing every partition", error=error)
                # aiokafka's clients re-request metadata without any backoff while they
                # have work for an unreachable broker (thousands of attempts, and log
                # lines, a second): give them none.  Fetching stops for the paused
                # partitions, and the producer, with whatever it had pending, is dropped
                # (those writes fail and are retried, paced, by their partitions).
                for tp in list(self.workers):
                    self._pause(tp, "broker")
                await self.publisher.stop_quietly()
            return
        if not self.readiness.broker_reachable:
            self.readiness.broker_reachable = True
            for tp in list(self.workers):
                self._resume(tp, "broker")
            log.info("broker reachable again: resuming")

    async def _probe_database(self) -> None:
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                async with self.engine.connect() as connection:
                    # A reader: on SQLite it must not take (or wait for) the write lock.
                    connection = await read_only(connection)
                    await connection.execute(text("SELECT 1"))
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, TimeoutError)):
                log.error("database probe failed unexpectedly", error=describe(exc))
            if self.readiness.database_reachable:
                self.readiness.database_reachable = False
                self.metrics.infrastructure_failures.labels("database").inc()
                log.warning("database unreachable", error=describe(exc))
            self.readiness.last_error = f"database: {describe(exc)}"
            return
        if not self.readiness.database_reachable:
            self.readiness.database_reachable = True
            log.info("database reachable again")

    async def _refresh_lag(self) -> None:
        for tp, worker in list(self.workers.items()):
            if worker.committed is None:
                try:
                    worker.committed = await asyncio.wait_for(self.consumer.committed(tp), 2)
                except (KafkaError, TimeoutError, OSError):
                    continue
            high = self.consumer.highwater(tp)
            if high is not None and worker.committed is not None and tp in self.workers:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - worker.committed)
                )

    async def _fetch_loop(self) -> None:
        stop_waiter = asyncio.create_task(self._stop.wait())
        fetch_failures = 0
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
                except Exception as exc:
                    # Records aiokafka cannot decode arrive as UndecodableRecord values
                    # (service.kafka.records); what is still raised here is either the
                    # broker's "not now" (back off, retry) or a bug (stop loudly).
                    if classify(exc) is not FailureClass.INFRASTRUCTURE:
                        log.error(
                            "fetch failed with an error that is not the infrastructure's: stopping",
                            error_class=type(exc).__name__,
                            error=str(exc)[:300],
                        )
                        self.fatal(exc)
                        break
                    fetch_failures += 1
                    delay = self._backoff(fetch_failures)
                    self.metrics.infrastructure_failures.labels("broker").inc()
                    log.warning(
                        "fetch failed, retrying",
                        error_class=type(exc).__name__,
                        error=str(exc)[:300],
                        attempt=fetch_failures,
                        retry_in=round(delay, 2),
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    continue
                fetch_failures = 0
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
        # Bounded: with the broker gone, leaving the group or flushing could wait long.
        # Everything durable is committed by now; nothing else is left to lose.
        bound = self.settings.request_timeout_seconds
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.stop(), bound)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.stop(), bound)
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
        clean = await asyncio.gather(*(w.stop(self.revoke_grace) for w in workers))
        for tp in revoked:
            self._paused_by.pop(tp, None)
            self.readiness.failing.pop(f"{tp.topic}/{tp.partition}", None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        self.metrics.paused_partitions.set(len(self.readiness.failing))
        if not all(clean):
            log.warning(
                "revoked partitions left a batch unfinished; the next owner redoes it",
                abandoned_batches=sum(1 for ok in clean if not ok),
            )
        self.readiness.assigned = len(self.workers)
        self.metrics.assigned_partitions.set(len(self.workers))
        log.info("partitions revoked", count=len(revoked), total=len(self.workers))

    # -- services for the partition workers ----------------------------------------------
    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        """Commit ``offset`` for ``tp``; False when the group moved on (harmless).

        Workers of every partition call this after each batch; their offsets are merged
        into one OffsetCommit request at a time (one round trip for all partitions that
        finished meanwhile, instead of a queue of them).  Bounded by the request timeout:
        aiokafka waits for a coordinator without end, and a commit that cannot be made
        must surface (as TimeoutError, an infrastructure failure) so that the partition
        is reported paused."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending_commits[tp] = (offset, done)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="committer")
        return await done

    async def _commit_pending(self) -> None:
        while self._pending_commits:
            batch, self._pending_commits = self._pending_commits, {}
            offsets = {tp: offset for tp, (offset, _) in batch.items()}
            outcome: bool | BaseException
            try:
                await asyncio.wait_for(
                    self.consumer.commit(offsets), self.settings.request_timeout_seconds
                )
                outcome = True
            except _HARMLESS_COMMIT_ERRORS as exc:
                log.info("commit refused by a rebalance; redelivery is absorbed", error=str(exc))
                outcome = False
            except Exception as exc:  # each waiter's worker classifies it (failures.py)
                outcome = exc
            for tp, (offset, done) in batch.items():
                if done.done():  # the waiting worker was cancelled (revoked, stopping)
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                    continue
                done.set_result(outcome)
                assigned = outcome and tp in self.consumer.assignment()
                high = self.consumer.highwater(tp) if assigned else None
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
        kind = infrastructure_kind(exc) or "broker"  # only infrastructure failures come here
        label = f"{tp.topic}/{tp.partition}"
        self._pause(tp, "infrastructure")
        self.readiness.failing[label] = kind
        self.readiness.last_error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
        self.metrics.paused_partitions.set(len(self.readiness.failing))
        self.metrics.infrastructure_failures.labels(kind).inc()
        log.warning(
            "partition paused: infrastructure failure, retrying with backoff",
            partition=label,
            step=what,
            error_class=type(exc).__name__,
            error=str(exc),
        )

    def infrastructure_recovered(self, tp: TopicPartition, what: str, *, resumed: bool) -> None:
        """The failing step succeeded (``resumed``), or its batch was abandoned because
        the partition was revoked or the daemon stopped: either way it no longer holds
        readiness down."""
        label = f"{tp.topic}/{tp.partition}"
        self._resume(tp, "infrastructure")
        self.readiness.failing.pop(label, None)
        self.metrics.paused_partitions.set(len(self.readiness.failing))
        if resumed:
            log.info("partition resumed", partition=label, step=what)
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
    limit_library_repeats()
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
