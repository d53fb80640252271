"""Edges of the Kafka sinks and their producer handle over aiokafka's producer faked at
its client API (``service.testing.fake_aiokafka``, no broker) that the ``sinks``
mutation run found unheld: a record no batch can take, replies all kept, a write the
producer's abandon fails or whose writer was cancelled first, the admin client named
when it cannot start, and the outer bound of a stop that never ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

import service.sinks.kafka_producer as kafka_producer
from service.config import load_settings
from service.contract.replies import ReplyRoute
from service.domain.outcomes import EventSource
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.sinks.kafka import KafkaDeadLetterSink, KafkaOutcomeSink
from service.sinks.kafka_producer import KafkaProducerHandle
from service.testing.fake_aiokafka import FakeAIOKafkaProducer, FakeCluster, producer_class
from tests.log_lines import logged

SETTINGS = load_settings(
    bootstrap_servers="localhost:1",
    dlq_topic="dlq",
    outcomes_topic="out",
    request_timeout_seconds=0.2,
)
#: A stop's bound that an abandon must not wait for.
SLOW = load_settings(bootstrap_servers="localhost:1", dlq_topic="dlq", request_timeout_seconds=30)


class Admin:
    """The admin client the handle reads the dead-letter topic's limit with."""

    fail_start = False
    #: What its close does: nothing, raise this, or (None) never end.
    close_fails: BaseException | bool | None = False
    closing = False

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        if Admin.fail_start:
            raise KafkaConnectionError("no admin")

    async def close(self) -> None:
        Admin.closing = True
        if Admin.close_fails is None:
            await asyncio.Event().wait()
        if isinstance(Admin.close_fails, BaseException):
            raise Admin.close_fails


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    found = FakeCluster({"dlq": 1, "out": 4, "replies": 3})
    monkeypatch.setattr(kafka_producer, "AIOKafkaProducer", producer_class(found))

    async def no_limit(*_: Any) -> None:
        return None

    monkeypatch.setattr(kafka_producer, "topic_max_message_bytes", no_limit)
    monkeypatch.setattr(kafka_producer, "AIOKafkaAdminClient", Admin)
    Admin.fail_start = False
    Admin.close_fails = False
    Admin.closing = False
    return found


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.001)


def buffered(cluster: FakeCluster) -> bool:
    """Some producer holds a batch (``cluster.hold``: none is acknowledged)."""
    return any(p._message_accumulator._batches for p in cluster.producers)


# --- a record no batch can take ------------------------------------------------------


class CappedBuilder(BatchBuilder):  # type: ignore[misc]  # aiokafka is untyped
    """A batch that refuses a record over its size even while empty.

    aiokafka 0.14's ``BatchBuilder`` takes any record into an empty batch (the broker
    or ``max_request_size`` refuses it later), so the sinks' guard for a record no batch
    can take cannot fire with it; a builder that refuses must make the write stop
    loudly, as a bug, naming what did not fit."""

    def __init__(self, cap: int) -> None:
        super().__init__(cap, 0)  # uncompressed
        self.cap = cap

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Any:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers or ()))
        if size > self.cap:
            return None
        return super().append(timestamp=timestamp, key=key, value=value, headers=headers)


class CappedProducer(FakeAIOKafkaProducer):
    def create_batch(self) -> BatchBuilder:
        return CappedBuilder(self.cluster.batch_size)


