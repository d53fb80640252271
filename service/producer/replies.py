"""Waiting for the outcome of what a producer sent: the reply side of request-reply.

A producer that wants outcomes reads **one partition** of the reply topic
(``CONSUMERGEN_REPLY_TOPIC``): its own, chosen at random at start unless given, and
named in every request it sends (``service.contract.replies``, Spring's headers).  It
never reads the outcomes topic, so its reading grows with its own traffic (plus that of
producers that happen to share its partition), not with the whole system's.

No race: the listener fixes its position on the partition (its end) *before* the first
request is sent, and a request's future is registered *before* the request is handed to
Kafka; a reply that arrives before anyone awaits it resolves that future and is kept.
Replies whose correlation id is not ours (another producer on the partition, a request
we gave up) are counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from service.config import ConfigError, Settings
from service.contract.records import parse_outcome_record
from service.contract.replies import correlation_of, partition_of_topic
from service.contract.state import state_from_document
from service.domain.consumer import ConsumerState
from service.domain.errors import InfrastructureUnavailable
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.kafka.clients import BrokerUnavailable, close_quietly, consumer_options, start_bounded
from service.tracing import active as tracing_active

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = structlog.get_logger(__name__)


class OutcomeTimeout(InfrastructureUnavailable):
    """No outcome arrived within the wait.  The event is durable on the events topic and
    may still be applied later (the daemon may be stopped, restarting or behind): read
    the consumer, or wait again, before sending a replacement."""


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """The outcome record of one event, as the daemon reported it."""

    event_id: str | None
    consumer_uuid: str | None
    kind: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    original: OutcomeKind | None
    #: The consumer as the event left it (None for invalid events and when no row).
    state_after: ConsumerState | None
    message: str | None
    source: EventSource

    @property
    def ok(self) -> bool:
        """Applied now, or a duplicate of an applied event (a duplicate re-reports the
        original outcome, so a duplicate of a rejection is not ok)."""
        if self.kind is OutcomeKind.APPLIED:
            return True
        return self.kind is OutcomeKind.DUPLICATE and self.original is OutcomeKind.APPLIED

    @property
    def summary(self) -> str:
        """``applied``, ``rejected: generation_conflict``, ``duplicate of applied``..."""
        if self.kind is OutcomeKind.DUPLICATE:
            text = f"duplicate of {self.original}"
            return text if self.reason is None else f"{text}: {self.reason}"
        return str(self.kind) if self.reason is None else f"{self.kind}: {self.reason}"


def outcome_from_record(value: bytes) -> EventOutcome:
    """An outcome record (``schemas/outcome.schema.json``) as an ``EventOutcome``."""
    record = parse_outcome_record(value)
    state = None
    if record.state_after is not None and record.consumer_uuid is not None:
        state = state_from_document(record.consumer_uuid, record.state_after.model_dump())
    return EventOutcome(
        event_id=record.event_id,
        consumer_uuid=record.consumer_uuid,
        kind=OutcomeKind(record.outcome),
        reason=None if record.reason is None else Reason(record.reason),
        generation_after=record.generation_after,
        original=None if record.original_outcome is None else OutcomeKind(record.original_outcome),
        state_after=state,
        message=record.message,
        source=EventSource(record.source.topic, record.source.partition, record.source.offset),
    )


@dataclass
class ReplyCounts:
    """What the listener read: every record of its partition, and how many were ours."""

    records_read: int = 0
    matched: int = 0
    foreign: int = 0


def choose_reply_partition(requested: int | None, topic: str, partitions: int) -> int:
    """The partition to listen on: ``requested``, or one at random when None; a
    partition the topic lacks is a ``ConfigError`` (no reply would ever reach it)."""
    if partitions == 0:
        raise ConfigError(f"CONSUMERGEN_REPLY_TOPIC: no such topic: {topic}")
    if requested is None:
        return secrets.randbelow(partitions)
    if not partition_of_topic(requested, partitions):
        raise ConfigError(
            f"reply partition {requested}: {topic} has partitions 0 to {partitions - 1}"
        )
    return requested


@dataclass
class ReplyListener:
    """Reads one reply partition and settles the futures of the requests sent with it."""

    settings: Settings
    partition: int | None = None
    counts: ReplyCounts = field(default_factory=ReplyCounts)

    def __post_init__(self) -> None:
        self.topic: str = self.settings.reply_topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        #: Traced requests: the send span each reply answers (service.tracing).
        self._sent: dict[bytes, SpanContext] = {}

    async def start(self) -> None:
        """Assign the partition and fix the position at its end (before any request)."""
        # A reply is never held: the broker answers a fetch as soon as one byte is there
        # (``fetch_min_bytes``), and with one partition assigned the next fetch goes out
        # the moment a reply is handed over, so ``fetch_max_wait_ms`` only bounds an idle
        # long poll (aiokafka holds back a partition only while another of the same
        # broker's fetches is in flight, and this reader has one partition).
        consumer = AIOKafkaConsumer(
            **consumer_options(
                self.settings, group_id=None, enable_auto_commit=False, fetch_min_bytes=1
            )
        )
        await start_bounded(consumer, self.settings, "reply consumer")
        try:
            # The consumer's own metadata is filled in lazily; ask the cluster now.
            cluster = await consumer._client.fetch_all_metadata()
            count = len(cluster.partitions_for_topic(self.topic) or ())
            self.partition = choose_reply_partition(self.partition, self.topic, count)
            tp = TopicPartition(self.topic, self.partition)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)  # resolved now: nothing sent after it is missed
        except (KafkaError, OSError) as exc:
            await close_quietly(consumer)
            raise BrokerUnavailable(f"reply consumer: {type(exc).__name__}: {exc}") from None
        except BaseException:
            await close_quietly(consumer)
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer, tp), name="replies")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_quietly(consumer)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OutcomeTimeout("the producer closed before the outcome"))
                future.exception()  # a request nobody awaits any more: not a warning
        self._waiting.clear()
        self._sent.clear()

    def expect(self, correlation: bytes, sent: SpanContext | None = None) -> asyncio.Future[bytes]:
        """Register a request's correlation id (before sending it): its reply's future.
        ``sent``: the request's ``send`` span, when traced."""
        if self._task is None:
            raise RuntimeError("ReplyListener is not started")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        if sent is not None:
            self._sent[correlation] = sent
        return future

    def forget(self, correlation: bytes) -> None:
        self._sent.pop(correlation, None)
        future = self._waiting.pop(correlation, None)
        if future is not None and not future.done():
            future.cancel()

    def _trace_reply(self, sent: SpanContext | None, tp: TopicPartition, record: Any) -> None:
        """The reply's ``receive`` span: the end of the trace its request began."""
        tracing = tracing_active()
        if sent is None or tracing is None:
            return
        from service.tracing.spans import reply_received

        reply_received(tracing, tp.topic, tp.partition, record.offset, record.headers, sent)

    async def _read(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        counts = self.counts
        while True:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    counts.records_read += 1
                    correlation = correlation_of(record.headers)
                    future = None if correlation is None else self._waiting.pop(correlation, None)
                    if future is None:
                        counts.foreign += 1
                        continue
                    counts.matched += 1
                    if self._sent and correlation is not None:
                        self._trace_reply(self._sent.pop(correlation, None), tp, record)
                    if not future.done() and record.value is not None:
                        future.set_result(record.value)
