"""``KafkaProducerHandle`` over aiokafka's producer faked at its client API
(``service.testing.fake_aiokafka``, a real ``MessageAccumulator``): started once and
reused, dropped after a failure, the dead-letter topic's limit read once, and a stop or
an abandon that ends although the broker holds the pending batches."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

import service.sinks.kafka_producer as kafka_producer
from service.config import load_settings
from service.kafka.clients import BrokerUnavailable
from service.sinks.base import SinkUnavailable
from service.sinks.kafka_producer import KafkaProducerHandle, _fail_pending
from service.testing.fake_aiokafka import FakeAIOKafkaProducer, FakeCluster, producer_class
from tests.log_lines import logged as events

SETTINGS = load_settings(
    bootstrap_servers="localhost:1", dlq_topic="dlq", request_timeout_seconds=0.2
)
SLOW = load_settings(bootstrap_servers="localhost:1", dlq_topic="dlq", request_timeout_seconds=30)


class Admin:
    """The admin client: ``limits`` answers each read of the topic's limit in turn."""

    fail_start = False
    closed = 0
    #: What its close does: nothing, raise this, or (None) never end.
    close_fails: BaseException | bool | None = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def start(self) -> None:
        if Admin.fail_start:
            raise KafkaConnectionError("no admin")

    async def close(self) -> None:
        Admin.closed += 1
        if Admin.close_fails is None:
            await asyncio.Event().wait()
        if isinstance(Admin.close_fails, BaseException):
            raise Admin.close_fails


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    found = FakeCluster({"dlq": 1})
    monkeypatch.setattr(kafka_producer, "AIOKafkaProducer", producer_class(found))
    monkeypatch.setattr(kafka_producer, "AIOKafkaAdminClient", Admin)
    Admin.fail_start = False
    Admin.closed = 0
    Admin.close_fails = False
    return found


def limits(monkeypatch: pytest.MonkeyPatch, *answers: int | Exception | None) -> list[str]:
    """Make the limit read answer ``answers`` in turn; the topics asked for are returned."""
    asked: list[str] = []
    pending = list(answers)

    async def read(admin: Admin, topic: str, settings: Any) -> int | None:
        assert isinstance(admin, Admin) and settings.dlq_topic == topic
        asked.append(topic)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(kafka_producer, "topic_max_message_bytes", read)
    return asked


async def test_the_producer_is_started_once_with_the_service_options_and_reused(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, 5000)
    handle = KafkaProducerHandle(SETTINGS)
    first = await handle.ready()
    assert await handle.ready() is first
    assert len(cluster.producers) == 1 and first.started
    options = cluster.producers[0].options
    assert options["acks"] == "all" and options["enable_idempotence"] is True
    assert options["max_request_size"] == handle.max_request_size == 1_114_112


async def test_while_the_probe_finds_the_broker_away_nothing_is_started(
    cluster: FakeCluster,
) -> None:
    handle = KafkaProducerHandle(SETTINGS, lambda: False)
    with pytest.raises(SinkUnavailable) as raised:
        await handle.ready()
    assert str(raised.value) == "broker unreachable; not writing until it is back"
    assert raised.value.kind == "broker"
    assert cluster.producers == []


async def test_a_producer_that_cannot_start_is_sink_unavailable_and_closed(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None)
    cluster.up = False
    handle = KafkaProducerHandle(SETTINGS)
    with pytest.raises(SinkUnavailable, match="cannot connect the dead-letter producer") as raised:
        await handle.ready()
    assert raised.value.kind == "broker"
    assert cluster.producers[0].stopped  # the half-started one closed
    cluster.up = True
    assert (await handle.ready()).started


