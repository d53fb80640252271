"""``EventProducer``: the async Python API that publishes consumer events.

Idempotent producer with ``acks="all"``: a retried send can neither be lost nor be
written twice by the producer itself (the daemon's inbox covers everything else).
Every event is validated with the daemon's own rules before it is handed to Kafka and
keyed by its consumer UUID, so the events of one consumer share a partition and an order.

A producer can also ask for each event's outcome (``request``, ``send_and_wait``:
request-reply, ``service.producer.replies``) and run a read-modify-write loop on a
consumer (``update``, ``service.producer.update``).

Why this module is long: ``EventProducer`` is the one public class of the producer API,
and its sending paths (single, bulk, request-reply) share one hand-over and one error
mapping; the mechanics each path needs beyond that live in their own modules.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.config import Settings
from service.contract.decode import InvalidEvent
from service.contract.records import CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE
from service.contract.replies import request_headers
from service.domain.errors import InfrastructureUnavailable
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType, Precondition
from service.kafka.clients import (
    BrokerUnavailable,
    describe_servers,
    producer_options,
    start_bounded,
)
from service.producer.events import new_event, wire_value
from service.producer.reads import ConsumerReader
from service.producer.replies import (
    EventOutcome,
    OutcomeTimeout,
    ReplyListener,
    outcome_from_record,
)
from service.producer.update import ChangeFunction, RetryPolicy, UpdateResult
from service.producer.update import update as run_update
from service.tracing import active as tracing_active

if TYPE_CHECKING:
    from service.tracing.spans import SendSpan

log = structlog.get_logger(__name__)

_HEADERS: Final = [(CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE.encode())]

EventInput = ConsumerEvent | Mapping[str, Any] | bytes


class ProduceError(InfrastructureUnavailable):
    """Kafka did not take the event (unreachable, timed out, topic missing, refused)."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where an event was written: it is durable (acks=all) once you hold this."""

    event_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The fate of item ``index`` of a bulk send: ``result`` or ``error``, never both."""

    index: int
    event_id: str | None
    result: SendResult | None = None
    error: InvalidEvent | ProduceError | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True, slots=True)
class PendingOutcome:
    """A request on its way: durable once you hold this (``sent``); ``await outcome()``
    for what the daemon made of it.  The reply is kept from the moment it arrives, so
    awaiting late loses nothing; a wait that times out can be repeated."""

    #: The event's id; None for a raw request whose id was not read.
    event_id: str | None
    sent: SendResult
    future: asyncio.Future[bytes]
    timeout_seconds: float

    async def outcome(self, wait_seconds: float | None = None) -> EventOutcome:
        """The outcome, or ``OutcomeTimeout`` after ``wait_seconds`` (default
        ``CONSUMERGEN_OUTCOME_WAIT_SECONDS``; the event may still be applied later)."""
        wait = self.timeout_seconds if wait_seconds is None else wait_seconds
        try:
            value = await asyncio.wait_for(asyncio.shield(self.future), wait)
        except TimeoutError:
            raise OutcomeTimeout(
                f"no outcome for event {self.event_id or '(raw)'} within {wait:g} s; it is "
                f"on {self.sent.topic}[{self.sent.partition}] at offset {self.sent.offset} "
                "and may still be applied later (is the daemon running?)"
            ) from None
        return outcome_from_record(value)


class EventProducer:
    """``async with EventProducer(settings) as producer: await producer.upsert(uuid)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        producer_name: str | None = None,
        max_in_flight: int = 5000,
        reply_partition: int | None = None,
    ) -> None:
        self._settings = settings
        self.topic = topic or settings.topic
        self._producer_name = producer_name
        self._max_in_flight = max_in_flight
        self._max_bytes = settings.max_event_bytes
        self._kafka: AIOKafkaProducer | None = None
        #: Request-reply: the reply partition to read (None: one at random).
        self.reply_partition = reply_partition
        self._listener: ReplyListener | None = None
        self._listener_lock = asyncio.Lock()
        self._reader: ConsumerReader | None = None
        self._reader_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect; ``BrokerUnavailable`` within the request timeout if Kafka is not there."""
        kafka = AIOKafkaProducer(**producer_options(self._settings))
        await start_bounded(kafka, self._settings, "producer")
        self._kafka = kafka

    async def close(self) -> None:
        """Flush what was handed over and disconnect (bounded: a dead broker cannot hang it)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        kafka, self._kafka = self._kafka, None
        if kafka is None:
            return
        try:
            await asyncio.wait_for(kafka.stop(), 2 * self._settings.request_timeout_seconds)
        except (TimeoutError, KafkaError) as exc:
            log.warning("producer_close_unclean", error=type(exc).__name__)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- single events --------------------------------------------------------------

    async def upsert(
        self,
        consumer_uuid: str,
        *,
        expected_generation: Precondition = UNCONDITIONAL,
        project_id: str | None = None,
        user_id: str | None = None,
        consumer_type: str | None = None,
    ) -> SendResult:
        """Create or update a consumer. ``expected_generation``: leave it out for an
        unconditional change, ``None`` for "must be new", ``N`` for "must be at N"."""
        return await self.send(
            new_event(
                EventType.UPSERT,
                consumer_uuid,
                expected_generation=expected_generation,
                project_id=project_id,
                user_id=user_id,
                consumer_type=consumer_type,
                producer=self._producer_name,
                max_bytes=self._max_bytes,
            )
        )

    async def delete(
        self, consumer_uuid: str, *, expected_generation: Precondition = UNCONDITIONAL
    ) -> SendResult:
        """Delete a consumer (a tombstone that keeps its generation)."""
        return await self.send(
            new_event(
                EventType.DELETE,
                consumer_uuid,
                expected_generation=expected_generation,
                producer=self._producer_name,
                max_bytes=self._max_bytes,
            )
        )

    async def send(self, event: EventInput) -> SendResult:
        """Validate, send and wait for the acknowledgement."""
        return await (await self.submit(event))

    async def submit(self, event: EventInput) -> asyncio.Future[SendResult]:
        """Validate and hand the event to Kafka; the returned future resolves on the ack.

        Raises ``InvalidEvent`` (nothing sent) or ``ProduceError``. Awaiting this may wait
        for buffer space: that is the back-pressure that keeps memory bounded.
        """
        event_id, delivery = await self._hand_over(event)
        result: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        delivery.add_done_callback(lambda done: self._settle(done, result, event_id))
        return result

    # --- awaiting outcomes (request-reply, service.producer.replies) ----------------

    async def request(self, event: EventInput) -> PendingOutcome:
        """Validate and send ``event`` asking for its outcome; wait for the ack (not for
        the outcome: ``await (await producer.request(event)).outcome()``)."""
        return await self._request(lambda headers, span: self._hand_over(event, headers, span))

    async def request_raw(self, value: bytes, *, key: bytes | None = None) -> PendingOutcome:
        """Send ``value`` as it is (no validation: for testing the daemon's answer to a
        record it must refuse) asking for its outcome."""
        kafka = self._require_started()

        async def hand_over(
            headers: list[tuple[str, bytes]], span: SendSpan | None
        ) -> tuple[str, asyncio.Future[Any]]:
            try:
                delivery = await kafka.send(self.topic, value, key=key, headers=headers)
            except KafkaError as exc:
                raise self._produce_error(exc) from None
            if span is not None:
                span.settle_on(delivery)
            return "", delivery

        return await self._request(hand_over)

    async def send_and_wait(
        self, event: EventInput, *, wait_seconds: float | None = None
    ) -> EventOutcome:
        """Send ``event`` and return its outcome (``OutcomeTimeout`` after ``wait_seconds``)."""
        return await (await self.request(event)).outcome(wait_seconds)

    async def update(
        self,
        consumer_uuid: str,
        change: ChangeFunction,
        *,
        policy: RetryPolicy | None = None,
        wait_seconds: float | None = None,
    ) -> UpdateResult:
        """Read-modify-write ``consumer_uuid`` until ``change(state)`` is applied, or a
        final rejection, or the retry bounds (``service.producer.update``)."""
        async with self._reader_lock:
            if self._reader is None:
                self._reader = ConsumerReader(self._settings)
                await self._reader.start()
        loop = run_update(
            self,
            self._reader.get,
            consumer_uuid,
            change,
            policy or RetryPolicy(),
            wait_seconds=wait_seconds,
            producer=self._producer_name,
            max_bytes=self._max_bytes,
        )
        tracing = tracing_active()
        if tracing is None:
            return await loop
        from service.tracing.spans import update_span

        # One trace for the whole loop: every attempt's send is a child of this span.
        with update_span(tracing, consumer_uuid):
            return await loop

    async def replies(self) -> ReplyListener:
        """The reply listener, started on first use (its position is fixed before the
        first request is sent)."""
        async with self._listener_lock:
            if self._listener is None:
                listener = ReplyListener(self._settings, self.reply_partition)
                await listener.start()
                self._listener = listener
            return self._listener

    async def _request(
        self,
        hand_over: Callable[
            [list[tuple[str, bytes]], SendSpan | None],
            Awaitable[tuple[str, asyncio.Future[Any]]],
        ],
    ) -> PendingOutcome:
        listener = await self.replies()
        assert listener.partition is not None
        correlation = uuid.uuid4().bytes
        headers = _HEADERS + request_headers(listener.topic, listener.partition, correlation)
        span = self._send_span()
        if span is not None:
            headers = span.headers(headers)
        # Before the send: no reply can be missed.
        future = listener.expect(correlation, None if span is None else span.context)
        try:
            event_id, delivery = await hand_over(headers, span)
            item = await self._collect(0, event_id, delivery)
        except BaseException as exc:
            listener.forget(correlation)
            if span is not None:
                span.fail(exc)
            raise
        if item.result is None:
            listener.forget(correlation)
            assert item.error is not None
            raise item.error
        return PendingOutcome(
            event_id or None, item.result, future, self._settings.outcome_wait_seconds
        )

    # --- many events ----------------------------------------------------------------

    async def send_many(
        self, events: Iterable[EventInput] | AsyncIterable[EventInput]
    ) -> list[ItemResult]:
        """Send many events, pipelined (up to ``max_in_flight`` unacknowledged), and report
        each one: a bad item is reported and skipped, the others are still sent."""
        started = time.monotonic()
        results: list[ItemResult] = []
        pending: deque[tuple[int, str, asyncio.Future[Any]]] = deque()
        index = 0
        async for event in _aiter(events):
            try:
                event_id, delivery = await self._hand_over(event)
                pending.append((index, event_id, delivery))
            except (InvalidEvent, ProduceError) as exc:
                results.append(ItemResult(index, _event_id_or_none(event), error=exc))
            index += 1
            while len(pending) >= self._max_in_flight:
                results.append(await self._collect(*pending.popleft()))
        while pending:
            results.append(await self._collect(*pending.popleft()))
        results.sort(key=lambda item: item.index)
        failed = sum(1 for item in results if not item.ok)
        log.info(
            "bulk_send_finished",
            events=len(results),
            failed=failed,
            seconds=round(time.monotonic() - started, 3),
        )
        return results

    # --- internals ------------------------------------------------------------------

    def _require_started(self) -> AIOKafkaProducer:
        if self._kafka is None:
            raise RuntimeError("EventProducer is not started (use 'async with')")
        return self._kafka

    def _send_span(self) -> SendSpan | None:
        """A ``send`` span (a child of the current span, or a new root) when tracing."""
        tracing = tracing_active()
        if tracing is None:
            return None
        from service.tracing.spans import SendSpan

        return SendSpan(tracing, self.topic)

    async def _hand_over(
        self,
        event: EventInput,
        headers: list[tuple[str, bytes]] = _HEADERS,
        span: SendSpan | None = None,
    ) -> tuple[str, asyncio.Future[Any]]:
        """Validate and append to aiokafka's buffer: (event id, aiokafka's delivery future).

        Traced: the event's ``send`` span (``span``, or one made here) is in the headers
        and ends at the acknowledgement.
        """
        kafka = self._require_started()
        checked, value = self._prepare(event)
        if span is None and (span := self._send_span()) is not None:
            headers = span.headers(headers)
        if span is not None:
            span.describe(checked.event_id, checked.consumer_uuid)
        try:
            delivery = await kafka.send(
                self.topic, value, key=checked.consumer_uuid.encode(), headers=headers
            )
        except BaseException as exc:
            if span is not None:
                span.fail(exc)
            if isinstance(exc, KafkaError):
                raise self._produce_error(exc) from None
            raise
        if span is not None:
            span.settle_on(delivery)
        return checked.event_id, delivery

    async def _collect(
        self, index: int, event_id: str, delivery: asyncio.Future[Any]
    ) -> ItemResult:
        try:
            meta = await delivery
        except KafkaError as exc:
            return ItemResult(index, event_id, error=self._produce_error(exc))
        except asyncio.CancelledError:
            # Cancelling the caller cancels the future it awaits, the delivery itself: so
            # the task's own count says whose cancellation this is.
            task = asyncio.current_task()
            if not delivery.cancelled() or (task is not None and task.cancelling()):
                raise  # we are being cancelled, not the send
            return ItemResult(index, event_id, error=ProduceError("the send was cancelled"))
        return ItemResult(
            index, event_id, SendResult(event_id, meta.topic, meta.partition, meta.offset)
        )

    def _prepare(self, event: EventInput) -> tuple[ConsumerEvent, bytes]:
        """Round trip through ``decode_event``: exactly the daemon's rules, size included."""
        return wire_value(event, max_bytes=self._max_bytes)

    def _settle(
        self, done: asyncio.Future[Any], result: asyncio.Future[SendResult], event_id: str
    ) -> None:
        if result.done():
            return
        if done.cancelled():
            result.set_exception(ProduceError("the send was cancelled (producer closed)"))
        elif (exc := done.exception()) is not None:
            result.set_exception(self._produce_error(exc))
        else:
            meta = done.result()
            result.set_result(SendResult(event_id, meta.topic, meta.partition, meta.offset))

    def _produce_error(self, exc: BaseException) -> ProduceError:
        kind = type(exc).__name__
        text = " ".join(str(exc).split()) or kind
        return ProduceError(
            f"Kafka at {describe_servers(self._settings)} did not take the event for topic "
            f"{self.topic} ({kind}: {text}); within "
            f"{self._settings.request_timeout_seconds:g} s"
        )


async def _aiter(events: Iterable[EventInput] | AsyncIterable[EventInput]) -> Any:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event


def _event_id_or_none(event: EventInput) -> str | None:
    """The id as given, for reporting (raw bytes are not parsed a second time)."""
    if isinstance(event, ConsumerEvent):
        return event.event_id
    if isinstance(event, Mapping):
        value = event.get("event_id")
        return value if isinstance(value, str) else None
    return None


__all__ = [
    "BrokerUnavailable",
    "EventProducer",
    "ItemResult",
    "ProduceError",
    "SendResult",
]
