"""What a partition worker is given: its settings and its ports (``WorkerHost``).

Kept apart from ``service.daemon.worker`` so that the daemon's side (``host.py``) and
tests can implement the protocol without the worker's machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import Settings
from service.contract.replies import ReplyPolicy
from service.daemon.metrics import DaemonMetrics
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome
from service.sinks.base import DeadLetter, DeadLetterSink, OutcomeSink

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The settings a worker reads."""

    batch_max_events: int
    max_event_bytes: int
    retry_wait_initial: float
    retry_wait_max: float
    #: The topics the outcomes sink may send replies to (``contract.replies``); None:
    #: no replies, an outcome record for every event.
    replies: ReplyPolicy | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, refused_reply: Callable[[], None] | None = None
    ) -> WorkerConfig:
        """``refused_reply`` hears of each request naming a topic outside the allowed."""
        policy = ReplyPolicy(
            settings.reply_topics_allowed, every_outcome=settings.outcomes_topic is not None
        )
        if refused_reply is not None:
            policy = replace(policy, refused=refused_reply)
        return cls(
            batch_max_events=settings.batch_max_events,
            group_id=settings.group_id,
            max_event_bytes=settings.max_event_bytes,
            retry_wait_initial=settings.infra_retry_wait_initial_seconds,
            retry_wait_max=settings.infra_retry_wait_max_seconds,
            replies=policy,
        )

    #: The consumer group, as the batch spans name it (``service.tracing.daemon``); a
    #: field like those above, the last one.
    group_id: str | None = None


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


class ProducerLifecycle(Protocol):
    """The sinks' producer as the daemon drives it (``KafkaProducerHandle``)."""

    async def start(self) -> None:
        """Connect; raise ``service.kafka.clients.BrokerUnavailable`` when it cannot."""
        ...

    async def stop(self) -> None: ...

    async def stop_quietly(self) -> None: ...

    async def abandon(self) -> None:
        """The broker is gone: drop the producer without flushing (``daemon.outage``)."""
        ...


@dataclass(frozen=True, slots=True)
class DaemonEdges:
    """Everything the daemon talks to besides its database's schema and probe: the
    consumer (a fresh one per call: a stopped aiokafka consumer cannot start again), the
    sinks' producer, the sinks and the applier.

    ``Daemon`` builds the real ones (Kafka, the SQL applier) unless given these; the fast
    tests give fakes (``service.testing.fake_kafka``) and so run the whole daemon, fetch
    loop, membership, pauses, outages and commits included, without a broker.
    """

    make_consumer: Callable[[], AIOKafkaConsumer]
    producer: ProducerLifecycle
    dead_letters: DeadLetterSink
    outcomes: OutcomeSink | None
    applier: Applies
