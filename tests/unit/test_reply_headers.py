"""Request-reply headers (Spring's names) read tolerantly, and the read-modify-write
event always conditional: pure functions, no broker."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest

from service.config import ConfigError
from service.contract.replies import (
    CORRELATION_HEADER,
    REPLY_PARTITION_HEADER,
    REPLY_TOPIC_HEADER,
    ReplyPolicy,
    ReplyRoute,
    correlation_of,
    partition_of_topic,
    reply_route,
    request_headers,
)
from service.domain.consumer import ConsumerState
from service.domain.events import UNCONDITIONAL, EventType
from service.producer.replies import choose_reply_partition
from service.producer.update import Change, conditional_event
from service.sinks.base import OutcomeMessage
from service.sinks.kafka import KafkaOutcomeSink

TOPIC = "consumer-events.replies"
#: The reply topic's partitions in the bound tests.
COUNT = 4


def test_round_trip() -> None:
    headers = [("content-type", b"x"), *request_headers(TOPIC, 3, b"c" * 16)]
    assert reply_route(headers, TOPIC) == ReplyRoute(TOPIC, 3, b"c" * 16)
    assert dict(headers)[REPLY_PARTITION_HEADER] == struct.pack(">i", 3)
    assert correlation_of([(CORRELATION_HEADER, b"abc")]) == b"abc"
    assert correlation_of(None) is None


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [(REPLY_TOPIC_HEADER, TOPIC.encode()), (CORRELATION_HEADER, b"c")],  # no partition
        [(REPLY_TOPIC_HEADER, TOPIC.encode()), (REPLY_PARTITION_HEADER, b"\x00\x01")],
        request_headers("consumer-events", 0, b"c"),  # another topic: never written to
        request_headers(TOPIC, -1, b"c"),
        request_headers(TOPIC, 0, b"c" * 256),  # an oversized correlation id
        [(REPLY_TOPIC_HEADER, b"\xff"), (REPLY_PARTITION_HEADER, b"\0\0\0\0")],
    ],
)
def test_no_route_for_what_the_daemon_may_not_serve(headers: object) -> None:
    assert reply_route(headers, TOPIC) is None  # type: ignore[arg-type]


def test_no_route_without_a_configured_reply_topic() -> None:
    assert reply_route(request_headers(TOPIC, 0, b"c"), None) is None


def test_a_route_to_any_allowed_topic() -> None:
    allowed = frozenset({TOPIC, "team-b.replies"})
    assert reply_route(request_headers("team-b.replies", 2, b"c"), allowed) == ReplyRoute(
        "team-b.replies", 2, b"c"
    )
    assert reply_route(request_headers(TOPIC, 0, b"c"), allowed) == ReplyRoute(TOPIC, 0, b"c")
    assert reply_route(request_headers("elsewhere", 0, b"c"), allowed) is None


def test_the_policy_reports_each_request_for_a_topic_it_does_not_allow() -> None:
    refused: list[int] = []
    policy = ReplyPolicy(frozenset({TOPIC}), refused=lambda: refused.append(1))
    assert policy.route(request_headers(TOPIC, 1, b"c")) == ReplyRoute(TOPIC, 1, b"c")
    assert policy.route(None) is None and policy.route([]) is None
    assert policy.route([("content-type", b"x")]) is None  # asked for nothing
    # Malformed requests for an allowed topic are "no reply", not a refusal.
    assert policy.route(request_headers(TOPIC, -1, b"c")) is None
    assert refused == []
    assert policy.route(request_headers("consumer-events", 0, b"c")) is None
    assert (
        policy.route([(REPLY_TOPIC_HEADER, b"\xff"), (REPLY_PARTITION_HEADER, b"\0\0\0\0")]) is None
    )
    assert refused == [1, 1]


def _state(deleted: bool, generation: int = 4) -> ConsumerState:
    return ConsumerState(str(uuid.uuid4()), generation, deleted, "p", "u", None, "e")


@pytest.mark.parametrize(
    ("state", "change", "type_", "expected"),
    [
        (None, Change(project_id="p2"), EventType.UPSERT, None),
        (_state(False), Change(project_id="p2"), EventType.UPSERT, 4),
        (_state(True), Change(project_id="p2"), EventType.UPSERT, None),
        (_state(False), Change(delete=True), EventType.DELETE, 4),
        (_state(True), Change(delete=True), EventType.DELETE, 4),
        (None, Change(delete=True), EventType.DELETE, 0),
    ],
)
def test_the_loop_never_sends_an_unconditional_event(
    state: ConsumerState | None, change: Change, type_: EventType, expected: int | None
) -> None:
    event = conditional_event(str(uuid.uuid4()), state, change)
    assert event.type is type_ and event.expected_generation is not UNCONDITIONAL
    assert event.expected_generation == expected


@pytest.mark.parametrize(
    ("partition", "exists"), [(-1, False), (0, True), (COUNT - 1, True), (COUNT, False)]
)
def test_a_reply_partition_is_one_of_the_topics(partition: int, exists: bool) -> None:
    """The topic's partitions are 0 to count - 1: outside them no outcome ever arrives."""
    assert partition_of_topic(partition, COUNT) is exists


