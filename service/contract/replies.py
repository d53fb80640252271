"""Request-reply over Kafka: the headers a producer sets to get its outcome back.

The convention is Spring Kafka's ``ReplyingKafkaTemplate`` (so a Spring producer works
unchanged): the request carries ``kafka_replyTopic`` (UTF-8), ``kafka_replyPartition``
(a 4-byte big-endian signed int) and ``kafka_correlationId`` (opaque bytes); the daemon
writes the event's outcome record to that topic and partition with the same
``kafka_correlationId`` header.  The producer reads only its own reply partition
(``service.producer.replies``), never the whole outcomes topic.

The daemon honours only the reply topics it is configured to allow
(``CONSUMERGEN_REPLY_TOPIC``, by default ``<events topic>.replies``, and
``CONSUMERGEN_ALLOWED_REPLY_TOPICS``): a record cannot make it write anywhere else; a
request naming another topic gets no reply, and ``ReplyPolicy`` reports it (the daemon
counts it).  Parsing is tolerant: a header that is missing or malformed means "no
reply", never a failure of the event.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

REPLY_TOPIC_HEADER: Final = "kafka_replyTopic"
REPLY_PARTITION_HEADER: Final = "kafka_replyPartition"
CORRELATION_HEADER: Final = "kafka_correlationId"
#: The longest correlation id the daemon copies back (Spring's are 16 bytes).
MAX_CORRELATION_BYTES: Final = 255


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where the outcome of one request goes, and the id the requester matches it by."""

    topic: str
    partition: int
    correlation: bytes


def request_headers(topic: str, partition: int, correlation: bytes) -> list[tuple[str, bytes]]:
    """The reply headers of a request."""
    return [
        (REPLY_TOPIC_HEADER, topic.encode()),
        (REPLY_PARTITION_HEADER, struct.pack(">i", partition)),
        (CORRELATION_HEADER, correlation),
    ]


def reply_route(
    headers: Iterable[tuple[str, bytes]] | None, allowed: str | Collection[str] | None
) -> ReplyRoute | None:
    """The route a record asks for, if it asks for one the daemon may serve (its topic is
    ``allowed`` or one of them); None otherwise (no reply headers, unreadable ones,
    another topic)."""
    if not allowed or not headers:
        return None
    found: dict[str, bytes] = {}
    for name, value in headers:
        if name in (REPLY_TOPIC_HEADER, REPLY_PARTITION_HEADER, CORRELATION_HEADER) and value:
            found.setdefault(name, bytes(value))
    topic, partition, correlation = (
        found.get(REPLY_TOPIC_HEADER),
        found.get(REPLY_PARTITION_HEADER),
        found.get(CORRELATION_HEADER),
    )
    if topic is None or partition is None or correlation is None:
        return None
    allowed_name = _allowed_name(topic, allowed)
    if allowed_name is None or len(partition) != 4:
        return None
    if len(correlation) > MAX_CORRELATION_BYTES:
        return None
    number = struct.unpack(">i", partition)[0]
    if number < 0:
        return None
    return ReplyRoute(allowed_name, number, correlation)


def _allowed_name(topic: bytes, allowed: str | Collection[str]) -> str | None:
    try:
        name = topic.decode()
    except UnicodeDecodeError:
        return None
    if isinstance(allowed, str):
        return name if name == allowed else None
    return name if name in allowed else None


def requested_reply_topic(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The reply topic a record names (its first non-empty ``kafka_replyTopic``), if any."""
    for name, value in headers or ():
        if name == REPLY_TOPIC_HEADER and value:
            return bytes(value)
    return None


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class ReplyPolicy:
    """Which reply topics the daemon serves, and who hears of a request it refuses.

    ``refused`` is called once per record whose reply it will not send because the
    record named a topic outside ``allowed`` (the daemon counts them in
    ``consumergen_replies_refused_total``); the record's outcome is unaffected.
    ``every_outcome``: an outcome record is wanted for every event (an outcomes topic
    is configured), not only for those that asked for a reply.
    """

    allowed: frozenset[str]
    every_outcome: bool = True
    refused: Callable[[], None] = field(default=_nothing)

    def route(self, headers: Iterable[tuple[str, bytes]] | None) -> ReplyRoute | None:
        if not headers:
            return None
        headers = list(headers)
        route = reply_route(headers, self.allowed)
        if route is None:
            asked = requested_reply_topic(headers)
            if asked is not None and _allowed_name(asked, self.allowed) is None:
                self.refused()
        return route


def correlation_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The correlation id of a reply record."""
    for name, value in headers or ():
        if name == CORRELATION_HEADER:
            return bytes(value)
    return None
