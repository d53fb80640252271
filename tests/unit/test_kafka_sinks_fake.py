"""The Kafka sinks over aiokafka's producer faked at its client API
(``service.testing.fake_aiokafka``: a real ``MessageAccumulator`` and ``BatchBuilder``,
no broker): where each outcome record, reply and dead letter goes, in which order and
batches, with which headers, and what each broker answer becomes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

import service.sinks.kafka_producer as kafka_producer
from service.config import load_settings
from service.contract.replies import CORRELATION_HEADER, ReplyRoute
from service.domain.outcomes import EventSource
from service.kafka.partitioning import partition_for
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.sinks.fit import bare_letter, letter_size
from service.sinks.kafka import KafkaDeadLetterSink, KafkaOutcomeSink
from service.sinks.kafka_producer import KafkaProducerHandle
from service.testing.fake_aiokafka import FakeCluster, Written, producer_class
from tests.log_lines import logged

SETTINGS = load_settings(
    bootstrap_servers="localhost:1",
    dlq_topic="dlq",
    outcomes_topic="out",
    request_timeout_seconds=0.2,
)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    found = FakeCluster({"dlq": 1, "out": 4, "replies": 3, "other.replies": 2})
    monkeypatch.setattr(kafka_producer, "AIOKafkaProducer", producer_class(found))

    async def no_limit(*_: Any) -> None:
        return None

    monkeypatch.setattr(kafka_producer, "topic_max_message_bytes", no_limit)
    monkeypatch.setattr(kafka_producer, "AIOKafkaAdminClient", FakeAdmin)
    return found


class FakeAdmin:
    """The admin client the handle reads the dead-letter topic's limit with."""

    fail_start = False
    closed = 0

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        if FakeAdmin.fail_start:
            raise KafkaConnectionError("no admin")

    async def close(self) -> None:
        FakeAdmin.closed += 1


def handle() -> KafkaProducerHandle:
    return KafkaProducerHandle(SETTINGS)


def outcome(n: int, *, key: bool = True, reply: ReplyRoute | None = None) -> OutcomeMessage:
    return OutcomeMessage(f"event-{n}".encode() if key else None, b'{"n":%d}' % n, reply)


def letter(
    n: int, value: bytes = b"v", headers: list[tuple[str, bytes]] | None = None
) -> DeadLetter:
    return DeadLetter(
        key=b"k%d" % n,
        value=value,
        headers=headers if headers is not None else [("error.reason", b"not_json")],
        origin=EventSource("events", 0, n),
        reason="not_json",
        invalid=True,
    )


def values(records: list[Written]) -> list[bytes | None]:
    return [w.value for w in records]


# --- outcomes ------------------------------------------------------------------------


async def test_each_outcome_record_goes_to_its_key_partition_in_order_one_batch_each(
    cluster: FakeCluster,
) -> None:
    messages = [outcome(n) for n in range(40)]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    expected: dict[int, list[bytes]] = {}
    for m in messages:
        assert m.key is not None
        expected.setdefault(partition_for(m.key, [0, 1, 2, 3]), []).append(m.value)
    assert {p: values(cluster.log("out", p)) for p in expected} == expected
    assert sum(len(cluster.log("out", p)) for p in range(4)) == 40
    assert all(w.key == b"event-%d" % int(w.value[5:-1]) for w in cluster.written("out") if w.value)
    # one batch per partition: the records of a write share their requests
    assert sorted(p for t, p, _, _ in cluster.batches) == sorted(expected)


async def test_outcome_records_overflowing_a_batch_start_another_in_order(
    cluster: FakeCluster,
) -> None:
    cluster.batch_size = 256
    messages = [outcome(n) for n in range(30)]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    for p in range(4):
        sent = [m.value for m in messages if m.key and partition_for(m.key, [0, 1, 2, 3]) == p]
        assert values(cluster.log("out", p)) == sent
    assert len(cluster.batches) > 4
    assert all(len(records) > 0 for _, _, records, _ in cluster.batches)


