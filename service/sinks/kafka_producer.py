"""The producer the Kafka sinks share, replaced after any failed write.

A write that failed (timed out while the broker was away, or was refused with
``OutOfOrderSequenceNumber`` because earlier batches of this idempotent producer
expired) leaves the producer's sequence numbers out of step with the broker, and its
sender keeps hammering the broker for metadata while batches are pending.  So the
producer is dropped at once and a fresh one (new producer id, nothing pending) is
started by the next attempt, which the caller paces with its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from service.config import Settings
from service.kafka.clients import (
    BrokerUnavailable,
    client_options,
    max_request_size,
    producer_options,
    start_bounded,
)
from service.kafka.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES, topic_max_message_bytes
from service.sinks.base import SinkUnavailable

log = structlog.get_logger(__name__)


class KafkaProducerHandle:
    """Starts, hands out and drops the sinks' producer (see the module docstring)."""

    def __init__(self, settings: Settings, broker_reachable: Callable[[], bool] | None = None):
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._broker_reachable = broker_reachable or (lambda: True)
        #: The dead-letter topic's ``max.message.bytes`` (None: not read yet, or unreadable).
        self.dlq_topic_limit: int | None = None

    @property
    def max_request_size(self) -> int:
        return max_request_size(self.settings)

    async def start(self) -> None:
        """Connect, bounded by the request timeout; raises ``BrokerUnavailable`` (with the
        half-started producer closed) when the broker cannot be reached."""
        producer = AIOKafkaProducer(**producer_options(self.settings))
        await start_bounded(producer, self.settings, "dead-letter producer")
        self._producer = producer
        if self.dlq_topic_limit is None:
            self.dlq_topic_limit = await self._read_dlq_limit()

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
        """Flush and close, within the request timeout.  A producer that cannot flush
        (its broker is gone) has its pending batches failed once the bound is reached,
        so that its stop completes: cutting aiokafka's stop short instead would leave its
        sender task and client retrying about ten times a second, for ever."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            timeout = self.settings.request_timeout_seconds
            stopping = asyncio.ensure_future(producer.stop())
            # A timer, not this task: a caller cancelled meanwhile (a worker released at
            # an outage) must not leave the stop hanging on a flush that cannot happen.
            timer = asyncio.get_running_loop().call_later(timeout, _fail_pending, producer)
            stopping.add_done_callback(lambda _: timer.cancel())
            await asyncio.wait_for(asyncio.shield(stopping), 2 * timeout)

    async def stop_quietly(self) -> None:
        """Drop the producer (after a failed write, or while the broker is away): its
        pending writes fail and are retried, paced, by their partitions."""
        with contextlib.suppress(Exception):
            await self.stop()

    async def abandon(self) -> None:
        """Drop the producer without waiting to flush, for a broker that is gone (after
        every writer was released, ``service.daemon.outage``).  aiokafka's ``stop``
        waits for pending batches; when a bound cuts that wait short, its sender task and
        client go on retrying about ten times a second for as long as the outage lasts.
        Failing the pending batches first lets ``stop`` finish at once."""
        if self._producer is not None:
            _fail_pending(self._producer)
        await self.stop_quietly()

    async def ready(self) -> AIOKafkaProducer:
        """The producer to write with, (re)started if the last write failed; fails fast
        (``SinkUnavailable``) while the daemon's probe finds the broker away."""
        if not self._broker_reachable():
            raise SinkUnavailable("broker unreachable; not writing until it is back", kind="broker")
        if self._producer is None:
            try:
                await self.start()
            except BrokerUnavailable as exc:
                raise SinkUnavailable(str(exc), kind="broker") from None
        assert self._producer is not None
        return self._producer


def _fail_pending(producer: AIOKafkaProducer) -> None:
    """Fail every batch the producer still holds (queued or in flight): their senders
    see a ``KafkaConnectionError``, and the producer's flush, hence its stop, is done.

    Two details of aiokafka 0.14's accumulator make this more than ``fail_all``:
    a batch that was sent, failed and queued again for a retry is no longer in the
    in-flight set, yet the done-callback from its first send still removes it from
    there (a ``KeyError`` in an asyncio callback, logged as an ERROR), so such batches
    are put back in the set first; and the writers who awaited these futures may have
    been released already (an outage abandons their batches), so every failed future
    (a batch's, its messages', its drain waiter's) is marked as seen, or asyncio logs
    "exception was never retrieved" when it is collected.  A writer still awaiting one
    gets the error all the same."""
    accumulator = producer._message_accumulator
    queued = [batch for batches in accumulator._batches.values() for batch in batches]
    held = [*queued, *accumulator._pending_batches]
    accumulator._pending_batches.update(batch for batch in queued if batch.retry_count)
    accumulator.fail_all(KafkaConnectionError("the broker is gone: pending writes abandoned"))
    for batch in held:
        messages = (future for future, _ in batch._msg_futures)
        for future in (batch.future, batch._drain_waiter, *messages):
            if future.done() and not future.cancelled():
                future.exception()
