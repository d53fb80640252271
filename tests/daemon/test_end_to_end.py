"""The daemon applies a realistic stream; the database equals an independent model."""

from __future__ import annotations

import json

import pytest

from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import produce_docs, read_all, wait_all_committed
from service.testing.model import Model
from service.testing.workload import expected_state, mixed_stream

pytestmark = [pytest.mark.kafka]


async def test_stream_ends_in_the_model_state(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    stream = mixed_stream(consumers=60, events=1500, seed=7)
    model = expected_state(stream)
    settings = daemon_settings(kafka_bootstrap, database_url, topics, batch_max_events=100)
    await produce_docs(kafka_bootstrap, topics.events, stream[:700])
    async with running_daemon(settings) as daemon:
        await produce_docs(kafka_bootstrap, topics.events, stream[700:])  # while it runs
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=120)
        counted = {
            (s.labels["outcome"], s.labels["reason"]): s.value
            for metric in daemon.metrics.registry.collect()
            if metric.name == "consumergen_events"
            for s in metric.samples
            if s.name.endswith("_total")
        }

    assert await consumer_state(database_url) == model.state()
    recorded = await inbox(database_url)
    expected_inbox = {
        event_id: (outcome.split(":")[0], outcome.split(":")[1] if ":" in outcome else None)
        for event_id, outcome in model.outcomes.items()
    }
    assert recorded == expected_inbox

    # One outcome record per event delivered, keyed by event id, in the order of delivery.
    replay = Model()
    expected_reports: dict[str, list[str]] = {}
    expected_said: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for doc in stream:
        said = replay.report(doc)
        expected_reports.setdefault(doc["event_id"], []).append(said[0])
        expected_said.setdefault(doc["event_id"], []).append(said)
    records = await read_all(kafka_bootstrap, topics.outcomes)
    assert len(records) == len(stream)
    reports: dict[str, list[str]] = {}
    said_by_id: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for record in records:
        body = json.loads(record.value)
        assert record.key.decode() == body["event_id"]
        reports.setdefault(body["event_id"], []).append(body["outcome"])
        said_by_id.setdefault(body["event_id"], []).append(
            (body["outcome"], body["reason"], body.get("original_outcome"))
        )
    assert reports == expected_reports
    # "the original outcome is reported again": each duplicate names the outcome of the
    # event's first processing (and its reason), in the order of delivery.
    assert said_by_id == expected_said
    assert any(s[2] == "rejected" for said in said_by_id.values() for s in said)
    assert any("duplicate" in r for r in reports.values())
    assert counted[("applied", "")] == sum(1 for o in model.outcomes.values() if o == "applied")
    assert await read_all(kafka_bootstrap, topics.dlq) == []
