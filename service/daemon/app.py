"""The daemon: wires its parts together and runs their life cycle.

``Daemon.run`` waits for the schema and the broker (``startup``), joins the group
(``membership``: a ``PartitionWorker`` per assigned partition, ``worker``), fetches
(``fetch``) while the probes watch the broker and the database (``probes``; a broker
found gone parks the Kafka clients until it is back, ``outage``), and on
``request_stop`` stops gracefully: every worker finishes or abandons its in-flight
batch, the consumer leaves the group, the sinks' producer flushes.  Offsets are
committed (``commits``) only after the database commit and the sinks' acks.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from service.apply.applier import Applier
from service.apply.group import GroupCommit
from service.config import Settings
from service.daemon import listeners
from service.daemon.commits import CommitCoalescer
from service.daemon.fetch import fetch_loop
from service.daemon.health import HealthServer, Readiness
from service.daemon.host import DaemonWorkerHost
from service.daemon.http_server import HttpServer
from service.daemon.liveness import beat_interval, heartbeat
from service.daemon.membership import Membership
from service.daemon.metrics import DaemonMetrics
from service.daemon.outage import BrokerOutage
from service.daemon.pauses import Pauses
from service.daemon.ports import Applies, DaemonEdges
from service.daemon.probes import Probes
from service.daemon.read_api import read_api_server
from service.daemon.read_tokens import ReadApiTokens
from service.daemon.retries import install_retry_hooks
from service.daemon.stalls import StallWatch
from service.daemon.startup import check_schema_once, start_clients, wait_for_schema
from service.daemon.timeline import Timeline
from service.daemon.worker import PartitionWorker, WorkerConfig
from service.kafka.clients import close_quietly, consumer_options
from service.sinks.coalescing import CoalescingOutcomeSink
from service.sinks.kafka import KafkaDeadLetterSink, KafkaOutcomeSink
from service.sinks.kafka_producer import KafkaProducerHandle
from service.store.dialects import dialect_for
from service.store.engine import create_engine, describe_database
from service.store.unit_of_work import GroupWriter, SqlUnitOfWorkFactory

log = structlog.get_logger(__name__)


class Daemon:
    """Consume the events topic and apply it; see ``run`` for the life cycle."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        metrics: DaemonMetrics | None = None,
        *,
        edges: DaemonEdges | None = None,
    ) -> None:
        install_retry_hooks()
        self.settings = settings
        self.engine = engine
        self.metrics = metrics or DaemonMetrics()
        self.readiness = Readiness(stale_after=settings.liveness_stale_seconds)
        self.metrics.bind_readiness(lambda: self.readiness.verdict()[0])
        if settings.timeline_file is not None:
            self.metrics.stages.timeline = Timeline(settings.timeline_file, settings.timeline_every)
        self.fatal_error: BaseException | None = None
        self.health: HealthServer | None = None
        self.read_api: HttpServer | None = None
        self._stop = asyncio.Event()
        #: How long a revoked partition may take to finish its in-flight batch.
        self.revoke_grace = min(settings.shutdown_grace_seconds, 20.0)
        #: SQLite's writer for group commit (None: another database, or fake edges).
        self.group_writer: GroupWriter | None = None
        edges = edges or self._kafka_edges()
        self._new_consumer = edges.make_consumer
        self.consumer = self._new_consumer()
        self.producer = edges.producer
        self.dead_letters = edges.dead_letters
        self.outcomes = edges.outcomes
        self.pauses = Pauses(lambda: self.consumer)
        self.commits = CommitCoalescer(
            lambda offsets: self.consumer.commit(offsets),
            timeout=settings.request_timeout_seconds,
            committed=self._committed,
        )
        self.host = DaemonWorkerHost(
            config=WorkerConfig.from_settings(settings, self.metrics.replies_refused.inc),
            applier=edges.applier,
            dead_letters=self.dead_letters,
            outcomes=self.outcomes,
            commits=self.commits,
            pauses=self.pauses,
            readiness=self.readiness,
            metrics=self.metrics,
            fatal=self.fatal,
        )
        self.membership = Membership(
            self.host,
            pauses=self.pauses,
            readiness=self.readiness,
            metrics=self.metrics,
            revoke_grace=self.revoke_grace,
        )
        self.outage = BrokerOutage(
            settings,
            consumer=lambda: self.consumer,
            renew_consumer=self._renew_consumer,
            membership=self.membership,
            drop_producer=self.producer.abandon,
            reconnect=lambda: self._start_clients("after an outage"),
            subscribe=self._subscribe,
            stop=self._stop,
            fatal=self.fatal,
        )
        self.stalls = StallWatch(settings.stall_bound)
        self.probes = Probes(
            settings,
            consumer=lambda: self.consumer,
            engine=engine,
            membership=self.membership,
            pauses=self.pauses,
            readiness=self.readiness,
            metrics=self.metrics,
            online=self.outage.online.is_set,
            broker_lost=self.outage.lost,
            stalls=self.stalls,
        )

    def _kafka_edges(self) -> DaemonEdges:
        """The real edges: Kafka clients and sinks, the SQL applier on ``engine`` (on a
        single-writer store, under group commit: the batches ready on several partitions
        share one transaction, ``service.apply.group``)."""
        settings = self.settings
        producer = KafkaProducerHandle(settings, lambda: self.readiness.broker_reachable)
        units = SqlUnitOfWorkFactory(self.engine)
        plain = Applier(units, settings)
        applier: Applies = plain
        self.group_writer = dialect_for(self.engine.dialect.name).group_writer(settings)
        if self.group_writer is not None:
            applier = GroupCommit(
                plain,
                self.group_writer,
                units.write_turn,
                on_group=self.metrics.group_commit_batches.observe,
            )
        return DaemonEdges(
            make_consumer=self._make_consumer,
            producer=producer,
            dead_letters=KafkaDeadLetterSink(settings, producer),
            # Outcome records go to the outcomes topic (observers) and, for an event that
            # asked, to its requester's reply partition (there is always a reply topic).
            # One write at a time for every partition's records (``sinks.coalescing``).
            outcomes=CoalescingOutcomeSink(KafkaOutcomeSink(settings.outcomes_topic, producer)),
            applier=applier,
        )

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

    def _renew_consumer(self) -> None:
        self.consumer = self._new_consumer()

    async def _start_clients(self, when: str) -> None:
        await start_clients(
            self.settings,
            producer=self.producer,
            consumer=lambda: self.consumer,
            renew_consumer=self._renew_consumer,
            readiness=self.readiness,
            metrics=self.metrics,
            stop=self._stop,
            when=when,
        )

    def _subscribe(self) -> None:
        self.consumer.subscribe([self.settings.topic], listener=self.membership.listener())

    @property
    def workers(self) -> dict[TopicPartition, PartitionWorker]:
        return self.membership.workers

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
        """Start, consume until ``request_stop``, then stop gracefully.

        The order is DESIGN.md's "a setting that cannot work ... before anything
        starts": the configuration (an exposed read API needs a token; its token file
        must be readable), then one schema and durability check (a refusal stops here),
        then every listener binds (a taken port stops here: ``ListenerError``), and only
        then the daemon waits for a database that is down, with its probes up."""
        settings = self.settings
        tokens = None
        if health:
            listeners.check_exposure(settings)
            tokens = ReadApiTokens.from_settings(settings)
        log.info(
            "daemon starting",
            database=describe_database(settings.database_url),
            bootstrap=settings.bootstrap_servers,
            topic=settings.topic,
            group=settings.group_id,
        )
        beats = asyncio.create_task(
            heartbeat(self.readiness, beat_interval(settings)), name="liveness-heartbeat"
        )
        watcher: asyncio.Task[None] | None = None
        try:
            current = await check_schema_once(
                settings, self.engine, readiness=self.readiness, metrics=self.metrics
            )
            if tokens is not None:
                self._listen(tokens)
            if not current:
                await wait_for_schema(
                    settings,
                    self.engine,
                    readiness=self.readiness,
                    metrics=self.metrics,
                    stop=self._stop,
                )
            if self._stop.is_set():
                return
            await self._start_clients("at start")
            if self._stop.is_set():
                return
            self._subscribe()
            self.outage.online.set()
            self.readiness.started = True
            log.info("daemon started", topic=settings.topic, group=settings.group_id)
            watcher = asyncio.create_task(self.probes.watch(self._stop), name="probes")
            await fetch_loop(
                settings,
                consumer=lambda: self.consumer,
                membership=self.membership,
                pauses=self.pauses,
                high_water=self.host.high_water,
                metrics=self.metrics,
                stop=self._stop,
                fatal=self.fatal,
                online=self.outage.online,
                parked=self.outage.parked,
                stalls=self.stalls,
            )
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self.outage.close()
            try:
                await self._shutdown()
            finally:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)

    def _listen(self, tokens: ReadApiTokens) -> None:
        """Bind the health server, then the read API (each on its own thread and loop)."""
        settings = self.settings
        health = HealthServer(
            settings.health_host, settings.health_port, self.readiness, self.metrics
        )
        listeners.start(health, listeners.health_listener(settings))
        self.health = health
        log.info(
            "health endpoints up",
            address=f"http://{settings.health_host}:{health.port}",
            paths="/livez /readyz /metrics",
        )
        where = listeners.read_api_listener(settings)
        if where is None:
            return
        # Its own server, and an engine of its own built on that server's loop.
        read_api = read_api_server(
            settings.read_api_host, where.port, lambda: create_engine(settings), tokens
        )
        listeners.start(read_api, where)
        self.read_api = read_api
        log.info(
            "read api up",
            address=f"http://{settings.read_api_host}:{read_api.port}",
            tokens_required=tokens.required,
        )

    async def _shutdown(self) -> None:
        self.readiness.stopping = True
        await self.membership.stop_all(self.settings.shutdown_grace_seconds)
        self.host.committed_log.flush()  # the last batches' line, not left to a timer
        # Bounded: with the broker gone, leaving the group or flushing could wait long.
        # Everything durable is committed by now; nothing else is left to lose.
        bound = self.settings.request_timeout_seconds
        with contextlib.suppress(Exception):
            # close_quietly: aiokafka's stop may end cancelled by itself while the
            # broker is gone (aio-libs/aiokafka#647); that must not end the shutdown.
            await asyncio.wait_for(close_quietly(self.consumer), bound)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), bound)
        if self.group_writer is not None:
            await self.group_writer.close()
        if self.health is not None:
            self.health.stop()
        if self.read_api is not None:
            self.read_api.stop()
        timeline = self.metrics.stages.timeline
        if timeline is not None:
            timeline.write()
            log.info("timeline written", stamps=timeline.rows)
        log.info("daemon stopped")

    def _committed(self, tp: TopicPartition, offset: int) -> None:
        """An offset is committed: the lag of a partition still assigned is known."""
        if tp not in self.consumer.assignment():
            return
        high = self.consumer.highwater(tp)
        if high is not None:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset))