async def test_an_outcome_record_larger_than_a_batch_goes_alone_in_its_own(
    cluster: FakeCluster,
) -> None:
    """aiokafka's ``BatchBuilder`` takes any record into an empty batch: a large one
    closes the batch before it and is sent on its own, in its place."""
    cluster.batch_size = 256
    messages = [OutcomeMessage(b"e", b"%d" % n + b"x" * (400 if n == 2 else 10)) for n in range(5)]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    assert values(cluster.written("out")) == [m.value for m in messages]
    sizes = [len(records) for _, _, records, _ in cluster.batches]
    assert sizes == [2, 1, 2]


async def test_outcome_records_without_key_land_on_some_partition(cluster: FakeCluster) -> None:
    await KafkaOutcomeSink("out", handle()).write_outcomes(
        [outcome(n, key=False) for n in range(20)]
    )
    assert sorted(w.value or b"" for w in cluster.written("out")) == sorted(
        b'{"n":%d}' % n for n in range(20)
    )
    assert all(w.key is None for w in cluster.written("out"))


async def test_replies_go_to_the_partition_each_request_named_with_its_correlation(
    cluster: FakeCluster,
) -> None:
    messages = [
        outcome(n, reply=ReplyRoute("replies" if n % 3 else "other.replies", n % 2, b"c%d" % n))
        for n in range(12)
    ]
    await KafkaOutcomeSink(None, handle()).write_outcomes(messages)
    assert cluster.written("out") == []  # no outcomes topic: replies only
    for m in messages:
        assert m.reply is not None
        log = cluster.log(m.reply.topic, m.reply.partition)
        [found] = [w for w in log if w.value == m.value]
        assert found.key == m.key
        assert found.headers == [(CORRELATION_HEADER, m.reply.correlation)]
    for topic, count in (("replies", 3), ("other.replies", 2)):
        for p in range(count):
            sent = [
                m.value
                for m in messages
                if m.reply and (m.reply.topic, m.reply.partition) == (topic, p)
            ]
            assert values(cluster.log(topic, p)) == sent


async def test_replies_overflowing_a_batch_keep_their_order(cluster: FakeCluster) -> None:
    cluster.batch_size = 256
    messages = [outcome(n, reply=ReplyRoute("replies", 1, b"c%d" % n)) for n in range(20)]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    assert values(cluster.log("replies", 1)) == [m.value for m in messages]
    assert len([b for b in cluster.batches if b[0] == "replies"]) > 1
    assert len(cluster.written("out")) == 20  # and every outcome record as well


async def test_a_reply_larger_than_a_batch_goes_alone_in_its_own(cluster: FakeCluster) -> None:
    cluster.batch_size = 256
    messages = [
        OutcomeMessage(
            b"e", b"%d" % n + b"x" * (400 if n == 1 else 10), ReplyRoute("replies", 0, b"c")
        )
        for n in range(4)
    ]
    await KafkaOutcomeSink(None, handle()).write_outcomes(messages)
    assert values(cluster.written("replies")) == [m.value for m in messages]
    assert [len(records) for _, _, records, _ in cluster.batches] == [1, 1, 2]


