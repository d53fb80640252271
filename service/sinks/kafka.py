"""The Kafka sinks: dead letters to the dead-letter topic, outcomes to the outcomes topic.

Both write through one ``KafkaProducerHandle`` (acks=all, idempotent: the options of
``service.kafka.clients``) and return only once the broker acknowledged every record.
Their errors are sorted here, through ``service.failures``: a broker that cannot serve
now becomes ``SinkUnavailable(kind="broker")`` (the daemon retries the batch); a size
refusal of a dead letter is handled here (below); anything else propagates as a bug.

A dead letter always fits its topic (``service.sinks.fit``): the sink knows the limit,
the dead-letter topic's ``max.message.bytes`` (read once at start) capped by the
producer's ``max_request_size``, and cuts a letter over it.  A letter the broker refuses
as too large all the same is sent once more as the bare error headers; one refused even
so is the record refusal of ``service.sinks.base``: logged and given up, never retried
as if the broker were down.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from service.config import Settings
from service.contract.replies import CORRELATION_HEADER, partition_of_topic
from service.failures import broker_unavailable, record_refused
from service.kafka.partitioning import partition_for
from service.kafka.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES
from service.sinks.base import DeadLetter, Headers, OutcomeMessage, SinkUnavailable
from service.sinks.fit import FittedLetter, bare_letter, fit_letter, letter_size
from service.sinks.kafka_producer import KafkaProducerHandle

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def _classified(
    what: str, handle: KafkaProducerHandle, write: Callable[[], Awaitable[T]]
) -> T:
    """Run ``write``; a broker that cannot serve now becomes ``SinkUnavailable``.

    After any failed write the producer is dropped (``KafkaProducerHandle``), so the
    retry starts a fresh one."""
    try:
        return await write()
    except SinkUnavailable:
        raise
    except Exception as exc:
        await handle.stop_quietly()
        if broker_unavailable(exc):
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise SinkUnavailable(
                f"{what} not written: {type(exc).__name__}: {detail}", kind="broker"
            ) from exc
        raise  # not the broker's "not now": a bug (failures.classify says which)


class KafkaDeadLetterSink:
    """``DeadLetterSink`` on the dead-letter topic."""

    def __init__(self, settings: Settings, handle: KafkaProducerHandle) -> None:
        self.settings = settings
        self.handle = handle

    @property
    def dead_letter_limit(self) -> int:
        """The most bytes a dead letter (as a one-record batch) may take: the dead-letter
        topic's ``max.message.bytes`` (the broker default until it could be read), capped
        by the producer's ``max_request_size``."""
        topic = self.handle.dlq_topic_limit or BROKER_DEFAULT_MAX_MESSAGE_BYTES
        return min(topic, self.handle.max_request_size)

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter (original key, value and headers plus error headers, cut to
        fit the topic) and wait for all acks.

        A failure other than a size refusal raises, so that the batch is retried whole
        (letters already acknowledged are then written again: dead letters are
        at-least-once).  Letters refused as too large are sent again one at a time, and
        one still refused is sent as its bare error headers; one refused even so is
        logged and given up (its offset is committed: the original stays on the events
        topic at the coordinates logged)."""
        await _classified("dead letters", self.handle, lambda: self._write(letters))

    async def _write(self, letters: Sequence[DeadLetter]) -> None:
        producer = await self.handle.ready()
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
        except Exception as exc:  # a refusal is sorted below, anything else re-raised
            await self.handle.stop_quietly()  # see KafkaProducerHandle
            if not record_refused(exc):
                raise
            results = [exc] * len(fitted)  # refused before sending: redo all, one by one
        failed = [i for i, result in enumerate(results) if isinstance(result, BaseException)]
        if not failed:
            return
        await self.handle.stop_quietly()
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
        fitted = fit_letter(letter.key, letter.value, letter.headers, limit)
        if fitted.cut:
            log.warning(
                "dead letter cut to fit the dead-letter topic",
                origin_topic=letter.origin.topic,
                origin_partition=letter.origin.partition,
                origin_offset=letter.origin.offset,
                cut=",".join(fitted.cut),
                letter_bytes=letter_size(letter.key, letter.value, letter.headers),
                limit=limit,
            )
        return fitted

    async def _one_by_one(self, letter: DeadLetter, fitted: FittedLetter) -> None:
        origin = letter.origin
        attempts = (fitted, bare_letter(letter.headers, letter.key, letter.value))
        for number, attempt in enumerate(attempts):
            producer = await self.handle.ready()
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
            except Exception as exc:  # a refusal is sorted here, anything else re-raised
                await self.handle.stop_quietly()
                if not record_refused(exc):
                    raise
                log.warning(
                    "dead letter refused as too large",
                    origin_topic=origin.topic,
                    origin_partition=origin.partition,
                    origin_offset=origin.offset,
                    bare=number == 1,
                    error_class=type(exc).__name__,
                )
        log.error(
            "dead letter not written: refused as too large even with only its error headers",
            origin_topic=origin.topic,
            origin_partition=origin.partition,
            origin_offset=origin.offset,
            reason=letter.reason,
        )


class KafkaOutcomeSink:
    """``OutcomeSink`` on the outcomes topic (one record per event, keyed by event id) and,
    for each event that asked (``service.contract.replies``), on its requester's reply
    partition, with its correlation id; both are acknowledged before this returns."""

    def __init__(self, topic: str | None, handle: KafkaProducerHandle) -> None:
        self.topic = topic
        self.handle = handle

    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        """The routes were vetted upstream (``contract.replies.ReplyPolicy``: only the
        allowed reply topics): each goes where it says."""
        if not messages:
            return

        async def write() -> None:
            # Every topic's batches are handed to the producer first, then all their
            # acknowledgements awaited at once: a task per topic (gathered coroutines)
            # was two tasks and their hand-offs for a lone event's outcome and reply.
            producer = await self.handle.ready()
            futures: list[asyncio.Future[object]] = []
            try:
                if self.topic is not None:
                    await _send_batched(producer, self.topic, messages, futures)
                by_topic: dict[str, list[OutcomeMessage]] = {}
                for message in messages:
                    if message.reply is not None:
                        by_topic.setdefault(message.reply.topic, []).append(message)
                for reply_topic, replies in by_topic.items():
                    await _send_replies(producer, reply_topic, replies, futures)
                await asyncio.gather(*futures)
            except BaseException:
                _seen_when_done(futures)
                raise

        await _classified("outcome records", self.handle, write)


async def _send_replies(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Sequence[OutcomeMessage],
    futures: list[asyncio.Future[object]],
) -> None:
    """Each reply to the partition its request named, with its correlation id; a reply
    to a partition the topic does not have is dropped (logged): the request was wrong,
    and retrying it would block the partition for ever."""
    partitions = len(await producer.partitions_for(topic))
    records: list[_Record] = []
    for message in messages:
        route = message.reply
        assert route is not None
        if partition_of_topic(route.partition, partitions):
            headers = [(CORRELATION_HEADER, route.correlation), *(message.headers or ())]
            records.append((route.partition, message.key, message.value, headers))
    if len(records) < len(messages):
        log.warning(
            "replies dropped: their requests named a partition the reply topic lacks",
            reply_topic=topic,
            dropped=len(messages) - len(records),
            partitions=partitions,
        )
    await _send_records(producer, topic, records, "a reply record", futures)


async def _send_batched(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Sequence[OutcomeMessage],
    futures: list[asyncio.Future[object]],
) -> None:
    """Each outcome record to the partition the default partitioner would choose,
    exactly as ``send()`` would put it (``service.kafka.partitioning``: the same
    murmur2, a word at a time)."""
    partitions = sorted(await producer.partitions_for(topic))
    records = (
        (
            random.choice(partitions) if m.key is None else partition_for(m.key, partitions),
            m.key,
            m.value,
            m.headers,
        )
        for m in messages
    )
    await _send_records(producer, topic, records, "an outcome record", futures)


#: A record ready for a batch: partition, key, value, headers.
_Record = tuple[int, bytes | None, bytes | None, Headers | None]


async def _send_records(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[_Record],
    what: str,
    futures: list[asyncio.Future[object]],
) -> None:
    """Hand the records over with one batch builder per partition; each batch's
    acknowledgement goes into ``futures`` (the caller awaits them all).

    ``send()`` per record (a coroutine, a future, an accumulator lookup each) cost about
    as much CPU as building the record itself; the outcomes are one record per event,
    so this is on the daemon's hot path."""
    builders: dict[int, BatchBuilder] = {}
    for partition, key, value, headers in records:
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # full: send it, and start the partition's next batch with this record
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"{what} larger than a whole batch")
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))


def _seen_when_done(futures: list[asyncio.Future[object]]) -> None:
    """A write given up before all its acknowledgements were awaited (cancelled while a
    later ``send_batch`` waited for its partition's previous batch to drain, or failed):
    the futures ``send_batch`` already returned are aiokafka's *shields* of its batches,
    so failing the batches (``kafka_producer._fail_pending``) fails them too, with nobody
    left to look.  Their exceptions are looked at when they come: the write is retried
    whole, and asyncio logs no "exception was never retrieved" ERROR."""
    for future in futures:
        future.add_done_callback(_look)


def _look(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
