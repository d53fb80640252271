"""``consumergen topics create`` (``ensure_topics``) on the real broker: the dead-letter
topic takes any dead letter of a record the events topic takes, so none is cut."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.config import Settings, load_settings
from service.kafka.topics import (
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    DEAD_LETTER_HEADROOM_BYTES,
    ensure_topics,
    topic_max_message_bytes,
)

pytestmark = [pytest.mark.kafka]

MiB = 1024 * 1024


def _settings(bootstrap: str, events: str, dlq: str, **extra: Any) -> Settings:
    return load_settings(
        bootstrap_servers=bootstrap, topic=events, dlq_topic=dlq, outcomes_topic=None, **extra
    )


async def _limit(settings: Settings, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        return await topic_max_message_bytes(admin, topic, settings)
    finally:
        await admin.close()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("max_event_bytes", [1 * MiB, 3 * MiB])
async def test_new_topics_dead_letter_limit_from_the_settings(
    kafka_bootstrap: str, max_event_bytes: int
) -> None:
    settings = _settings(
        kafka_bootstrap, _name("events"), _name("dlq"), max_event_bytes=max_event_bytes
    )
    assert await ensure_topics(settings, partitions=1) == {
        settings.topic: "created",
        settings.dlq_topic: "created",
        settings.reply_topic: "created",  # always: the default <topic>.replies
    }
    events_limit = await _limit(settings, settings.topic)
    assert events_limit == BROKER_DEFAULT_MAX_MESSAGE_BYTES  # the events topic is not changed
    implied = max(BROKER_DEFAULT_MAX_MESSAGE_BYTES, max_event_bytes + 65_536)
    assert await _limit(settings, settings.dlq_topic) == implied + DEAD_LETTER_HEADROOM_BYTES
    # Idempotent.
    assert set((await ensure_topics(settings, partitions=1)).values()) == {"exists"}


async def test_the_dead_letter_topic_follows_an_existing_events_topic(
    kafka_bootstrap: str, new_topic: Callable[..., Any]
) -> None:
    events = await new_topic(
        partitions=1, prefix="events", config={"max.message.bytes": str(4 * MiB)}
    )
    settings = _settings(kafka_bootstrap, events, _name("dlq"))
    assert await ensure_topics(settings, partitions=1) == {
        events: "exists",
        settings.dlq_topic: "created",
        settings.reply_topic: "created",
    }
    assert await _limit(settings, events) == 4 * MiB
    assert await _limit(settings, settings.dlq_topic) == 4 * MiB + DEAD_LETTER_HEADROOM_BYTES
