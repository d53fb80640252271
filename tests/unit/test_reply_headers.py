"""Request-reply headers (Spring's names) read tolerantly, and the read-modify-write
event always conditional: pure functions, no broker."""

from __future__ import annotations

import struct
import uuid

import pytest

from service.contract.replies import (
    CORRELATION_HEADER,
    REPLY_PARTITION_HEADER,
    REPLY_TOPIC_HEADER,
    ReplyPolicy,
    ReplyRoute,
    correlation_of,
    reply_route,
    request_headers,
)
from service.domain.consumer import ConsumerState
from service.domain.events import UNCONDITIONAL, EventType
from service.producer.update import Change, conditional_event

TOPIC = "consumer-events.replies"


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
