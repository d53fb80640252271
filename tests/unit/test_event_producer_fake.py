"""``EventProducer`` and its ``ReplyListener`` over aiokafka's producer and consumer faked
at their client API (``service.testing.fake_aiokafka``, no broker): validation before
anything is sent, keys, headers and results, bulk sends in order with back-pressure,
which failures become ``ProduceError``, and request-reply matched by correlation id."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

import service.producer.client as client
import service.producer.replies as replies
from service.config import ConfigError, load_settings
from service.contract.decode import InvalidEvent, decode_event
from service.contract.records import CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE, outcome_record
from service.contract.replies import CORRELATION_HEADER, reply_route
from service.domain.events import EventType
from service.domain.outcomes import OutcomeKind
from service.kafka.clients import BrokerUnavailable
from service.producer.client import EventProducer, ProduceError
from service.producer.events import encode, new_event
from service.producer.replies import OutcomeTimeout, ReplyListener, choose_reply_partition
from service.producer.update import RetryPolicy
from service.testing.fake_aiokafka import FakeCluster, consumer_class, producer_class

SETTINGS = load_settings(
    bootstrap_servers="localhost:1",
    topic="events",
    reply_topic="events.replies",
    request_timeout_seconds=0.2,
    outcome_wait_seconds=5,
    max_event_bytes=2048,
)
CONSUMER = "00000000-0000-4000-8000-0000000000c1"
OTHER = "00000000-0000-4000-8000-0000000000c2"


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    found = FakeCluster({"events": 3, "events.replies": 4})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(found))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(found))
    return found


@pytest.fixture
async def producer(cluster: FakeCluster) -> AsyncIterator[EventProducer]:
    async with EventProducer(SETTINGS, producer_name="tests", reply_partition=2) as found:
        yield found


def event_doc(consumer: str = CONSUMER, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(encode(new_event(EventType.UPSERT, consumer)))
    return {**doc, **extra}


def answer(cluster: FakeCluster, kind: OutcomeKind = OutcomeKind.APPLIED) -> int:
    """The daemon's part: an outcome to every request on the events topic not answered
    yet, on the partition it named, with its correlation id.  How many were answered."""
    answered = 0
    for record in cluster.written("events"):
        route = reply_route(record.headers, "events.replies")
        if route is None or getattr(record, "_answered", False):
            continue
        event_id = orjson.loads(record.value or b"{}").get("event_id")
        value = outcome_record(
            event_id=event_id,
            consumer_uuid=CONSUMER,
            outcome=kind,
            reason=None,
            generation_after=1,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        )
        cluster.append(
            route.topic, route.partition, b"k", value, [(CORRELATION_HEADER, route.correlation)]
        )
        object.__setattr__(record, "_answered", True)
        answered += 1
    return answered


# --- sending ---------------------------------------------------------------------------


async def test_an_event_is_validated_keyed_by_its_consumer_and_marked_as_an_event(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    sent = await producer.upsert(CONSUMER, expected_generation=3, project_id="p")
    [record] = cluster.written("events")
    assert (sent.topic, sent.partition, sent.offset) == ("events", record.partition, 0)
    assert record.key == CONSUMER.encode()
    assert record.headers == [(CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE.encode())]
    event = decode_event(record.value or b"", max_bytes=2048)
    assert event.event_id == sent.event_id and event.type is EventType.UPSERT
    assert (event.expected_generation, event.project_id, event.producer) == (3, "p", "tests")
    deleted = await producer.delete(OTHER, expected_generation=None)
    [record] = [w for w in cluster.written("events") if w.key == OTHER.encode()]
    event = decode_event(record.value or b"", max_bytes=2048)
    assert deleted.event_id == event.event_id and event.type is EventType.DELETE
    assert event.expected_generation is None and event.producer == "tests"
    options = cluster.producers[0].options
    assert options["acks"] == "all" and options["enable_idempotence"] is True


async def test_an_invalid_event_is_refused_before_anything_is_sent(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    for bad in (event_doc(type="nope"), b"not json", event_doc(project_id="x" * 3000)):
        with pytest.raises(InvalidEvent):
            await producer.send(bad)
    with pytest.raises(InvalidEvent):
        await producer.upsert("not-a-uuid")
    assert cluster.written("events") == [] and cluster.batches == []


async def test_a_producer_not_started_says_so(cluster: FakeCluster) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await EventProducer(SETTINGS).send(event_doc())
    with pytest.raises(RuntimeError, match="not started"):
        await EventProducer(SETTINGS).request_raw(b"x")


async def test_a_broker_that_cannot_take_the_event_is_produce_error_naming_it(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.refuse = lambda _: KafkaConnectionError("reset  by\npeer")
    with pytest.raises(ProduceError) as raised:
        await producer.send(event_doc())
    text = str(raised.value)
    assert "Kafka at localhost:1 did not take the event for topic events" in text
    assert "(KafkaConnectionError: KafkaConnectionError: reset by peer); within 0.2 s" in text
    cluster.up = False  # now the send itself fails (no metadata)
    with pytest.raises(ProduceError, match="KafkaConnectionError"):
        await producer.send(event_doc())


async def test_an_error_without_text_is_named_by_its_class(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.refuse = lambda _: KafkaTimeoutError()
    with pytest.raises(ProduceError, match=r"\(KafkaTimeoutError: KafkaTimeoutError\)"):
        await producer.send(event_doc())


async def test_submit_resolves_only_on_the_acknowledgement(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.hold = True
    doc = event_doc()
    acked = await producer.submit(doc)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not acked.done()
    cluster.hold = False
    cluster.deliver()
    result = await asyncio.wait_for(acked, 5)
    assert result.event_id == doc["event_id"] and result.topic == "events"


async def test_a_send_cancelled_by_a_closing_producer_is_produce_error(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.hold = True
    acked = await producer.submit(event_doc())
    accumulator = cluster.producers[0]._message_accumulator
    [batch] = [b for batches in accumulator._batches.values() for b in batches]
    [(future, _)] = batch._msg_futures
    future.cancel()
    with pytest.raises(ProduceError, match="cancelled"):
        await asyncio.wait_for(acked, 5)


# --- many events -------------------------------------------------------------------


async def test_send_many_reports_every_item_in_order_and_skips_only_the_bad(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    docs: list[Any] = [event_doc(), event_doc(type="bad"), event_doc(OTHER), b"{", event_doc()]
    docs[1]["event_id"] = "kept-for-the-report"
    results = await producer.send_many(docs)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert [r.event_id for r in results] == [
        docs[0]["event_id"],
        "kept-for-the-report",
        docs[2]["event_id"],
        None,
        docs[4]["event_id"],
    ]
    assert isinstance(results[1].error, InvalidEvent) and results[1].result is None
    sent = sorted((r.result.partition, r.result.offset, r.event_id) for r in results if r.result)
    written = sorted(
        (w.partition, w.offset, orjson.loads(w.value or b"")["event_id"])
        for w in cluster.written("events")
    )
    assert sent == written


async def test_send_many_reads_an_async_source_and_reports_failed_deliveries(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    doomed = event_doc(OTHER)
    cluster.refuse = lambda w: KafkaConnectionError("no") if w.key == OTHER.encode() else None

    async def source() -> AsyncIterator[Any]:
        for doc in (event_doc(), doomed, event_doc()):
            yield doc

    results = await producer.send_many(source())
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, ProduceError) and results[1].event_id == doomed["event_id"]


async def test_send_many_holds_at_most_max_in_flight_unacknowledged(
    cluster: FakeCluster,
) -> None:
    cluster.hold = True
    async with EventProducer(SETTINGS, max_in_flight=2) as producer:
        bulk = asyncio.ensure_future(
            producer.send_many(
                [event_doc(f"00000000-0000-4000-8000-00000000000{n}") for n in range(6)]
            )
        )
        accumulator = cluster.producers[0]._message_accumulator
        for _ in range(50):
            await asyncio.sleep(0)
        held = sum(b.record_count for bs in accumulator._batches.values() for b in bs)
        assert held == 2 and not bulk.done()
        cluster.hold = False
        while not bulk.done():
            cluster.deliver()
            await asyncio.sleep(0.001)
        assert [r.ok for r in bulk.result()] == [True] * 6


async def test_close_gives_up_on_a_flush_that_cannot_happen(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    producer = EventProducer(SETTINGS)
    await producer.start()
    cluster.hold = True
    await producer.submit(event_doc())
    await asyncio.wait_for(producer.close(), 5)
    assert "producer_close_unclean" in caplog.text and "TimeoutError" in caplog.text
    await producer.close()  # closed already: nothing to do


# --- request-reply -------------------------------------------------------------------


async def test_a_request_names_the_listener_s_partition_and_gets_its_outcome(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    doc = event_doc()
    pending = await producer.request(doc)
    [record] = cluster.written("events")
    route = reply_route(record.headers, "events.replies")
    assert route is not None and (route.topic, route.partition) == ("events.replies", 2)
    assert record.headers[0] == (CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE.encode())
    assert pending.event_id == doc["event_id"] and pending.sent.offset == record.offset
    assert answer(cluster) == 1
    outcome = await pending.outcome(5)
    assert outcome.kind is OutcomeKind.APPLIED and outcome.event_id == doc["event_id"]
    assert outcome.source.offset == record.offset
    listener = await producer.replies()
    assert (listener.counts.records_read, listener.counts.matched, listener.counts.foreign) == (
        1,
        1,
        0,
    )
    assert len(cluster.consumers) == 1  # one listener for every request


async def test_replies_are_matched_by_correlation_not_by_arrival(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    first, second = event_doc(), event_doc(OTHER)
    a = await producer.request(first)
    b = await producer.request(second)
    listener = await producer.replies()
    # a foreign reply on the partition, then the answers in reverse order
    cluster.append("events.replies", 2, b"k", b"{}", [(CORRELATION_HEADER, b"someone else")])
    cluster.append("events.replies", 2, b"k", b"{}", [])
    records = cluster.written("events")
    for record in reversed(records):
        route = reply_route(record.headers, "events.replies")
        assert route is not None
        value = outcome_record(
            event_id=orjson.loads(record.value or b"")["event_id"],
            consumer_uuid=CONSUMER,
            outcome=OutcomeKind.APPLIED,
            reason=None,
            generation_after=record.offset + 1,
            source_topic="events",
            source_partition=record.partition,
            source_offset=record.offset,
        )
        cluster.append("events.replies", 2, None, value, [(CORRELATION_HEADER, route.correlation)])
    assert (await b.outcome(5)).event_id == second["event_id"]
    assert (await a.outcome(5)).event_id == first["event_id"]
    assert (listener.counts.foreign, listener.counts.matched) == (2, 2)


async def test_an_outcome_that_does_not_come_is_a_timeout_and_can_be_awaited_again(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    doc = event_doc()
    pending = await producer.request(doc)
    with pytest.raises(OutcomeTimeout) as raised:
        await pending.outcome(0.05)
    text = str(raised.value)
    assert f"no outcome for event {doc['event_id']} within 0.05 s" in text
    assert f"on events[{pending.sent.partition}] at offset {pending.sent.offset}" in text
    answer(cluster)
    assert (await pending.outcome()).kind is OutcomeKind.APPLIED  # the default wait


async def test_a_reply_that_arrived_before_anyone_awaited_is_kept(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    pending = await producer.request(event_doc())
    answer(cluster)
    listener = await producer.replies()
    for _ in range(100):
        if listener.counts.matched:
            break
        await asyncio.sleep(0.01)
    assert pending.future.done()
    assert (await pending.outcome(0.01)).kind is OutcomeKind.APPLIED


async def test_a_request_kafka_refused_is_forgotten(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.refuse = lambda _: KafkaConnectionError("no")
    with pytest.raises(ProduceError):
        await producer.request(event_doc())
    with pytest.raises(InvalidEvent):
        await producer.request(event_doc(type="bad"))
    [refused] = cluster.batches
    route = reply_route(refused[2][0].headers, "events.replies")
    assert route is not None
    listener = await producer.replies()
    cluster.append("events.replies", 2, None, b"{}", [(CORRELATION_HEADER, route.correlation)])
    for _ in range(100):
        if listener.counts.records_read:
            break
        await asyncio.sleep(0.01)
    assert (listener.counts.foreign, listener.counts.matched) == (1, 0)


async def test_a_raw_request_is_sent_as_it_is(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    pending = await producer.request_raw(b"not an event", key=b"raw-key")
    [record] = cluster.written("events")
    assert (record.key, record.value) == (b"raw-key", b"not an event")
    assert reply_route(record.headers, "events.replies") is not None
    assert pending.event_id is None
    with pytest.raises(OutcomeTimeout, match=r"no outcome for event \(raw\)"):
        await pending.outcome(0.01)
    cluster.up = False
    with pytest.raises(ProduceError):
        await producer.request_raw(b"again")


async def test_send_and_wait_returns_the_outcome(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    loop = asyncio.get_running_loop()

    def daemon(_: object) -> None:  # answers once the request is on the events topic
        loop.call_soon(answer, cluster)

    cluster.refuse = lambda w: daemon(w)
    outcome = await producer.send_and_wait(event_doc(), wait_seconds=5)
    cluster.refuse = lambda _: None
    assert outcome.ok
    with pytest.raises(OutcomeTimeout):
        await producer.send_and_wait(event_doc(), wait_seconds=0.01)


async def test_closing_ends_every_wait_with_a_timeout(cluster: FakeCluster) -> None:
    producer = EventProducer(SETTINGS)
    await producer.start()
    pending = await producer.request(event_doc())
    await producer.close()
    with pytest.raises(OutcomeTimeout, match="closed before the outcome"):
        await pending.outcome(1)
    assert all(c.stopped for c in cluster.consumers)


# --- the listener ----------------------------------------------------------------------


async def test_the_listener_starts_at_the_end_of_a_partition_of_the_reply_topic(
    cluster: FakeCluster,
) -> None:
    cluster.append("events.replies", 1, None, b"old", [(CORRELATION_HEADER, b"c")])
    listener = ReplyListener(SETTINGS, 1)
    with pytest.raises(RuntimeError, match="not started"):
        listener.expect(b"c")
    await listener.start()
    future = listener.expect(b"c")
    await asyncio.sleep(0.05)
    assert listener.counts.records_read == 0 and not future.done()  # the old reply unseen
    cluster.append("events.replies", 1, None, None, [(CORRELATION_HEADER, b"c")])
    cluster.append("events.replies", 1, None, b"new", [(CORRELATION_HEADER, b"d")])
    for _ in range(100):
        if listener.counts.records_read == 2:
            break
        await asyncio.sleep(0.01)
    assert not future.done()  # a reply without a value settles nothing
    assert (listener.counts.matched, listener.counts.foreign) == (1, 1)
    await listener.close()
    assert cluster.consumers[0].stopped


async def test_the_listener_picks_a_partition_the_topic_has(cluster: FakeCluster) -> None:
    chosen = set()
    for _ in range(40):
        listener = ReplyListener(SETTINGS)
        await listener.start()
        chosen.add(listener.partition)
        await listener.close()
    assert chosen <= {0, 1, 2, 3} and len(chosen) > 1
    with pytest.raises(ConfigError, match="has partitions 0 to 3"):
        await ReplyListener(SETTINGS, 4).start()
    assert cluster.consumers[-1].stopped  # closed after the refusal
    cluster.topics.pop("events.replies")
    with pytest.raises(ConfigError, match=r"no such topic: events\.replies"):
        await ReplyListener(SETTINGS).start()


def test_choose_reply_partition_bounds() -> None:
    assert choose_reply_partition(0, "r", 1) == 0
    assert choose_reply_partition(3, "r", 4) == 3
    for bad in (-1, 4):
        with pytest.raises(ConfigError):
            choose_reply_partition(bad, "r", 4)
    assert {choose_reply_partition(None, "r", 2) for _ in range(64)} == {0, 1}


async def test_a_listener_without_a_broker_is_broker_unavailable(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.up = False
    with pytest.raises(BrokerUnavailable, match="reply consumer"):
        await ReplyListener(SETTINGS, 0).start()
    cluster.up = True

    async def gone(self: Any) -> Any:
        raise KafkaConnectionError("metadata")

    monkeypatch.setattr(type(cluster.consumers[0]._client), "fetch_all_metadata", gone)
    with pytest.raises(BrokerUnavailable, match="reply consumer: KafkaConnectionError"):
        await ReplyListener(SETTINGS, 0).start()
    assert cluster.consumers[-1].stopped


# --- what the fresh mutation run showed unheld -----------------------------------------


async def test_update_runs_the_loop_with_one_reader_and_this_producer_s_settings(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: list[Any] = []
    calls: list[tuple[Any, ...]] = []

    class Reader:
        def __init__(self, settings: Any) -> None:
            assert settings is SETTINGS
            self.started = self.closed = 0
            readers.append(self)

        async def start(self) -> None:
            self.started += 1

        async def close(self) -> None:
            self.closed += 1

        async def get(self, uuid: str) -> None:
            return None

    done = object()

    async def loop(*args: Any, **kwargs: Any) -> Any:
        calls.append((*args, kwargs))
        return done

    monkeypatch.setattr(client, "ConsumerReader", Reader)
    monkeypatch.setattr(client, "run_update", loop)
    policy = RetryPolicy(attempts=3)

    def change(state: Any) -> Any:
        return state

    async with EventProducer(SETTINGS, producer_name="me") as producer:
        assert await producer.update(CONSUMER, change, policy=policy, wait_seconds=7) is done
        assert await producer.update(OTHER, change) is done
    [reader] = readers
    assert (reader.started, reader.closed) == (1, 1)
    first, second = calls
    assert first[:5] == (producer, reader.get, CONSUMER, change, policy)
    assert first[5] == {"wait_seconds": 7, "producer": "me", "max_bytes": 2048}
    assert second[2] == OTHER and second[4] == RetryPolicy()
    assert second[5]["wait_seconds"] is None


async def test_a_bulk_send_logs_its_count_failures_and_time(
    cluster: FakeCluster, producer: EventProducer, caplog: pytest.LogCaptureFixture
) -> None:
    docs: list[Any] = [event_doc(), event_doc(type="bad"), b"{", event_doc()]
    docs[1]["event_id"] = 5  # not a string: not reported as an id
    results = await producer.send_many(docs)
    assert [r.event_id for r in results][1:3] == [None, None]
    [line] = [
        orjson.loads(text) for text in caplog.text.splitlines() if "bulk_send_finished" in text
    ]
    assert (line["event"], line["events"], line["failed"]) == ("bulk_send_finished", 4, 2)
    assert 0 <= line["seconds"] < 60 and round(line["seconds"], 3) == line["seconds"]


async def test_a_bulk_item_whose_send_was_cancelled_is_reported_as_such(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.hold = True
    docs = [event_doc(), event_doc(OTHER)]
    bulk = asyncio.ensure_future(producer.send_many(docs))
    accumulator = cluster.producers[0]._message_accumulator
    for _ in range(100):
        held = [f for bs in accumulator._batches.values() for b in bs for f, _ in b._msg_futures]
        if len(held) == 2:
            break
        await asyncio.sleep(0.001)
    cancelled = next(
        f for bs in accumulator._batches.values() for b in bs for f, _ in b._msg_futures
    )
    cancelled.cancel()
    cluster.hold = False
    cluster.deliver()
    results = await asyncio.wait_for(bulk, 5)
    [item] = [r for r in results if not r.ok]
    assert isinstance(item.error, ProduceError) and str(item.error) == "the send was cancelled"
    assert item.event_id == docs[item.index]["event_id"] and item.result is None


async def test_delete_carries_its_precondition(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    await producer.delete(OTHER, expected_generation=4)
    [record] = cluster.written("events")
    assert decode_event(record.value or b"", max_bytes=2048).expected_generation == 4


async def test_a_producer_not_started_says_how_to_start_it(cluster: FakeCluster) -> None:
    with pytest.raises(RuntimeError) as raised:
        await EventProducer(SETTINGS).send(event_doc())
    assert str(raised.value) == "EventProducer is not started (use 'async with')"


async def test_a_producer_without_a_broker_says_which_client_could_not_connect(
    cluster: FakeCluster,
) -> None:
    cluster.up = False
    with pytest.raises(BrokerUnavailable) as raised:
        await EventProducer(SETTINGS).start()
    assert str(raised.value).startswith("cannot connect the producer to Kafka at localhost:1: ")
    assert cluster.producers[0].stopped  # the half-started one closed


async def test_a_close_the_broker_fails_is_logged_not_raised(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    producer = EventProducer(SETTINGS)
    await producer.start()

    async def fails() -> None:
        raise KafkaConnectionError("gone")

    monkeypatch.setattr(cluster.producers[0], "stop", fails)
    await producer.close()
    [line] = [
        orjson.loads(text) for text in caplog.text.splitlines() if "producer_close_unclean" in text
    ]
    assert (line["level"], line["error"]) == ("warning", "KafkaConnectionError")


async def test_a_bulk_send_cancelled_while_it_waits_for_acks_is_cancelled(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    """Cancelling the caller is not a send that was cancelled: it ends the bulk send with
    ``CancelledError`` instead of reporting the item and going on."""
    cluster.hold = True
    bulk = asyncio.ensure_future(producer.send_many([event_doc(), event_doc(OTHER)]))
    accumulator = cluster.producers[0]._message_accumulator
    for _ in range(100):
        if sum(b.record_count for bs in accumulator._batches.values() for b in bs) == 2:
            break
        await asyncio.sleep(0.001)
    bulk.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(bulk, 5)


async def test_the_listener_reads_without_a_group_from_the_first_byte(
    cluster: FakeCluster,
) -> None:
    """No group (nothing to commit, no rebalance) and a fetch answered as soon as one
    reply is there."""
    listener = ReplyListener(SETTINGS, 0)
    await listener.start()
    try:
        options = cluster.consumers[0].options
        assert options["group_id"] is None and options["enable_auto_commit"] is False
        assert options["fetch_min_bytes"] == 1
        assert "replies" in {task.get_name() for task in asyncio.all_tasks()}
    finally:
        await listener.close()


async def test_a_wait_the_caller_cancelled_does_not_stop_the_listener(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    abandoned = await producer.request(event_doc())
    abandoned.future.cancel()  # the caller gave up on its outcome
    kept = await producer.request(event_doc())  # same consumer: answered after it
    assert answer(cluster) == 2
    assert (await kept.outcome(5)).kind is OutcomeKind.APPLIED


async def test_waits_nobody_awaits_are_ended_quietly_at_close(cluster: FakeCluster) -> None:
    """A request whose outcome nobody awaits any more: its wait ends at the close
    without asyncio's "exception was never retrieved" when it is collected."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        producer = EventProducer(SETTINGS)
        await producer.start()
        await producer.request(event_doc())  # its PendingOutcome dropped at once
        await producer.close()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_every_field_of_an_upsert_is_sent(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    await producer.upsert(CONSUMER, project_id="p", user_id="u", consumer_type="TYPE_A")
    [record] = cluster.written("events")
    event = decode_event(record.value or b"", max_bytes=2048)
    assert (event.project_id, event.user_id, event.consumer_type) == ("p", "u", "TYPE_A")


async def test_a_producer_for_another_topic_sends_there(cluster: FakeCluster) -> None:
    cluster.topics["other.events"] = 2
    async with EventProducer(SETTINGS, topic="other.events") as producer:
        sent = await producer.send(event_doc())
    assert sent.topic == "other.events"
    assert len(cluster.written("other.events")) == 1 and cluster.written("events") == []


async def test_the_default_wait_for_an_outcome_is_the_setting(cluster: FakeCluster) -> None:
    settings = SETTINGS.model_copy(update={"outcome_wait_seconds": 0.05})
    async with EventProducer(settings) as producer:
        pending = await producer.request(event_doc())
        with pytest.raises(OutcomeTimeout, match=r"within 0\.05 s"):
            await asyncio.wait_for(pending.outcome(), 5)


async def test_an_acknowledgement_nobody_waits_for_any_more_is_dropped_quietly(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        cluster.hold = True
        acked = await producer.submit(event_doc())
        acked.cancel()  # the caller gave up waiting: the event is still sent
        cluster.hold = False
        cluster.deliver()
        for _ in range(100):
            if cluster.written("events"):
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert len(cluster.written("events")) == 1 and errors == []


async def test_a_bulk_send_the_broker_refuses_at_hand_over_reports_each_event_s_id(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    events = [new_event(EventType.UPSERT, CONSUMER), new_event(EventType.DELETE, OTHER)]
    cluster.up = False
    results = await producer.send_many(events)
    assert [r.event_id for r in results] == [e.event_id for e in events]
    assert all(isinstance(r.error, ProduceError) for r in results)


async def test_the_errors_of_requests_and_their_listener_say_exactly_what_happened(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each text in full: an operator reads it in a traceback or a CLI error line."""
    async with EventProducer(SETTINGS, reply_partition=1) as producer:
        pending = await producer.request(event_doc())
        with pytest.raises(OutcomeTimeout) as raised:
            await pending.outcome(0.01)
        assert str(raised.value) == (
            f"no outcome for event {pending.event_id} within 0.01 s; it is on "
            f"events[{pending.sent.partition}] at offset {pending.sent.offset} and may still "
            "be applied later (is the daemon running?)"
        )
    with pytest.raises(OutcomeTimeout) as raised:
        await pending.outcome(1)
    assert str(raised.value) == "the producer closed before the outcome"
    with pytest.raises(ConfigError) as refused:
        await ReplyListener(SETTINGS, 4).start()
    assert str(refused.value) == "reply partition 4: events.replies has partitions 0 to 3"
    cluster.topics.pop("events.replies")
    with pytest.raises(ConfigError) as refused:
        await ReplyListener(SETTINGS).start()
    assert str(refused.value) == "CONSUMERGEN_REPLY_TOPIC: no such topic: events.replies"
    cluster.topics["events.replies"] = 4

    async def gone(self: Any) -> Any:
        raise KafkaConnectionError("metadata")

    monkeypatch.setattr(type(cluster.consumers[0]._client), "fetch_all_metadata", gone)
    with pytest.raises(BrokerUnavailable) as unavailable:
        await ReplyListener(SETTINGS, 0).start()
    assert str(unavailable.value) == (
        "reply consumer: KafkaConnectionError: KafkaConnectionError: metadata"
    )


async def test_a_send_cancelled_by_a_closing_producer_says_so(
    cluster: FakeCluster, producer: EventProducer
) -> None:
    cluster.hold = True
    acked = await producer.submit(event_doc())
    accumulator = cluster.producers[0]._message_accumulator
    [(future, _)] = [f for bs in accumulator._batches.values() for b in bs for f in b._msg_futures]
    future.cancel()
    with pytest.raises(ProduceError) as raised:
        await asyncio.wait_for(acked, 5)
    assert str(raised.value) == "the send was cancelled (producer closed)"
