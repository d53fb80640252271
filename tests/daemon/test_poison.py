"""Every kind of invalid record is dead-lettered with its reason; valid ones are applied."""

from __future__ import annotations

import json
import logging

import pytest

from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_raw, read_all, wait_all_committed
from service.testing.model import Model, event_doc

pytestmark = [pytest.mark.kafka]

MAX_BYTES = 4096


def _bad_records(consumer: str) -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, expected error.reason)"""
    key = consumer.encode()
    wrong_version = event_doc(consumer)
    wrong_version["schema_version"] = 2
    missing = event_doc(consumer)
    del missing["occurred_at"]
    bad_type = event_doc(consumer, consumer_type="lower-case")
    negative = event_doc(consumer, expected=-1)
    oversize = event_doc(consumer, project="p" * 200)
    oversize["producer"] = "x" * MAX_BYTES
    return [
        (key, b"{this is not json", "not_json"),
        (key, b'{"schema_version": 1, "event_id": "\xff\xfe"}', "not_utf8"),
        (key, json.dumps(missing).encode(), "schema_violation"),
        (key, json.dumps(bad_type).encode(), "schema_violation"),
        (key, json.dumps(negative).encode(), "schema_violation"),
        (key, json.dumps(wrong_version).encode(), "unsupported_version"),
        (key, json.dumps(oversize).encode(), "too_large"),
        (key, None, "not_json"),  # a tombstone record: no value at all
    ]


async def test_poison_is_dead_lettered_and_the_rest_applied(
    kafka_bootstrap: str, database_url: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    consumers = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 6)]
    valid = [event_doc(c, expected=None, project="p", user="u") for c in consumers]
    valid += [event_doc(c) for c in consumers]
    reused = dict(valid[0], project_id="other")  # same event id, other payload
    bad = _bad_records(consumers[0])
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, doc in enumerate(valid):
        records.append((doc["consumer_uuid"].encode(), json.dumps(doc).encode()))
        if i < len(bad):
            records.append(bad[i][:2])
    records.extend(b[:2] for b in bad[len(valid) :])
    records.append((reused["consumer_uuid"].encode(), json.dumps(reused).encode()))
    model = Model()
    for doc in valid:
        model.apply(doc)
    assert model.apply(reused) == "rejected:event_id_reused"

    settings = daemon_settings(kafka_bootstrap, database_url, topics, max_event_bytes=MAX_BYTES)
    await produce_raw(kafka_bootstrap, topics.events, records)
    async with running_daemon(settings) as daemon:
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        assert daemon.readiness.verdict()[0], "the daemon must stay alive and ready"

    assert await consumer_state(database_url) == model.state()
    recorded = await inbox(database_url)
    assert recorded[reused["event_id"]] == ("applied", None)  # the original, untouched

    letters = await read_all(kafka_bootstrap, topics.dlq)
    assert len(letters) == len(bad)
    # One WARNING line per dead letter: its reason and where it was read.
    warned = [
        r.msg
        for r in caplog.records
        if r.levelno == logging.WARNING and isinstance(r.msg, dict)
        if r.msg.get("event") == "dead-lettered"
    ]
    assert sorted(w["reason"] for w in warned) == sorted(reason for _, _, reason in bad)
    assert {w["origin"].rsplit("/", 1)[0] for w in warned} == {topics.events}
    assert all(w["consumer"] == consumers[0] for w in warned)  # a pseudonym once rendered
    sent = {(k, v) for k, v, _ in bad}
    reasons_sent = sorted(reason for _, _, reason in bad)
    reasons_got = []
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        assert (letter.key, letter.value) in sent
        assert headers["error.class"] == "invalid"
        assert headers["origin.topic"] == topics.events
        assert int(headers["origin.offset"]) >= 0
        assert int(headers["origin.partition"]) >= 0
        assert headers["error.message"]
        assert headers["failed_at"] and headers["first_failed_at"]
        reasons_got.append(headers["error.reason"])
    assert sorted(reasons_got) == reasons_sent

    outcomes = [json.loads(r.value) for r in await read_all(kafka_bootstrap, topics.outcomes)]
    assert sum(1 for o in outcomes if o["outcome"] == "invalid") == len(bad)
    assert sum(1 for o in outcomes if o["outcome"] == "applied") == len(valid)
    assert any(o["outcome"] == "rejected" and o["reason"] == "event_id_reused" for o in outcomes)