@pytest.fixture
def capped(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    cluster.batch_size = 256
    monkeypatch.setattr(
        kafka_producer, "AIOKafkaProducer", lambda **o: CappedProducer(cluster, **o)
    )
    return cluster


async def test_an_outcome_record_no_batch_can_take_stops_the_write_naming_it(
    capped: FakeCluster,
) -> None:
    messages = [OutcomeMessage(b"e", b"small"), OutcomeMessage(b"e", b"x" * 1000)]
    with pytest.raises(ValueError) as raised:
        await KafkaOutcomeSink("out", KafkaProducerHandle(SETTINGS)).write_outcomes(messages)
    assert str(raised.value) == "an outcome record larger than a whole batch"
    assert capped.producers[0].stopped  # dropped, as after any failed write


async def test_a_reply_no_batch_can_take_stops_the_write_naming_it(capped: FakeCluster) -> None:
    messages = [
        OutcomeMessage(b"e1", b"small", ReplyRoute("replies", 1, b"c1")),
        OutcomeMessage(b"e2", b"x" * 1000, ReplyRoute("replies", 1, b"c2")),
    ]
    with pytest.raises(ValueError) as raised:
        await KafkaOutcomeSink(None, KafkaProducerHandle(SETTINGS)).write_outcomes(messages)
    assert str(raised.value) == "a reply record larger than a whole batch"


# --- replies -------------------------------------------------------------------------


async def test_replies_all_to_partitions_the_topic_has_log_no_drop(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [
        OutcomeMessage(b"e%d" % n, b"%d" % n, ReplyRoute("replies", n, b"c%d" % n))
        for n in range(3)  # replies has partitions 0..2: the last one included
    ]
    await KafkaOutcomeSink("out", KafkaProducerHandle(SETTINGS)).write_outcomes(messages)
    assert len(cluster.written("replies")) == 3
    assert [e for e in logged(caplog) if e["event"].startswith("replies dropped")] == []


# --- a pending write failed by the producer's abandon ---------------------------------


async def test_an_outcome_write_abandoned_at_an_outage_says_the_broker_is_gone(
    cluster: FakeCluster,
) -> None:
    cluster.hold = True
    handle = KafkaProducerHandle(SLOW)
    writing = asyncio.ensure_future(
        KafkaOutcomeSink("out", handle).write_outcomes([OutcomeMessage(b"e", b"v")])
    )
    await until(lambda: buffered(cluster))
    await asyncio.wait_for(handle.abandon(), 5)
    with pytest.raises(SinkUnavailable) as raised:
        await asyncio.wait_for(writing, 5)
    assert raised.value.kind == "broker"
    assert str(raised.value).startswith("outcome records not written: KafkaConnectionError: ")
    assert str(raised.value).endswith(": the broker is gone: pending writes abandoned")
    assert isinstance(raised.value.__cause__, KafkaConnectionError)
    assert cluster.written("out") == []


async def test_an_abandon_after_the_dead_letter_writer_was_cancelled_ends_cleanly(
    cluster: FakeCluster,
) -> None:
    """A worker released (its partition revoked) cancels its write: the letters' futures
    are cancelled with it while their batch stays in the producer; the outage's abandon
    then fails that batch and must neither raise nor leave an asyncio error behind."""
    cluster.hold = True
    handle = KafkaProducerHandle(SLOW)
    letter = DeadLetter(
        key=b"k",
        value=b"v",
        headers=[("error.reason", b"not_json")],
        origin=EventSource("events", 0, 7),
        reason="not_json",
        invalid=True,
    )
    writing = asyncio.ensure_future(KafkaDeadLetterSink(SLOW, handle).write_dead_letters([letter]))
    await until(lambda: buffered(cluster))
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    [batch] = [b for q in cluster.producers[0]._message_accumulator._batches.values() for b in q]
    assert [f.cancelled() for f, _ in batch._msg_futures] == [True]
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        await asyncio.wait_for(handle.abandon(), 5)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    assert isinstance(batch.future.exception(), KafkaConnectionError)
    assert cluster.producers[0].stopped
    assert cluster.written("dlq") == []


# --- the dead-letter limit when the admin client cannot start -------------------------


async def test_an_admin_client_that_cannot_start_is_named_in_the_warning(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    Admin.fail_start = True
    handle = KafkaProducerHandle(SETTINGS)
    await handle.start()
    assert handle.dlq_topic_limit is None
    [warning] = [e for e in logged(caplog) if e["level"] == "warning"]
    assert warning["error"] == (
        "cannot connect the admin client to Kafka at localhost:1: KafkaConnectionError: no admin"
    )
    await handle.stop()


async def test_a_start_cancelled_while_the_admin_client_closes_stays_cancelled(
    cluster: FakeCluster,
) -> None:
    """Only the admin client's own failures to close are let go: a cancellation (the
    daemon shutting down) that arrives meanwhile goes on as a cancellation."""
    Admin.close_fails = None
    starting = asyncio.ensure_future(KafkaProducerHandle(SLOW).start())
    await until(lambda: Admin.closing)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(starting, 5)


async def test_an_admin_client_whose_close_fails_for_a_bug_fails_the_start_with_it(
    cluster: FakeCluster,
) -> None:
    Admin.close_fails = RuntimeError("ours")
    with pytest.raises(RuntimeError) as raised:
        await asyncio.wait_for(KafkaProducerHandle(SETTINGS).start(), 5)
    assert str(raised.value) == "ours"


# --- a stop that never ends ----------------------------------------------------------


async def test_a_stop_that_never_ends_is_given_up_at_twice_the_request_timeout_not_later(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending writes are failed at the request timeout; a stop that hangs even
    then is given up at twice it (2 s here), well before three times it (3 s).  The
    margin is half a second above (a loop's timer fires late under load, so the bound
    sits halfway to the mutant's) and 5% below (it does not fire early)."""
    settings = load_settings(
        bootstrap_servers="localhost:1", dlq_topic="dlq", request_timeout_seconds=1.0
    )
    handle = KafkaProducerHandle(settings)
    producer = await handle.ready()

    async def hangs() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(producer, "stop", hangs)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle.stop(), 10)
    took = loop.time() - began
    assert 2 * 1.0 * 0.95 <= took < 2.5 * 1.0, took
