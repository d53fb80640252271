"""Topic administration: create the service's topics, read a topic's size limit.

``consumergen topics create`` and ``consumergen run --create-topics`` create the events,
dead-letter and outcomes topics here; the daemon's dead-letter sink reads the
dead-letter topic's ``max.message.bytes`` here to cut letters to fit.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from service.config import Settings
from service.kafka.clients import (
    BrokerUnavailable,
    client_options,
    close_quietly,
    describe_servers,
    error_text,
    start_bounded,
)

log = structlog.get_logger(__name__)

_TOPIC_ALREADY_EXISTS: Final = 36

#: Kafka's default ``message.max.bytes`` (a topic's ``max.message.bytes`` unless set).
BROKER_DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588
#: What a dead letter adds to its record: the error and origin headers (the message is
#: at most 500 characters), with room to spare.
DEAD_LETTER_HEADROOM_BYTES: Final = 16_384


async def ensure_topics(
    settings: Settings,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
) -> dict[str, str]:
    """Create the events, dead-letter, reply and (if configured) outcomes topics.

    Idempotent: returns ``{topic: "created" | "exists"}``. An existing topic is left as
    it is (its partition count is not changed: that would re-key every consumer).

    A dead-letter topic created here gets a ``max.message.bytes`` at least that of the
    events topic (its config when it exists, else what ``max_event_bytes`` implies) plus
    room for the error headers, so that the dead letter of a record the events topic
    took is never cut.  An existing dead-letter topic with less is logged, not altered.
    """
    wanted = [settings.topic, settings.dlq_topic]
    if settings.outcomes_topic:
        wanted.append(settings.outcomes_topic)
    if settings.reply_topic:
        wanted.append(settings.reply_topic)
    count = partitions or settings.topic_partitions
    replicas = replication_factor or settings.topic_replication_factor
    admin = AIOKafkaAdminClient(**client_options(settings))
    await start_bounded(admin, settings, "admin client")
    try:
        existing = set(await _bounded(admin.list_topics(), settings))
        missing = [name for name in dict.fromkeys(wanted) if name not in existing]
        result = {name: "exists" for name in wanted if name in existing}
        events_limit = max(BROKER_DEFAULT_MAX_MESSAGE_BYTES, settings.max_event_bytes + 65_536)
        if settings.topic in existing:
            events_limit = (
                await topic_max_message_bytes(admin, settings.topic, settings) or events_limit
            )
        dlq_limit = events_limit + DEAD_LETTER_HEADROOM_BYTES
        if missing:
            new = [
                NewTopic(
                    name,
                    count,
                    replicas,
                    topic_configs=(
                        {"max.message.bytes": str(dlq_limit)} if name == settings.dlq_topic else {}
                    ),
                )
                for name in missing
            ]
            response = await _bounded(admin.create_topics(new), settings)
            for topic, code, message in _topic_errors(response):
                if code == 0:
                    result[topic] = "created"
                elif code == _TOPIC_ALREADY_EXISTS:  # created by someone else meanwhile
                    result[topic] = "exists"
                else:
                    raise BrokerUnavailable(f"cannot create topic {topic}: {message} ({code})")
            await _wait_visible(admin, missing, settings)
        if result.get(settings.dlq_topic) == "exists":
            have = await topic_max_message_bytes(admin, settings.dlq_topic, settings)
            if have is not None and have < dlq_limit:
                log.warning(
                    "the dead-letter topic allows smaller records than the events topic: "
                    "dead letters of big records will be cut; raise its max.message.bytes",
                    topic=settings.dlq_topic,
                    max_message_bytes=have,
                    wanted=dlq_limit,
                )
    finally:
        await close_quietly(admin)
    return result


async def topic_max_message_bytes(admin: Any, topic: str, settings: Settings) -> int | None:
    """The ``max.message.bytes`` in force on ``topic`` (None when the broker did not say)."""
    responses = await _bounded(
        admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
        ),
        settings,
    )
    return max_message_bytes_of(responses, topic)


def max_message_bytes_of(responses: Any, topic: str) -> int | None:
    """``max.message.bytes`` of ``topic`` in DescribeConfigs responses (any version)."""
    for response in responses:
        for resource in getattr(response, "resources", ()):
            error_code, _message, _type, name, entries = resource[:5]
            if name != topic or error_code != 0:
                continue
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    return int(entry[1])
    return None


def _topic_errors(response: Any) -> list[tuple[str, int, str]]:
    """(topic, error code, message) whatever the CreateTopics response version."""
    rows = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and entry[2] else "error"
        rows.append((str(topic), int(code), str(message)))
    return rows


async def _wait_visible(admin: Any, names: list[str], settings: Settings) -> None:
    """Creation is asynchronous in the cluster: wait until every partition has a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_seconds
    while True:
        described = await _bounded(admin.describe_topics(names), settings)
        if len(described) == len(names) and all(_ready(topic) for topic in described):
            return
        if loop.time() > deadline:
            raise BrokerUnavailable(f"topics {', '.join(names)} not ready after creation")
        await asyncio.sleep(0.05)


def _ready(topic: dict[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return (
        topic.get("error_code") == 0
        and bool(partitions)
        and all(p.get("error_code") == 0 and p.get("leader", -1) >= 0 for p in partitions)
    )


async def _bounded(awaitable: Any, settings: Settings) -> Any:
    try:
        return await asyncio.wait_for(awaitable, settings.request_timeout_seconds)
    except TimeoutError:
        raise BrokerUnavailable(
            f"Kafka at {describe_servers(settings)} did not answer within "
            f"{settings.request_timeout_seconds:g} s"
        ) from None
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka error: {error_text(exc)}") from None