async def test_the_dead_letter_limit_is_read_once_and_logged(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked = limits(monkeypatch, 5000)
    handle = KafkaProducerHandle(SETTINGS)
    await handle.start()
    assert handle.dlq_topic_limit == 5000 and asked == ["dlq"]
    await handle.stop()
    await handle.start()
    assert asked == ["dlq"]  # not read again
    assert Admin.closed == 1
    [info] = [e for e in events(caplog) if e["event"] == "dead-letter size limit"]
    assert info["max_message_bytes"] == 5000 and info["topic"] == "dlq"
    assert info["max_request_size"] == 1_114_112
    await handle.stop()


async def test_an_unknown_limit_is_read_again_at_the_next_start(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked = limits(monkeypatch, None, BrokerUnavailable("no answer"), 7000)
    handle = KafkaProducerHandle(SETTINGS)
    for expected in (None, None, 7000):
        await handle.start()
        assert handle.dlq_topic_limit == expected
        await handle.stop()
    assert asked == ["dlq"] * 3 and Admin.closed == 3
    warned = [e["event"] for e in events(caplog) if e["level"] == "warning"]
    assert warned == [
        "the dead-letter topic's max.message.bytes is unknown; assuming the default",
        "cannot read the dead-letter topic's max.message.bytes; assuming the default",
    ]


async def test_an_admin_client_that_cannot_start_leaves_the_default(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked = limits(monkeypatch, 5000)
    Admin.fail_start = True
    handle = KafkaProducerHandle(SETTINGS)
    await handle.start()
    assert handle.dlq_topic_limit is None and asked == []
    [warning] = [e for e in events(caplog) if e["level"] == "warning"]
    assert warning["topic"] == "dlq" and "admin client" in warning["error"]
    assert warning["default"] == 1_048_588
    await handle.stop()


async def pending_send(producer: Any) -> asyncio.Future[Any]:
    return await producer.send("dlq", b"v", key=b"k")  # type: ignore[no-any-return]


async def test_a_stop_the_broker_cannot_flush_fails_the_pending_writes_at_the_bound(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None, None)
    handle = KafkaProducerHandle(SETTINGS)
    cluster.hold = True
    sent = await pending_send(await handle.ready())
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(handle.stop(), 5)
    assert loop.time() - began >= 0.2 * 0.9  # it waited for the flush up to the bound
    assert isinstance(sent.exception(), KafkaConnectionError)
    assert cluster.written("dlq") == []
    assert (await handle.ready()) is not cluster.producers[0]  # a fresh one next time


async def test_a_stop_whose_caller_is_cancelled_still_ends(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None)
    cluster.hold = True
    handle = KafkaProducerHandle(SETTINGS)
    sent = await pending_send(await handle.ready())
    stopping = asyncio.ensure_future(handle.stop())
    await asyncio.sleep(0.01)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait_for(asyncio.wait([sent]), 5)
    assert isinstance(sent.exception(), KafkaConnectionError)
    assert cluster.producers[0].stopped


async def test_a_stop_that_flushes_is_not_failed_afterwards(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None)
    handle = KafkaProducerHandle(SETTINGS)
    cluster.hold = True
    sent = await pending_send(await handle.ready())
    stopping = asyncio.ensure_future(handle.stop())
    await asyncio.sleep(0)
    cluster.hold = False
    cluster.deliver()
    await asyncio.wait_for(stopping, 5)
    assert (await sent).offset == 0
    assert [w.value for w in cluster.written("dlq")] == [b"v"]


async def test_abandon_fails_the_pending_writes_at_once(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 30 s request timeout, a stop would wait 30 s; an abandon does not wait."""
    limits(monkeypatch, None)
    cluster.hold = True
    handle = KafkaProducerHandle(SLOW)
    sent = await pending_send(await handle.ready())
    await asyncio.wait_for(handle.abandon(), 5)
    error = sent.exception()
    assert isinstance(error, KafkaConnectionError) and "abandoned" in str(error)
    await asyncio.wait_for(handle.abandon(), 5)  # nothing left: nothing to do


async def test_stop_quietly_swallows_a_failing_stop(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None, None)
    handle = KafkaProducerHandle(SETTINGS)
    producer = await handle.ready()

    async def broken() -> None:
        raise KafkaError("stop failed")

    monkeypatch.setattr(producer, "stop", broken)
    await handle.stop_quietly()
    assert await handle.ready() is not producer


async def test_failing_a_retried_batch_raises_nothing_in_callbacks() -> None:
    """aiokafka 0.14: a batch sent, failed and queued again keeps its first send's
    done-callback, which removes it from the in-flight set (``_pop_batch``)."""
    cluster = FakeCluster({"dlq": 1}, hold=True)
    producer = FakeAIOKafkaProducer(cluster)
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        retried = await producer.send("dlq", b"retried", key=b"k")
        accumulator = producer._message_accumulator
        batch = accumulator._pop_batch(TopicPartition("dlq", 0))
        accumulator.reenqueue(batch)  # as the sender does with a retriable error
        queued = await producer.send("dlq", b"queued", key=b"k", partition=0)
        del queued, retried
        _fail_pending(producer)
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    assert accumulator._pending_batches == set()
    await asyncio.wait_for(producer.stop(), 5)


@pytest.mark.parametrize(
    "close", [KafkaError("close"), OSError("close"), TimeoutError(), None], ids=repr
)
async def test_an_admin_client_that_cannot_close_does_not_fail_the_start(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, close: BaseException | None
) -> None:
    """A close that fails or never ends (bounded by the request timeout) loses nothing:
    the limit was read."""
    limits(monkeypatch, 5000)
    Admin.close_fails = close
    handle = KafkaProducerHandle(SETTINGS)
    await asyncio.wait_for(handle.start(), 5)
    assert handle.dlq_topic_limit == 5000


async def test_a_stop_that_never_ends_is_given_up_at_twice_the_bound(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, None)
    handle = KafkaProducerHandle(SETTINGS)
    producer = await handle.ready()

    async def hangs() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(producer, "stop", hangs)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle.stop(), 5)
    assert loop.time() - began < 4  # its own bound (0.4 s) ended it, not this test's


async def test_the_limit_warnings_name_the_topic_the_default_and_the_error(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits(monkeypatch, None, BrokerUnavailable("no answer from the admin client"))
    handle = KafkaProducerHandle(SETTINGS)
    for _ in range(2):
        await handle.start()
        await handle.stop()
    unknown, unread = [e for e in events(caplog) if e["level"] == "warning"]
    assert (unknown["topic"], unknown["default"]) == ("dlq", 1_048_588)
    assert (unread["topic"], unread["default"]) == ("dlq", 1_048_588)
    assert unread["error"] == "no answer from the admin client"


async def test_writes_nobody_awaits_any_more_leave_no_asyncio_error_when_abandoned(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage releases the writers before it abandons the producer: nobody looks at
    the failed futures any more (a message's, its batch's, the batch's drain waiter), and
    asyncio would log "exception was never retrieved" for each when it is collected."""
    limits(monkeypatch, None)
    cluster.hold = True
    handle = KafkaProducerHandle(SLOW)
    producer = await handle.ready()
    await pending_send(producer)  # its writer was released: the future is dropped
    await producer.send("dlq", b"w", key=b"other", partition=0)
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        await asyncio.wait_for(handle.abandon(), 5)
        del producer
        cluster.producers.clear()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_a_producer_that_stopped_is_not_held_until_the_stop_bound(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer that would fail its pending writes at the bound (30 s here) goes with
    the stop: the stopped producer, its buffers and its client are freed at once."""
    limits(monkeypatch, None)
    handle = KafkaProducerHandle(SLOW)
    producer = await handle.ready()
    freed = weakref.ref(producer)
    await asyncio.wait_for(handle.stop(), 5)
    del producer
    cluster.producers.clear()
    gc.collect()
    assert freed() is None