async def test_a_reply_to_a_partition_the_topic_lacks_is_dropped_the_rest_written(
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = [
        outcome(1, reply=ReplyRoute("replies", 3, b"a")),  # replies has 0..2
        outcome(2, reply=ReplyRoute("replies", 2, b"b")),
        outcome(3, reply=ReplyRoute("replies", -1, b"c")),
    ]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    logs = logged(caplog)
    assert values(cluster.written("replies")) == [b'{"n":2}']
    [warning] = [e for e in logs if e["event"].startswith("replies dropped")]
    assert warning["dropped"] == 2 and warning["partitions"] == 3
    assert warning["reply_topic"] == "replies"
    assert len(cluster.written("out")) == 3


async def test_no_outcomes_write_nothing_and_start_no_producer(cluster: FakeCluster) -> None:
    await KafkaOutcomeSink("out", KafkaProducerHandle(SETTINGS, lambda: False)).write_outcomes([])
    assert cluster.producers == []


async def test_the_write_returns_only_once_the_broker_acknowledged(cluster: FakeCluster) -> None:
    cluster.hold = True
    write = asyncio.ensure_future(KafkaOutcomeSink("out", handle()).write_outcomes([outcome(1)]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not write.done()
    cluster.hold = False
    cluster.deliver()
    await asyncio.wait_for(write, 5)
    assert len(cluster.written("out")) == 1


async def test_a_broker_failing_the_batch_is_sink_unavailable_and_the_producer_dropped(
    cluster: FakeCluster,
) -> None:
    sinks = handle()
    cluster.refuse = lambda _: KafkaConnectionError("connection reset")
    with pytest.raises(SinkUnavailable) as raised:
        await KafkaOutcomeSink("out", sinks).write_outcomes([outcome(1)])
    assert raised.value.kind == "broker"
    assert "outcome records not written: KafkaConnectionError: " in str(raised.value)
    assert cluster.producers[0].stopped
    cluster.refuse = lambda _: None
    await KafkaOutcomeSink("out", sinks).write_outcomes([outcome(2)])
    assert len(cluster.producers) == 2  # a fresh producer for the retry
    assert values(cluster.written("out")) == [b'{"n":2}']


async def test_a_bug_in_the_write_stays_a_bug(cluster: FakeCluster) -> None:
    cluster.refuse = lambda _: RuntimeError("ours")
    with pytest.raises(RuntimeError, match="ours"):
        await KafkaOutcomeSink("out", handle()).write_outcomes([outcome(1)])
    assert cluster.producers[0].stopped


# --- dead letters --------------------------------------------------------------------


async def test_dead_letters_keep_key_value_and_headers_in_order(cluster: FakeCluster) -> None:
    letters = [letter(n, b"v%d" % n, [("a", b"1"), ("error.reason", b"r%d" % n)]) for n in range(5)]
    await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters(letters)
    assert [(w.key, w.value, w.headers) for w in cluster.written("dlq")] == [
        (d.key, d.value, d.headers) for d in letters
    ]


async def test_a_letter_over_the_topic_limit_is_cut_to_fit_and_logged(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    sinks = handle()
    sinks.dlq_topic_limit = 300
    big = letter(1, b"x" * 1000)
    await KafkaDeadLetterSink(SETTINGS, sinks).write_dead_letters([letter(0), big])
    logs = logged(caplog)
    [small, cut] = cluster.written("dlq")
    assert small.value == b"v"
    assert letter_size(cut.key, cut.value, cut.headers) <= 300
    assert ("error.reason", b"not_json") in cut.headers
    [warning] = [e for e in logs if e["event"] == "dead letter cut to fit the dead-letter topic"]
    assert warning["origin_offset"] == 1 and warning["limit"] == 300
    assert warning["letter_bytes"] == letter_size(big.key, big.value, big.headers)


def test_the_dead_letter_limit_is_the_topic_s_capped_by_the_request_size() -> None:
    sinks = KafkaProducerHandle(SETTINGS)
    sink = KafkaDeadLetterSink(SETTINGS, sinks)
    assert sink.dead_letter_limit == 1_048_588  # the broker default, under the request size
    sinks.dlq_topic_limit = 5000
    assert sink.dead_letter_limit == 5000
    sinks.dlq_topic_limit = 50_000_000
    assert sink.dead_letter_limit == sinks.max_request_size


def refuse_over(size: int) -> Any:
    def refuse(w: Written) -> BaseException | None:
        total = len(w.value or b"") + len(w.key or b"")
        return MessageSizeTooLargeError("too large") if total > size else None

    return refuse


async def test_a_letter_the_broker_refuses_is_sent_alone_then_bare_the_rest_written(
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster.refuse = refuse_over(100)
    letters = [letter(0), letter(1, b"x" * 500), letter(2)]
    await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters(letters)
    logs = logged(caplog)
    written = cluster.written("dlq")
    assert [w.value for w in written] == [b"v", b"", b"v"]
    bare = written[1]
    assert bare.key is None and ("error.reason", b"not_json") in bare.headers
    refused = [e for e in logs if e["event"] == "dead letter refused as too large"]
    assert [(e["origin_offset"], e["bare"]) for e in refused] == [(1, False)]
    assert refused[0]["error_class"] == "MessageSizeTooLargeError"
    assert not [e for e in logs if e["level"] == "error"]


async def test_a_letter_refused_even_bare_is_logged_and_given_up(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.refuse = lambda w: None if w.value == b"ok" else MessageSizeTooLargeError("no")
    await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters(
        [letter(0, b"ok"), letter(4, b"bad")]
    )
    logs = logged(caplog)
    assert [w.value for w in cluster.written("dlq")] == [b"ok"]
    [error] = [e for e in logs if e["level"] == "error"]
    assert error["origin_offset"] == 4 and error["reason"] == "not_json"
    assert error["event"].startswith("dead letter not written")
    refused = [e["bare"] for e in logs if e["event"] == "dead letter refused as too large"]
    assert refused == [False, True]


async def test_a_letter_refused_before_sending_is_redone_on_its_own(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    sinks = handle()
    calls = []
    producer = await sinks.ready()
    real_send = producer.send

    async def send(topic: str, **kw: Any) -> Any:
        calls.append(kw["value"])
        if len(calls) == 1:
            raise MessageSizeTooLargeError("before buffering")
        return await real_send(topic, **kw)

    monkeypatch.setattr(producer, "send", send)
    await KafkaDeadLetterSink(SETTINGS, sinks).write_dead_letters([letter(0), letter(1)])
    assert len(cluster.producers) == 2  # dropped after the refusal, a fresh one redid them
    assert [w.value for w in cluster.written("dlq")] == [b"v", b"v"]
    assert [w.key for w in cluster.written("dlq")] == [b"k0", b"k1"]


async def test_a_dead_letter_batch_the_broker_cannot_take_now_is_sink_unavailable(
    cluster: FakeCluster,
) -> None:
    cluster.refuse = lambda _: KafkaConnectionError("reset")
    with pytest.raises(SinkUnavailable, match="dead letters not written") as raised:
        await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters([letter(0), letter(1)])
    assert raised.value.kind == "broker"
    assert cluster.producers[0].stopped


async def test_a_dead_letter_batch_failing_for_a_bug_raises_it(cluster: FakeCluster) -> None:
    cluster.refuse = lambda w: RuntimeError("ours") if w.key == b"k0" else None
    with pytest.raises(RuntimeError, match="ours"):
        await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters([letter(0), letter(1)])


async def test_a_refused_alone_letter_failing_otherwise_is_raised(cluster: FakeCluster) -> None:
    attempts = []

    def refuse(w: Written) -> BaseException | None:
        attempts.append(w.key)
        error: BaseException = MessageSizeTooLargeError("big")
        return error if len(attempts) == 1 else KafkaConnectionError("x")

    cluster.refuse = refuse
    with pytest.raises(SinkUnavailable):
        await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters([letter(1)])


# --- what the fresh mutation run showed unheld -----------------------------------------


async def test_the_unavailability_names_the_error_in_one_line_or_by_its_class(
    cluster: FakeCluster,
) -> None:
    for error, text in (
        (ConnectionResetError(), "ConnectionResetError: ConnectionResetError"),
        (ConnectionResetError("peer  went\naway"), "ConnectionResetError: peer went away"),
    ):
        cluster.refuse = lambda _, error=error: error  # type: ignore[misc]
        with pytest.raises(SinkUnavailable) as raised:
            await KafkaOutcomeSink("out", handle()).write_outcomes([outcome(1)])
        assert str(raised.value) == f"outcome records not written: {text}"


async def test_batches_started_anew_keep_keys_and_reply_headers(cluster: FakeCluster) -> None:
    cluster.batch_size = 256
    messages = [outcome(n, reply=ReplyRoute("replies", 0, b"c%d" % n)) for n in range(12)]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    assert [(w.key, w.headers) for w in cluster.log("replies", 0)] == [
        (m.key, [(CORRELATION_HEADER, b"c%d" % n)]) for n, m in enumerate(messages)
    ]
    assert all(w.key == b"event-%d" % int((w.value or b"")[5:-1]) for w in cluster.written("out"))


async def test_refusal_logs_name_the_original_s_coordinates(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    sinks = handle()
    sinks.dlq_topic_limit = 300
    cluster.refuse = lambda w: None if w.value == b"ok" else MessageSizeTooLargeError("no")
    big = DeadLetter(
        b"k", b"x" * 1000, [("error.reason", b"r")], EventSource("ev", 5, 9), "r", True
    )
    await KafkaDeadLetterSink(SETTINGS, sinks).write_dead_letters([big])
    logs = [e for e in logged(caplog) if "origin_offset" in e]
    assert len(logs) == 4  # cut, refused, refused bare, given up
    for event in logs:
        assert (event["origin_topic"], event["origin_partition"], event["origin_offset"]) == (
            "ev",
            5,
            9,
        )
    assert logs[0]["cut"] == "value"


async def test_the_bare_letter_records_the_original_sizes(cluster: FakeCluster) -> None:
    cluster.refuse = lambda w: (
        None if w.value is None or w.value == b"" else (MessageSizeTooLargeError("no"))
    )
    original = letter(1, b"x" * 50)
    await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters([original])
    [bare] = cluster.written("dlq")
    expected = bare_letter(original.headers, original.key, original.value)
    assert bare.headers == expected.headers


async def test_a_refused_letter_alone_is_redone_not_its_acknowledged_neighbours(
    cluster: FakeCluster,
) -> None:
    """Letters on other partitions were acknowledged: only the refused one is redone."""
    cluster.topics["dlq"] = 2
    letters = [letter(n, b"x" * 500 if n == 3 else b"v") for n in range(8)]
    cluster.refuse = refuse_over(100)
    await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters(letters)
    keys = [w.key for w in cluster.written("dlq")]
    refused_partition = partition_for(b"k3", [0, 1])
    redone = [d.key for d in letters if partition_for(d.key or b"", [0, 1]) == refused_partition]
    kept = [d.key for d in letters if d.key not in redone]
    assert sorted(k or b"" for k in keys if k) == sorted(
        k or b"" for k in kept + redone if k != b"k3"
    )
    assert len(keys) == len(letters)  # each once (the refused one bare, keyless)


async def test_a_batch_failing_for_the_broker_is_raised_not_redone_letter_by_letter(
    cluster: FakeCluster,
) -> None:
    failures = [KafkaConnectionError("once")]
    cluster.refuse = lambda _: failures.pop() if failures else None
    with pytest.raises(SinkUnavailable, match="once"):
        await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters([letter(0)])
    assert cluster.written("dlq") == []  # the daemon retries the batch, paced


async def test_of_several_failures_the_first_letter_s_is_raised(cluster: FakeCluster) -> None:
    cluster.topics["dlq"] = 2
    letters = [letter(n) for n in range(6)]
    first = partition_for(b"k0", [0, 1])
    cluster.refuse = lambda w: RuntimeError(f"partition {w.partition}")
    with pytest.raises(RuntimeError, match=f"partition {first}"):
        await KafkaDeadLetterSink(SETTINGS, handle()).write_dead_letters(letters)


async def test_outcome_records_and_replies_keep_their_own_headers_in_every_batch(
    cluster: FakeCluster,
) -> None:
    """The trace context the daemon puts on each outcome (``service.tracing.daemon``)
    travels with its record and its reply, in a first batch and in the ones restarted
    when a batch is full; a reply's correlation id comes first."""
    cluster.batch_size = 256
    messages = [
        OutcomeMessage(
            b"event-%d" % n,
            b'{"n":%d}' % n,
            ReplyRoute("replies", 0, b"c%d" % n),
            [("traceparent", b"context-%d" % n)],
        )
        for n in range(16)
    ]
    await KafkaOutcomeSink("out", handle()).write_outcomes(messages)
    assert len([b for b in cluster.batches if b[0] == "replies"]) > 1
    headers = {m.value: m.headers for m in messages}
    written = cluster.written("out")
    assert len(written) == 16 and all(w.headers == headers[w.value or b""] for w in written)
    assert [w.headers for w in cluster.log("replies", 0)] == [
        [(CORRELATION_HEADER, b"c%d" % n), ("traceparent", b"context-%d" % n)] for n in range(16)
    ]


async def test_the_cut_warning_lists_the_parts_cut_in_order(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    sinks = handle()
    sinks.dlq_topic_limit = 300
    both = DeadLetter(
        key=b"k" * 400,
        value=b"x" * 1000,
        headers=[("error.reason", b"not_json")],
        origin=EventSource("events", 0, 5),
        reason="not_json",
        invalid=True,
    )
    await KafkaDeadLetterSink(SETTINGS, sinks).write_dead_letters([both])
    [warning] = [
        e for e in logged(caplog) if e["event"] == "dead letter cut to fit the dead-letter topic"
    ]
    assert warning["cut"] == "value,key"
    assert (warning["origin_topic"], warning["origin_partition"]) == ("events", 0)
