"""What the running daemon tells an operator, fast: the whole daemon over the fakes
(``service.testing.fake_kafka``, ``fake_edges``), no broker.

The lag a partition shows once its offset is committed (not only at the next probe),
the ready gauge that agrees with /readyz, the event loop's heartbeat behind /livez, and
the log line of a reconnection after an outage saying that it is one (not "at start").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.contract.replies import request_headers
from service.daemon.app import Daemon
from service.testing.fake_edges import (
    daemon_over_fakes,
    fake_edges,
    fake_settings,
    migrated_sqlite,
    produce_new_consumers,
)
from service.testing.fake_kafka import FakeBroker, fetched_record
from service.testing.model import event_doc
from service.testing.polling import poll
from tests.log_lines import logged

WITHIN = 20.0


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("running"))


def lag_series(daemon: Daemon) -> dict[str, float]:
    """``consumergen_consumer_lag`` as /metrics serves it: partition -> value."""
    text = generate_latest(daemon.metrics.registry).decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "consumergen_consumer_lag":
            for sample in family.samples:
                found[sample.labels["partition"]] = sample.value
    return found


async def get(daemon: Daemon, path: str) -> tuple[int, dict[str, Any]]:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_a_committed_offset_sets_the_lag_at_once(database: str) -> None:
    """The probes refresh the lag only every probe interval (an hour here, so they do
    not): each committed offset sets its partition's lag (end less committed) itself,
    so /metrics shows a partition caught up as soon as it is, and only for partitions
    that have committed."""
    broker = FakeBroker("events", 2)
    fakes = fake_edges(broker)
    settings = fake_settings(database, probe_interval_seconds=3600.0)
    async with daemon_over_fakes(settings, fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 3)
        await poll(broker.all_committed, WITHIN, "committed")
        await poll(lambda: "0" in lag_series(daemon), 5.0, "a lag series for partition 0")
        assert lag_series(daemon) == {"0": 0.0}


async def test_the_ready_gauge_agrees_with_readyz(database: str) -> None:
    """``consumergen_ready`` is 0 while the broker is away at start (/readyz 503), 1
    once the daemon is ready (/readyz 200)."""
    broker = FakeBroker("events", 1)
    broker.go_down()
    fakes = fake_edges(broker)
    async with daemon_over_fakes(fake_settings(database), fakes, health=True) as daemon:
        await poll(lambda: daemon.health is not None, WITHIN, "listening")
        assert (await get(daemon, "/readyz"))[0] == 503
        assert daemon.metrics.registry.get_sample_value("consumergen_ready") == 0.0
        broker.come_up()

        async def ready() -> bool:
            return (await get(daemon, "/readyz"))[0] == 200

        await poll(ready, WITHIN, "ready")
        assert daemon.metrics.registry.get_sample_value("consumergen_ready") == 1.0


async def test_the_event_loop_keeps_beating_for_livez(database: str) -> None:
    """The heartbeat stamps the loop's progress every quarter of the stale bound (2 s
    here): /livez reports a fresh beat, the bound it is held to, and the beats go on."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    settings = fake_settings(database, liveness_stale_seconds=2.0)
    async with daemon_over_fakes(settings, fakes, health=True) as daemon:
        await poll(lambda: daemon.readiness.last_beat is not None, WITHIN, "a first beat")
        first = daemon.readiness.last_beat
        assert first is not None
        await poll(
            lambda: (daemon.readiness.last_beat or 0) > first, 5.0, "a second beat (0.5 s on)"
        )
        status, body = await get(daemon, "/livez")
        assert status == 200, body
        assert body["stale_after_seconds"] == 2.0
        assert 0 <= body["heartbeat_age_seconds"] <= 2.0


async def test_a_reconnection_after_an_outage_says_it_is_one(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker goes while the daemon runs: the clients are parked and reconnected
    with backoff, each refused attempt logged as "after an outage" (an operator tells
    it from a daemon that never started); once the broker is back the daemon works."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with daemon_over_fakes(fake_settings(database), fakes):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        broker.go_down()

        def retried() -> bool:
            events = [e.get("event") for e in logged(caplog)]
            return "broker unavailable after an outage, retrying" in events

        await poll(retried, WITHIN, "a reconnection refused")
        broker.come_up()
        await poll(fakes.assigned_everything, WITHIN, "rejoined")
        produce_new_consumers(broker, 0, 1)
        await poll(broker.all_committed, WITHIN, "working again")
    events = [e.get("event") for e in logged(caplog)]
    assert "broker unavailable at start, retrying" not in events


async def test_a_reply_asked_to_a_topic_not_allowed_is_counted(database: str) -> None:
    """An event whose reply headers name a topic outside the allowed ones is applied (its
    outcome goes to the outcomes topic) and counted in
    ``consumergen_replies_refused_total``, where an operator sees a producer that is
    misconfigured."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    fakes = fake_edges(broker)
    async with daemon_over_fakes(fake_settings(database), fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        consumer = str(uuid.uuid4())
        value = json.dumps(event_doc(consumer, project="p", user="u")).encode()
        headers = request_headers("someone-elses-topic", 0, b"c-1")
        broker.logs[tp].append(fetched_record(tp, 0, value, consumer.encode(), headers))
        produce_new_consumers(broker, 0, 1)  # wakes the fetch
        await poll(broker.all_committed, WITHIN, "committed")
        refused = daemon.metrics.registry.get_sample_value("consumergen_replies_refused_total")
        assert refused == 1.0
        assert fakes.outcomes.sources() == [(0, 0), (0, 1)]


async def test_a_commit_the_broker_does_not_answer_is_bounded_and_reported(
    database: str,
) -> None:
    """The group coordinator does not answer the offset commit (aiokafka would wait for
    it without end): after the request timeout (0.3 s here) the partition is reported
    paused on the broker in /readyz, and once the coordinator answers the offset is
    committed and the partition no longer reported."""
    broker = FakeBroker("events", 1)
    answering = asyncio.Event()

    async def on_commit(*_: Any) -> None:
        await answering.wait()

    broker.on_commit = on_commit
    fakes = fake_edges(broker)
    settings = fake_settings(database, request_timeout_seconds=0.3)
    async with daemon_over_fakes(settings, fakes) as daemon:
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 1)

        def paused() -> bool:
            return bool(daemon.readiness.verdict()[1]["paused_partitions"] == ["events/0"])

        await poll(paused, WITHIN, "the partition reported paused")
        assert daemon.readiness.failing == {"events/0": "broker"}
        answering.set()
        await poll(broker.all_committed, WITHIN, "committed once the coordinator answers")
        await poll(lambda: not daemon.readiness.failing, WITHIN, "no longer reported")
