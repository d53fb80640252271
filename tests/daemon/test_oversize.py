"""One oversized record never stops the service: its dead letter is cut to fit the
dead-letter topic, marked so, and the partition (and every other) goes on.

Each case writes one hostile record to partition 0, then a valid canary on the same
partition and one on another: the daemon stays alive and ready throughout, both
canaries are applied within seconds, and the dead letter says what was cut and how big
the original parts were.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.contract.records import parse_dead_letter_headers
from service.sinks.fit import letter_size
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import inbox
from service.testing.kafka_io import produce_large, read_all
from service.testing.model import event_doc
from service.testing.polling import poll
from tests.daemon.test_health import readyz

pytestmark = [pytest.mark.kafka]

MiB = 1024 * 1024
DEFAULT_LIMIT = 1_048_588  # Kafka's default max.message.bytes
CONSUMER = "00000000-0000-4000-8000-0000000000aa"
CANARY_SAME = "00000000-0000-4000-8000-0000000000b1"
CANARY_OTHER = "00000000-0000-4000-8000-0000000000b2"


@dataclass
class Case:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    events_config: dict[str, str] | None = None
    compression: str | None = None
    cut: str = "value"


def _near_limit_not_json() -> Case:
    """A non-JSON value as big as a default topic takes (the letter's headers tip it over)."""
    key = CONSUMER.encode()
    size = DEFAULT_LIMIT - letter_size(key, b"", []) - 16
    value = b"\x01" * size
    assert letter_size(key, value, []) <= DEFAULT_LIMIT
    return Case(key, value)


CASES: dict[str, Callable[[], Case]] = {
    "non_json_near_1MiB_default_topic": _near_limit_not_json,
    # The consumer decompresses it; our (uncompressed) letter is 3 MiB.
    "gzip_3MiB_value": lambda: Case(CONSUMER.encode(), b"x" * (3 * MiB), compression="gzip"),
    # The events topic allows 4 MiB, the dead-letter topic the default 1 MiB.
    "2MiB_value_4MiB_events_topic": lambda: Case(
        CONSUMER.encode(), b"y" * (2 * MiB), events_config={"max.message.bytes": str(4 * MiB)}
    ),
    "2MiB_key": lambda: Case(
        b"k" * (2 * MiB),
        b"{not json",  # invalid in any case (with or without the key check)
        events_config={"max.message.bytes": str(4 * MiB)},
        cut="value,key",
    ),
    "2MiB_headers": lambda: Case(
        CONSUMER.encode(),
        b"{not json",
        headers=[("trace", b"t"), ("blob-1", b"b" * MiB), ("blob-2", b"c" * MiB)],
        events_config={"max.message.bytes": str(4 * MiB)},
        cut="value,key,headers",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_an_oversized_record_is_dead_lettered_cut_and_the_partition_goes_on(
    name: str,
    kafka_bootstrap: str,
    database_url: str,
    new_topic: Callable[..., Any],
) -> None:
    case = CASES[name]()
    events = await new_topic(partitions=2, prefix="events", config=case.events_config)
    dlq = await new_topic(partitions=1, prefix="dlq")  # the broker default: 1 MiB
    outcomes = await new_topic(partitions=1, prefix="outcomes")
    topics = Topics(events, dlq, outcomes, group=f"group-{name[:20]}-{events[-6:]}")
    settings = daemon_settings(kafka_bootstrap, database_url, topics, probe_interval_seconds=0.5)
    same = event_doc(CANARY_SAME, expected=None, project="p", user="u")
    other = event_doc(CANARY_OTHER, expected=None, project="p", user="u")

    async with running_daemon(settings, health=True) as daemon:
        await poll(
            lambda: daemon.health is not None and daemon.readiness.verdict()[0],
            60,
            "the daemon ready",
        )
        assert daemon.health is not None
        port = daemon.health.port
        statuses: list[int] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                statuses.append((await readyz(port))[0])
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await produce_large(
            kafka_bootstrap,
            events,
            [
                (case.key, case.value, case.headers, 0),
                (CANARY_SAME.encode(), json.dumps(same).encode(), [], 0),
                (CANARY_OTHER.encode(), json.dumps(other).encode(), [], 1),
            ],
            compression_type=case.compression,
        )

        async def canaries_applied() -> bool:
            recorded = await inbox(database_url)
            return all(
                recorded.get(doc["event_id"], ("",))[0] == "applied" for doc in (same, other)
            )

        took = await poll(canaries_applied, 30, "both canaries applied", every=0.2)
        sampling = False
        await sampler
        assert daemon.fatal_error is None, "one record must never stop the daemon"
        assert not daemon.readiness.failing, "no partition may be paused over a record"
        assert statuses and set(statuses) == {200}, f"/readyz went {sorted(set(statuses))}"
        assert took < 30

    letters = await read_all(kafka_bootstrap, dlq)
    assert len(letters) == 1
    letter = letters[0]
    marks = parse_dead_letter_headers(letter.headers)
    assert marks.error_class == "invalid"
    assert (marks.origin_topic, marks.origin_partition, marks.origin_offset) == (events, "0", "0")
    assert marks.origin_truncated == case.cut
    assert marks.origin_value_bytes == str(len(case.value or b""))
    assert marks.origin_key_bytes == str(len(case.key or b""))
    assert marks.origin_headers_bytes == str(sum(len(n) + len(v) for n, v in case.headers))
    assert letter_size(letter.key, letter.value, list(letter.headers)) <= DEFAULT_LIMIT
    if case.value is not None and letter.value:
        assert case.value.startswith(letter.value)
    if "key" in case.cut and case.key is not None and letter.key:
        assert case.key.startswith(letter.key)
    if "headers" in case.cut:
        names = [n for n, _ in letter.headers]
        assert "trace" in names and names.count("blob-2") == 0


async def test_a_letter_refused_all_the_same_is_sent_bare_never_retried(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """The dead-letter topic's limit is read once, at start; lowered afterwards, the
    broker refuses the fitted letter: it is sent once more with only the error headers,
    and the partition goes on (a size refusal is never retried as if the broker were down)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from service.kafka.topics import topic_max_message_bytes

    settings = daemon_settings(kafka_bootstrap, database_url, topics)
    canary = event_doc(CANARY_SAME, expected=None, project="p", user="u")
    value = b"\x02" * (512 * 1024)
    async with running_daemon(settings) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.dead_letters.dead_letter_limit == DEFAULT_LIMIT
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, topics.dlq, {"max.message.bytes": "65536"}
                    )
                ]
            )

            async def lowered() -> bool:
                return await topic_max_message_bytes(admin, topics.dlq, settings) == 65536

            await poll(lowered, 10, "the dead-letter topic's limit lowered")
        finally:
            await admin.close()
        await produce_large(
            kafka_bootstrap,
            topics.events,
            [
                (CONSUMER.encode(), value, [("trace", b"t")], 0),
                (CANARY_SAME.encode(), json.dumps(canary).encode(), [], 0),
            ],
        )

        async def applied() -> bool:
            return (await inbox(database_url)).get(canary["event_id"], ("",))[0] == "applied"

        await poll(applied, 30, "the canary behind the refused letter applied", every=0.2)
        assert daemon.fatal_error is None
        assert not daemon.readiness.failing

    letters = await read_all(kafka_bootstrap, topics.dlq)
    assert len(letters) == 1
    letter = letters[0]
    marks = parse_dead_letter_headers(letter.headers)
    assert marks.origin_truncated == "value,key,headers"
    assert (letter.key, letter.value) == (None, b"")
    assert marks.origin_value_bytes == str(len(value))
    assert "trace" not in {n for n, _ in letter.headers}
    assert (marks.origin_partition, marks.origin_offset) == ("0", "0")
