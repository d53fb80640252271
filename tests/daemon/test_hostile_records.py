"""Issue 11: one hostile record never stops the service.

For each case, against a daemon running in this loop (health endpoints on): the hostile
record goes to one partition, then a valid canary on the SAME partition (its key, the
consumer UUID, hashes there) and one on ANOTHER partition.  The daemon must stay alive,
both canaries be applied within seconds, the hostile record be dead-lettered with the
expected reason and its origin coordinates (or, for an event id reused with other
nanoseconds, be rejected ``event_id_reused``), and ``/readyz`` answer 200 throughout.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state
from service.testing.kafka_io import read_all
from service.testing.model import event_doc
from service.testing.polling import poll
from tests.support.hostile import (
    Raw,
    RawName,
    ReadySampler,
    alive,
    daemon_task,
    header_map,
    kcat_records,
    produce_records,
    readyz,
    uuid_on,
)

pytestmark = [pytest.mark.kafka]

PARTITIONS = 4  # the ``topics`` fixture's events topic
HOSTILE_PARTITION = 1
OTHER_PARTITION = 3
HUGE = "9" * 4301  # one digit past CPython's int-parsing limit (4,300 digits)
#: The default topic's max.message.bytes is 1,048,588: this value fits, its dead letter
#: (value + key + original headers + ~10 error headers) does not, unless cut.
NEAR_MIB = 1_048_300


@dataclass
class Case:
    name: str
    #: consumer uuid (lands on HOSTILE_PARTITION) -> records to send, in order
    build: Callable[[str], list[Raw]]
    #: "dead_letter:<reason>" or "rejected:<reason>"
    expect: str
    #: who writes the hostile records: aiokafka, or librdkafka's kcat (with a codec)
    client: str = "aiokafka"


def _doc_bytes(doc: dict[str, Any], **raw_fields: str) -> bytes:
    """JSON of ``doc`` with some fields replaced by raw JSON text (e.g. a huge number)."""
    text = json.dumps(doc)
    assert text.endswith("}")
    extra = "".join(f', "{name}": {raw}' for name, raw in raw_fields.items())
    return (text[:-1] + extra + "}").encode()


def _huge_expected(consumer: str) -> list[Raw]:
    doc = event_doc(consumer)
    return [Raw(HOSTILE_PARTITION, consumer.encode(), _doc_bytes(doc, expected_generation=HUGE))]


def _huge_unknown_field(consumer: str) -> list[Raw]:
    doc = event_doc(consumer)
    return [Raw(HOSTILE_PARTITION, consumer.encode(), _doc_bytes(doc, x_huge=HUGE))]


def _huge_schema_version(consumer: str) -> list[Raw]:
    doc = event_doc(consumer)
    del doc["schema_version"]
    return [Raw(HOSTILE_PARTITION, consumer.encode(), _doc_bytes(doc, schema_version=HUGE))]


def _no_key(consumer: str) -> list[Raw]:
    return [Raw(HOSTILE_PARTITION, None, json.dumps(event_doc(consumer)).encode())]


def _other_uuid_key(consumer: str) -> list[Raw]:
    other = str(uuid.uuid4()).encode()
    return [Raw(HOSTILE_PARTITION, other, json.dumps(event_doc(consumer)).encode())]


def _upper_case_key(consumer: str) -> list[Raw]:
    doc = event_doc(consumer)
    return [Raw(HOSTILE_PARTITION, consumer.upper().encode(), json.dumps(doc).encode())]


def _nanoseconds(consumer: str) -> list[Raw]:
    first = event_doc(consumer, expected=None, project="p", user="u")
    first["occurred_at"] = "2026-12-02T03:04:05.123456789Z"
    second = dict(first, occurred_at="2026-12-02T03:04:05.123456788Z")
    return [
        Raw(HOSTILE_PARTITION, consumer.encode(), json.dumps(first).encode()),
        Raw(HOSTILE_PARTITION, consumer.encode(), json.dumps(second).encode()),
    ]


def _non_utf8_header_name(consumer: str) -> list[Raw]:
    doc = event_doc(consumer)
    headers: list[tuple[str, bytes | None]] = [
        ("content-type", b"application/json"),
        (RawName(b"\xff\xfebad-\xc3("), b"value"),
    ]
    return [Raw(HOSTILE_PARTITION, consumer.encode(), json.dumps(doc).encode(), headers)]


def _near_mib_not_json(consumer: str) -> list[Raw]:
    value = b"<" + bytes(random.Random(11).choice(b"abcdefgh") for _ in range(NEAR_MIB - 1))
    headers: list[tuple[str, bytes | None]] = [("trace", b"t" * 100)]
    return [Raw(HOSTILE_PARTITION, consumer.encode(), value, headers)]


def _three_mib_not_json(consumer: str) -> list[Raw]:
    """Compressed, it fits the events topic; its dead letter (3 MiB) fits nowhere uncut."""
    return [Raw(HOSTILE_PARTITION, consumer.encode(), b"<" + b"not json " * 349_526)]


CASES = [
    Case("huge_int_expected_generation", _huge_expected, "dead_letter:schema_violation"),
    Case("huge_int_unknown_field", _huge_unknown_field, "dead_letter:schema_violation"),
    # An integer other than 1 is another contract version, however long (as for 401 digits).
    Case("huge_int_schema_version", _huge_schema_version, "dead_letter:unsupported_version"),
    Case("no_key", _no_key, "dead_letter:key_mismatch"),
    Case("key_is_another_uuid", _other_uuid_key, "dead_letter:key_mismatch"),
    Case("upper_case_key", _upper_case_key, "dead_letter:key_mismatch"),
    Case("event_id_reused_nanoseconds", _nanoseconds, "rejected:event_id_reused"),
    Case("non_utf8_header_name", _non_utf8_header_name, "dead_letter:undecodable"),
    Case("near_1mib_not_json", _near_mib_not_json, "dead_letter:not_json"),
    Case(
        "non_utf8_header_name_kcat", _non_utf8_header_name, "dead_letter:undecodable", "kcat:none"
    ),
    Case("gzip_3mib_not_json_kcat", _three_mib_not_json, "dead_letter:too_large", "kcat:gzip"),
]


def _canary(consumer: str, partition: int) -> Raw:
    doc = event_doc(consumer, expected=None, project="canary-p", user="canary-u")
    return Raw(partition, consumer.encode(), json.dumps(doc).encode(), doc=doc)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_one_hostile_record_never_stops_the_service(
    case: Case, kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    rng = random.Random(case.name)
    hostile_consumer = uuid_on(HOSTILE_PARTITION, PARTITIONS, rng)
    same = uuid_on(HOSTILE_PARTITION, PARTITIONS, rng)
    other = uuid_on(OTHER_PARTITION, PARTITIONS, rng)
    hostile = case.build(hostile_consumer)
    canaries = [_canary(same, HOSTILE_PARTITION), _canary(other, OTHER_PARTITION)]

    settings = daemon_settings(kafka_bootstrap, database_url, topics, probe_interval_seconds=0.2)
    async with running_daemon(settings, health=True) as daemon:
        task = daemon_task(daemon)
        await poll(lambda: daemon.health is not None, 10, "health server up")
        assert daemon.health is not None
        port = daemon.health.port

        async def ready() -> bool:
            return (await readyz(port))[0] == 200

        await poll(ready, 30, "/readyz 200 before the hostile record")
        sampler = ReadySampler(port)
        sampler.start()
        try:
            if case.client == "aiokafka":
                await produce_records(kafka_bootstrap, topics.events, [*hostile, *canaries])
            else:
                codec = case.client.split(":")[1]
                await kcat_records(kafka_bootstrap, topics.events, hostile, codec)
                await produce_records(kafka_bootstrap, topics.events, canaries)

            async def canaries_applied() -> bool:
                assert alive(daemon, task), f"the daemon stopped: {daemon.fatal_error!r}"
                state = await consumer_state(database_url)
                return all(
                    state.get(c) == (1, False, "canary-p", "canary-u", None) for c in (same, other)
                )

            took = await poll(canaries_applied, 20, "both canaries applied", every=0.05)
            outcomes = await _wait_outcomes(kafka_bootstrap, topics, hostile)
            letters = await read_all(kafka_bootstrap, topics.dlq)
            assert alive(daemon, task), f"the daemon stopped: {daemon.fatal_error!r}"
        finally:
            await sampler.stop()
        assert sampler.samples, "/readyz was never sampled"
        assert not sampler.not_ready(), f"/readyz not 200 while hostile: {sampler.not_ready()[:3]}"
        print(f"[{case.name}] canaries applied in {took:.2f}s, {len(sampler.samples)} readyz 200")

    target = hostile[-1]
    outcome = outcomes[(target.partition, target.offset)]
    kind, reason = case.expect.split(":")
    if kind == "rejected":
        assert (outcome["outcome"], outcome["reason"]) == ("rejected", reason), outcome
        first = outcomes[(hostile[0].partition, hostile[0].offset)]
        assert first["outcome"] == "applied", first
        assert not letters, "a rejected event is not dead-lettered"
        return
    assert (outcome["outcome"], outcome["reason"]) == ("invalid", reason), outcome
    assert len(letters) == 1, f"{len(letters)} dead letters"
    letter = letters[0]
    headers = header_map(letter.headers)
    assert headers["error.class"] == "invalid"
    assert headers["error.reason"] == reason
    assert headers["origin.topic"] == topics.events
    assert int(headers["origin.partition"]) == target.partition
    assert int(headers["origin.offset"]) == target.offset
    assert "99999999" not in headers["error.message"], "the message quotes the value"
    assert "99999999" not in (outcome.get("message") or "")
    if case.name == "near_1mib_not_json":
        assert target.value is not None
        assert "value" in headers.get("origin.truncated", "").split(","), sorted(headers)
        assert letter.value is not None and len(letter.value) < len(target.value), "not cut"
        assert target.value.startswith(letter.value), "the cut value is not a prefix"
        assert int(headers["origin.value_bytes"]) == len(target.value)
    elif case.name == "gzip_3mib_not_json_kcat":
        assert target.value is not None and letter.value is not None
        assert "value" in headers["origin.truncated"].split(",")
        assert target.value.startswith(letter.value)
        assert int(headers["origin.value_bytes"]) == len(target.value)
    elif not case.name.startswith("non_utf8_header_name"):
        assert letter.value == target.value
        assert letter.key == target.key


async def _wait_outcomes(
    bootstrap: str, topics: Topics, hostile: list[Raw]
) -> dict[tuple[int, int], dict[str, Any]]:
    """Outcome records by source (partition, offset), once every hostile one is there."""
    found: dict[tuple[int, int], dict[str, Any]] = {}

    async def all_there() -> bool:
        found.clear()
        for record in await read_all(bootstrap, topics.outcomes):
            doc = json.loads(record.value)
            if doc["source"]["topic"] == topics.events:
                found[(doc["source"]["partition"], doc["source"]["offset"])] = doc
        return all((r.partition, r.offset) in found for r in hostile)

    await poll(all_there, 20, "an outcome for every hostile record", every=0.2)
    return found
