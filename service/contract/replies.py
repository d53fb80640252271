"""Request-reply over Kafka: the headers a producer sets to get its outcome back.

The convention is Spring Kafka's ``ReplyingKafkaTemplate`` (so a Spring producer works
unchanged): the request carries ``kafka_replyTopic`` (UTF-8), ``kafka_replyPartition``
(a 4-byte big-endian signed int) and ``kafka_correlationId`` (opaque bytes); the daemon
writes the event's outcome record to that topic and partition with the same
``kafka_correlationId`` header.  The producer reads only its own reply partition
(``service.producer.replies``), never the whole outcomes topic.

The daemon honours only the reply topic it is configured with
(``CONSUMERGEN_REPLY_TOPIC``): a record cannot make it write anywhere else.  Parsing is
tolerant: a header that is missing or malformed means "no reply", never a failure of
the event.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
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
    headers: Iterable[tuple[str, bytes]] | None, reply_topic: str | None
) -> ReplyRoute | None:
    """The route a record asks for, if it asks for one the daemon may serve (its topic is
    ``reply_topic``); None otherwise (no reply headers, unreadable ones, another topic)."""
    if reply_topic is None or not headers:
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
    if topic != reply_topic.encode() or len(partition) != 4:
        return None
    if len(correlation) > MAX_CORRELATION_BYTES:
        return None
    number = struct.unpack(">i", partition)[0]
    if number < 0:
        return None
    return ReplyRoute(reply_topic, number, correlation)


def partition_of_topic(partition: int, partitions: int) -> bool:
    """Whether ``partition`` is one of a topic's ``partitions`` (numbered 0 to count - 1).

    The one rule both sides of request-reply follow: a producer refuses to listen on a
    reply partition outside the topic (no outcome would ever reach it), and the daemon
    drops a reply whose request named one (retrying could never deliver it)."""
    return 0 <= partition < partitions


def correlation_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The correlation id of a reply record."""
    for name, value in headers or ():
        if name == CORRELATION_HEADER:
            return bytes(value)
    return None