@pytest.mark.parametrize("partition", [0, COUNT - 1])
def test_the_producer_listens_on_a_partition_of_the_reply_topic(partition: int) -> None:
    assert choose_reply_partition(partition, TOPIC, COUNT) == partition
    assert {choose_reply_partition(None, TOPIC, COUNT) for _ in range(200)} == set(range(COUNT))


@pytest.mark.parametrize("partition", [-1, COUNT, 2**31 - 1])
def test_the_producer_refuses_a_partition_outside_the_reply_topic(partition: int) -> None:
    """Refused at start, naming the partition and the topic's range, instead of waiting
    for outcomes that can never come."""
    with pytest.raises(ConfigError) as refused:
        choose_reply_partition(partition, TOPIC, COUNT)
    assert f"reply partition {partition}: {TOPIC} has partitions 0 to {COUNT - 1}" in str(
        refused.value
    )
    with pytest.raises(ConfigError, match="no such topic"):
        choose_reply_partition(None, TOPIC, 0)


class Batch:
    """The part of aiokafka's ``BatchBuilder`` the sink uses: ``append`` (never full)."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: None, headers: object) -> int:
        self.values.append(value)
        return len(self.values)


class RecordingProducer:
    """The part of ``AIOKafkaProducer`` the outcome sink uses, keeping what it sent."""

    def __init__(self) -> None:
        self.sent: dict[int, list[bytes]] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(COUNT))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        assert topic == TOPIC
        self.sent.setdefault(partition, []).extend(batch.values)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class Handle:
    def __init__(self) -> None:
        self.producer = RecordingProducer()

    async def ready(self) -> RecordingProducer:
        return self.producer

    async def stop_quietly(self) -> None:
        """Called after a failed write only: the test then fails on what raised."""


async def test_the_daemon_replies_inside_the_reply_topic_and_drops_the_rest() -> None:
    """Replies to partitions 0 and count - 1 are written there; a request naming -1 or
    count is dropped (it can never be delivered), the rest of the batch still goes."""
    handle = Handle()
    sink = KafkaOutcomeSink(None, handle)  # type: ignore[arg-type]
    messages = [
        OutcomeMessage(b"e", f"to {p}".encode(), ReplyRoute(TOPIC, p, b"c"))
        for p in (-1, 0, COUNT - 1, COUNT)
    ]
    await sink.write_outcomes(messages)
    assert handle.producer.sent == {0: [b"to 0"], COUNT - 1: [f"to {COUNT - 1}".encode()]}


def test_a_correlation_id_of_the_longest_length_copied_back_is_served() -> None:
    # 255 bytes is the longest the daemon copies back (MAX_CORRELATION_BYTES); 256 is
    # refused (above): the bound is inclusive.
    longest = b"c" * 255
    assert reply_route(request_headers(TOPIC, 1, longest), TOPIC) == ReplyRoute(TOPIC, 1, longest)


def test_an_empty_reply_header_counts_as_absent_and_a_later_one_is_read() -> None:
    # A header with an empty value is not a request for anything: the first non-empty
    # value of each reply header is the one the reply goes by.
    headers = [
        (CORRELATION_HEADER, b""),
        (REPLY_TOPIC_HEADER, b""),
        *request_headers(TOPIC, 2, b"id-1"),
        (CORRELATION_HEADER, b"id-2"),
    ]
    assert reply_route(headers, TOPIC) == ReplyRoute(TOPIC, 2, b"id-1")
    # Empty reply headers alone ask for nothing.
    assert reply_route([(CORRELATION_HEADER, b""), *request_headers(TOPIC, 0, b"")], TOPIC) is None
