"""The Kafka sinks sort their client's errors themselves (through ``service.failures``),
without a broker: a broker "not now" becomes ``SinkUnavailable(kind="broker")``, a bug
stays what it is, a dead letter refused even bare is given up (not raised)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from service.config import load_settings
from service.domain.outcomes import EventSource
from service.failures import infrastructure_kind, is_infrastructure
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.sinks.kafka import KafkaDeadLetterSink, KafkaOutcomeSink

SETTINGS = load_settings(bootstrap_servers="localhost:1", dlq_topic="dlq", outcomes_topic="out")
LETTER = DeadLetter(
    key=b"k",
    value=b"v",
    headers=[("error.class", b"invalid")],
    origin=EventSource("events", 0, 7),
    reason="not_json",
    invalid=True,
)


class FakeProducer:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        raise self.error

    async def partitions_for(self, topic: str) -> set[int]:
        raise self.error


class FakeHandle:
    def __init__(self, error: BaseException) -> None:
        self.producer = FakeProducer(error)
        self.dlq_topic_limit: int | None = None
        self.max_request_size = 1_048_576
        self.stopped = 0

    async def ready(self) -> FakeProducer:
        return self.producer

    async def stop_quietly(self) -> None:
        self.stopped += 1


async def test_a_broker_not_now_is_sink_unavailable_of_the_broker() -> None:
    handle = FakeHandle(KafkaConnectionError("gone"))
    for write in (
        KafkaDeadLetterSink(SETTINGS, handle).write_dead_letters([LETTER]),  # type: ignore[arg-type]
        KafkaOutcomeSink("out", handle).write_outcomes([OutcomeMessage(b"e", b"{}")]),  # type: ignore[arg-type]
    ):
        with pytest.raises(SinkUnavailable) as raised:
            await write
        assert raised.value.kind == "broker"
        assert infrastructure_kind(raised.value) == "broker"
        assert "KafkaConnectionError" in str(raised.value)
    assert handle.stopped >= 2  # the producer is dropped after a failed write


async def test_a_bug_is_not_turned_into_unavailability() -> None:
    handle = FakeHandle(RuntimeError("ours"))
    with pytest.raises(RuntimeError):
        await KafkaDeadLetterSink(SETTINGS, handle).write_dead_letters([LETTER])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError) as raised:
        await KafkaOutcomeSink("out", handle).write_outcomes([OutcomeMessage(None, b"{}")])  # type: ignore[arg-type]
    assert not is_infrastructure(raised.value)


async def test_a_letter_refused_even_bare_is_given_up_not_raised() -> None:
    handle = FakeHandle(MessageSizeTooLargeError("too large"))
    await KafkaDeadLetterSink(SETTINGS, handle).write_dead_letters([LETTER])  # type: ignore[arg-type]


class _Builder:
    def append(self, **_: Any) -> object:
        return object()  # room for every record


class StallingProducer:
    """``send_batch`` hands back a future for the first partition, then waits (its
    partition's previous batch has not drained): the write is cancelled there."""

    def __init__(self) -> None:
        self.returned: list[asyncio.Future[object]] = []
        self.waiting = asyncio.Event()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> _Builder:
        return _Builder()

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> Any:
        if self.returned:
            self.waiting.set()
            await asyncio.Event().wait()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.returned.append(future)
        return future


async def test_a_write_cancelled_midway_leaves_no_unretrieved_future() -> None:
    """Parked at an outage, a worker's write is cancelled while a later batch waits to be
    handed over; the batch already handed over fails when the producer is abandoned.
    Nobody awaits it any more: that must not be an asyncio ERROR ("exception was never
    retrieved"), which the broker-outage test counts as a failure."""
    import gc

    from service.kafka.partitioning import partition_for

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        producer = StallingProducer()
        handle = FakeHandle(RuntimeError("unused"))
        handle.producer = producer  # type: ignore[assignment]
        keys = [str(n).encode() for n in range(40)]
        first = next(k for k in keys if partition_for(k, [0, 1]) == 0)
        second = next(k for k in keys if partition_for(k, [0, 1]) == 1)
        messages = [OutcomeMessage(first, b"{}"), OutcomeMessage(second, b"{}")]
        write = asyncio.ensure_future(KafkaOutcomeSink("out", handle).write_outcomes(messages))  # type: ignore[arg-type]
        await asyncio.wait_for(producer.waiting.wait(), 5)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        (handed_over,) = producer.returned
        handed_over.set_exception(KafkaConnectionError("the broker is gone"))
        # nothing holds the write or its batch's future any more
        del handed_over, write
        producer.returned.clear()
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []
