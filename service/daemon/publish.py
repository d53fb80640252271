"""What the daemon writes back to Kafka: dead letters and outcome records.

Both are awaited until the broker acknowledged them (acks=all, idempotent producer)
before the partition's offset is committed; a failed write is an infrastructure
failure for the caller to retry, never a reason to skip an event.

A dead letter always fits its topic (``service.daemon.fit``): the publisher knows the
limit, the dead-letter topic's ``max.message.bytes`` (read once at start) capped by the
producer's ``max_request_size``, and cuts a letter over it.  A letter the broker refuses
as too large all the same is sent once more as the bare error headers; a refusal is the
record's fault and never retried as if the broker were down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from service.config import Settings
from service.contract.decode import InvalidEvent
from service.contract.records import outcome_key, outcome_record
from service.daemon.fit import (
    FittedLetter,
    bare_letter,
    fit_letter,
    letter_size,
)
from service.domain.outcomes import Outcome
from service.failures import record_refused
from service.kafka.clients import (
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    BrokerUnavailable,
    client_options,
    start_bounded,
    topic_max_message_bytes,
)

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.daemon.partition import DeadLetter

log = structlog.get_logger(__name__)


class Publisher:
    """The daemon's producer, replaced after any failed write.

    A write that failed (timed out while the broker was away, or was refused with
    ``OutOfOrderSequenceNumber`` because earlier batches of this idempotent producer
    expired) leaves the producer's sequence numbers out of step with the broker, and
    its sender keeps hammering the broker for metadata while batches are pending.  So
    the producer is dropped at once and a fresh one (new producer id, nothing pending)
    is started by the next attempt, which the caller paces with its backoff.
    """

    def __init__(self, settings: Settings, broker_reachable: Callable[[], bool] | None = None):
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._broker_reachable = broker_reachable or (lambda: True)
        #: The dead-letter topic's ``max.message.bytes`` (None: not read yet, or unreadable).
        self._dlq_topic_limit: int | None = None

    @property
    def max_request_size(self) -> int:
        return max(1_048_576, self.settings.max_event_bytes + 65_536)

    @property
    def dead_letter_limit(self) -> int:
        """The most bytes a dead letter (as a one-record batch) may take: the dead-letter
        topic's ``max.message.bytes`` (the broker default until it could be read), capped
        by the producer's ``max_request_size``."""
        topic = self._dlq_topic_limit or BROKER_DEFAULT_MAX_MESSAGE_BYTES
        return min(topic, self.max_request_size)

    @property
    def outcomes_enabled(self) -> bool:
        return self.settings.outcomes_topic is not None

    def _make(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=self.max_request_size,
        )

    async def start(self) -> None:
        """Connect, bounded by the request timeout; raises ``BrokerUnavailable`` (with the
        half-started producer closed) when the broker cannot be reached."""
        producer = self._make()
        await start_bounded(producer, self.settings, "dead-letter producer")
        self._producer = producer
        if self._dlq_topic_limit is None:
            self._dlq_topic_limit = await self._read_dlq_limit()

    @staticmethod
    def _unread_limit(topic: str, exc: BaseException) -> None:
        log.warning(
            "cannot read the dead-letter topic's max.message.bytes; assuming the default",
            topic=topic,
            default=BROKER_DEFAULT_MAX_MESSAGE_BYTES,
            error=str(exc),
        )

    async def _read_dlq_limit(self) -> int | None:
        """The dead-letter topic's ``max.message.bytes``, or None (logged) when it cannot
        be read; the broker default then stands in, and the next start tries again."""
        settings = self.settings
        topic = settings.dlq_topic
        admin = AIOKafkaAdminClient(**client_options(settings))
        try:
            await start_bounded(admin, settings, "admin client")  # closes it on failure
        except BrokerUnavailable as exc:
            self._unread_limit(topic, exc)
            return None
        try:
            limit = await topic_max_message_bytes(admin, topic, settings)
        except BrokerUnavailable as exc:
            self._unread_limit(topic, exc)
            return None
        finally:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(admin.close(), settings.request_timeout_seconds)
        if limit is None:
            log.warning(
                "the dead-letter topic's max.message.bytes is unknown; assuming the default",
                topic=topic,
                default=BROKER_DEFAULT_MAX_MESSAGE_BYTES,
            )
        else:
            log.info(
                "dead-letter size limit",
                topic=topic,
                max_message_bytes=limit,
                max_request_size=self.max_request_size,
            )
        return limit

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await asyncio.wait_for(producer.stop(), self.settings.request_timeout_seconds)

    async def stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()

    async def _ready(self) -> AIOKafkaProducer:
        """The producer to write with, (re)started if the last write failed; fails fast
        (as an infrastructure error) while the daemon's probe finds the broker away."""
        if not self._broker_reachable():
            raise KafkaConnectionError("broker unreachable; not writing until it is back")
        if self._producer is None:
            try:
                await self.start()
            except BrokerUnavailable as exc:
                raise KafkaConnectionError(str(exc)) from None
        assert self._producer is not None
        return self._producer

    async def _written(self, sends: Callable[[AIOKafkaProducer], Awaitable[None]]) -> None:
        producer = await self._ready()
        try:
            await sends(producer)
        except Exception:
            await self.stop_quietly()  # see the class docstring
            raise

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher not started")
        return self._producer

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter (original key, value and headers plus error headers, cut to
        fit the topic) and wait for all acks.

        A failure other than a size refusal raises, so that the batch is retried whole
        (letters already acknowledged are then written again: dead letters are
        at-least-once).  Letters refused as too large are sent again one at a time, and
        one still refused is sent as its bare error headers; one refused even so is
        logged and given up (its offset is committed: the original stays on the events
        topic at the coordinates logged)."""
        producer = await self._ready()
        limit = self.dead_letter_limit
        fitted = [self._fitted(letter, limit) for letter in letters]
        try:
            futures = [
                await producer.send(
                    self.settings.dlq_topic, value=f.value, key=f.key, headers=f.headers
                )
                for f in fitted
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except Exception as exc:
            await self.stop_quietly()  # see the class docstring
            if not record_refused(exc):
                raise
            results = [exc] * len(fitted)  # refused before sending: redo all, one by one
        failed = [i for i, result in enumerate(results) if isinstance(result, BaseException)]
        if not failed:
            return
        await self.stop_quietly()
        errors = [results[i] for i in failed]
        if not any(isinstance(e, BaseException) and record_refused(e) for e in errors):
            error = errors[0]
            assert isinstance(error, BaseException)
            raise error
        # A refusal may have broken the idempotent producer's sequence for the letters
        # sent after it: redo every failed letter on its own.
        for i in failed:
            await self._one_by_one(letters[i], fitted[i])

    def _fitted(self, letter: DeadLetter, limit: int) -> FittedLetter:
        record = letter.record
        fitted = fit_letter(record.key, record.value, letter.headers, limit)
        if fitted.cut:
            log.warning(
                "dead letter cut to fit the dead-letter topic",
                origin_topic=record.topic,
                origin_partition=record.partition,
                origin_offset=record.offset,
                cut=",".join(fitted.cut),
                letter_bytes=letter_size(record.key, record.value, letter.headers),
                limit=limit,
            )
        return fitted

    async def _one_by_one(self, letter: DeadLetter, fitted: FittedLetter) -> None:
        record = letter.record
        attempts = (fitted, bare_letter(letter.headers, record.key, record.value))
        for number, attempt in enumerate(attempts):
            producer = await self._ready()
            try:
                await (
                    await producer.send(
                        self.settings.dlq_topic,
                        value=attempt.value,
                        key=attempt.key,
                        headers=attempt.headers,
                    )
                )
                return
            except Exception as exc:
                await self.stop_quietly()
                if not record_refused(exc):
                    raise
                log.warning(
                    "dead letter refused as too large",
                    origin_topic=record.topic,
                    origin_partition=record.partition,
                    origin_offset=record.offset,
                    bare=number == 1,
                    error_class=type(exc).__name__,
                )
        log.error(
            "dead letter not written: refused as too large even with only its error headers",
            origin_topic=record.topic,
            origin_partition=record.partition,
            origin_offset=record.offset,
            reason=letter.reason,
        )

    async def outcomes(
        self,
        applied: Sequence[tuple[ConsumerRecord, Outcome]],
        invalid: Sequence[tuple[ConsumerRecord, InvalidEvent]],
    ) -> None:
        """One record per event, keyed by event id (no key when the id was unreadable)."""
        topic = self.settings.outcomes_topic
        if topic is None:
            return
        now = datetime.now(UTC)
        records: list[tuple[bytes, bytes | None]] = []
        for record, outcome in applied:
            value = outcome_record(
                event_id=outcome.event_id,
                consumer_uuid=outcome.consumer_uuid,
                outcome=outcome.kind,
                reason=outcome.reason,
                generation_after=outcome.generation_after,
                original_outcome=outcome.original,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                processed_at=now,
            )
            records.append((value, outcome_key(outcome.event_id)))
        for record, error in invalid:
            value = outcome_record(
                event_id=None,
                consumer_uuid=None,
                outcome="invalid",
                reason=error.reason,
                generation_after=None,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                processed_at=now,
                message=error.message,
            )
            records.append((value, None))

        async def sends(producer: AIOKafkaProducer) -> None:
            await _send_batched(producer, topic, records)

        await self._written(sends)


_PARTITIONER = DefaultPartitioner()


async def _send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> None:
    """Send with one batch builder per partition and wait for every ack.

    ``send()`` per record (a coroutine, a future, an accumulator lookup each) cost about
    as much CPU as building the record itself; the outcomes are one record per event,
    so this is on the daemon's hot path.  Keyed records land on the partition the
    default partitioner would choose, exactly as ``send()`` would put them.
    """
    partitions = list(await producer.partitions_for(topic))
    builders: dict[int, BatchBuilder] = {}
    futures: list[asyncio.Future[object]] = []
    for value, key in records:
        if key is None:
            partition = random.choice(partitions)
        else:
            partition = _PARTITIONER(key, partitions, partitions)
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError("an outcome record larger than a whole batch")
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*futures)
