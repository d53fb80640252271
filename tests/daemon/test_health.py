"""/livez, /readyz and /metrics over real HTTP from an in-process daemon."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.embedded.process import free_port
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.kafka_io import produce_docs, produce_raw, wait_all_committed
from service.testing.polling import poll
from service.testing.workload import mixed_stream
from tests.daemon.test_poison import _bad_records

pytestmark = [pytest.mark.kafka]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, port, path)


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await get(port, "/readyz")
    return status, json.loads(body)


async def test_not_ready_without_a_broker(sqlite_url: str, topics: Topics) -> None:
    settings = daemon_settings(f"127.0.0.1:{free_port()}", sqlite_url, topics)
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.health is not None, 10, "health server up")
        assert daemon.health is not None
        port = daemon.health.port
        assert (await get(port, "/livez"))[0] == 200

        async def refused() -> bool:
            return (await readyz(port))[1]["broker_ok"] is False

        await poll(refused, 10, "the broker reported unreachable")
        status, body = await readyz(port)
        assert status == 503 and not body["ready"] and not body["started"]
        assert body["last_error"].startswith("broker:")
        assert (await get(port, "/nowhere"))[0] == 404


async def test_ready_with_or_without_partitions_and_metrics(
    kafka_bootstrap: str, sqlite_url: str, new_topic: Any
) -> None:
    topics = Topics(
        events=await new_topic(partitions=1, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group="health-group-" + (await new_topic(prefix="g")).split("-")[-1],
    )
    settings = daemon_settings(
        kafka_bootstrap, sqlite_url, topics, max_event_bytes=4096, probe_interval_seconds=0.2
    )
    stream = mixed_stream(consumers=20, events=300, seed=71)
    await produce_docs(kafka_bootstrap, topics.events, stream)
    bad = _bad_records(stream[0]["consumer_uuid"])
    await produce_raw(kafka_bootstrap, topics.events, [r[:2] for r in bad])

    async with running_daemon(settings, health=True) as first:
        await poll(lambda: first.readiness.assigned > 0, 60, "the first daemon assigned")
        assert first.health is not None
        port = first.health.port
        status, body = await readyz(port)
        assert status == 200 and body["ready"] and body["assigned_partitions"] == 1
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)

        lag_key = ("consumergen_consumer_lag", (("partition", "0"), ("topic", topics.events)))

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, text = await get(port, "/metrics")
            assert status == 200
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        async def caught_up() -> bool:
            return (await scrape()).get(lag_key) == 0.0

        await poll(caught_up, 10, "consumer lag 0 for the partition")
        samples = await scrape()

        # A second member of the group gets nothing of a one-partition topic, and is
        # ready all the same (able to work): more replicas than partitions must not stall
        # a rolling update.
        async with running_daemon(settings.model_copy(update={"health_port": 0}), True) as idle:
            await poll(lambda: idle.readiness.started, 60, "the second daemon started")
            await poll(
                lambda: (
                    first.readiness.assigned + idle.readiness.assigned == 1
                    and idle.health is not None
                ),
                60,
                "the partition settled on one daemon",
            )
            assert idle.health is not None
            owner, other = (first, idle) if first.readiness.assigned else (idle, first)
            assert other.health is not None and owner.health is not None
            await poll(lambda: other.readiness.verdict()[0], 30, "the idle member ready")
            status, body = await readyz(other.health.port)
            assert status == 200 and body["ready"] and body["assigned_partitions"] == 0
            await poll(lambda: owner.readiness.verdict()[0], 30, "the owner ready")
            status, body = await readyz(owner.health.port)
            assert status == 200 and body["assigned_partitions"] == 1

    lag_key = ("consumergen_consumer_lag", (("partition", "0"), ("topic", topics.events)))

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("consumergen_events_total", outcome="applied", reason="") > 0
    assert value("consumergen_events_total", outcome="rejected", reason="generation_conflict") > 0
    assert value("consumergen_events_total", outcome="invalid", reason="not_json") == 2
    assert value("consumergen_events_total", outcome="invalid", reason="too_large") == 1
    assert value("consumergen_dead_lettered_total", reason="schema_violation") == 3
    counted = sum(v for (n, _), v in samples.items() if n == "consumergen_events_total")
    assert counted == len(stream) + len(bad)
    assert value("consumergen_batch_size_count") >= 1
    assert value("consumergen_batch_size_bucket", le="+Inf") == value(
        "consumergen_batch_size_count"
    )
    assert value("consumergen_batch_duration_seconds_count") >= 1
    assert ("consumergen_batch_duration_seconds_bucket", (("le", "0.1"),)) in samples
    assert value("consumergen_paused_partitions") == 0
    assert value("consumergen_infrastructure_failures_total", kind="database") == 0
    assert samples[lag_key] == 0.0
