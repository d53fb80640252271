"""What the daemon reports, fast: /readyz and /metrics of the whole daemon over the fakes
(``service.testing.fake_kafka``, ``fake_edges``), no broker.

An operator reads these and nothing else: a partition paused by the database must show
on /readyz (which partition, on what, the error) and in the gauges until it recovers,
and every committed event must be counted once under its outcome and reason.  Read over
HTTP from the daemon's own health server, as a probe or a scraper would.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.daemon.app import Daemon
from service.domain.outcomes import EventSource
from service.store.errors import TransientDatabaseError
from service.testing.fake_edges import (
    FakeApplier,
    daemon_over_fakes,
    fake_edges,
    fake_settings,
    migrated_sqlite,
)
from service.testing.fake_kafka import FakeBroker
from service.testing.model import event_doc
from service.testing.polling import poll

WITHIN = 20.0


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("reports"))


def event(partition: int) -> tuple[bytes, bytes]:
    consumer = str(uuid.uuid4())
    doc = event_doc(consumer, project="p", user="u")
    return json.dumps(doc).encode(), consumer.encode()


def produce_events(broker: FakeBroker, partition: int, count: int) -> None:
    for _ in range(count):
        value, key = event(partition)
        broker.produce(partition, value, key)


async def get(daemon: Daemon, path: str) -> tuple[int, str]:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    status, text = await get(daemon, "/readyz")
    return status, json.loads(text)


async def samples(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics serves: (name, sorted labels) -> value."""
    status, text = await get(daemon, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def log_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The JSON log lines, without their timestamp and logger."""
    found = []
    for line in caplog.text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        found.append({k: v for k, v in event.items() if k not in ("timestamp", "logger")})
    return found


async def started(daemon: Daemon) -> None:
    await poll(lambda: daemon.health is not None and daemon.readiness.started, WITHIN, "started")


# -- a partition paused by the database ------------------------------------------------
async def test_a_partition_paused_by_the_database_shows_on_readyz_and_in_metrics_until_it_recovers(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker("events", 2)
    down = {"database": False}

    async def before_apply(items: Any) -> None:
        if down["database"] and any(source.partition == 0 for _, source in items):
            raise TransientDatabaseError("the database is down for partition 0")

    fakes = fake_edges(broker, FakeApplier(before_apply=before_apply))
    async with daemon_over_fakes(fake_settings(database), fakes, health=True) as daemon:
        await started(daemon)
        await poll(fakes.assigned_everything, WITHIN, "assigned")

        async def ready() -> bool:
            return (await readyz(daemon))[0] == 200

        await poll(ready, WITHIN, "ready")
        status, body = await readyz(daemon)
        assert body == {
            "ready": True,
            "started": True,
            "assigned_partitions": 2,
            "database_ok": True,
            "broker_ok": True,
            "paused_partitions": [],
            "stopping": False,
            "last_error": None,
        }
        before = await samples(daemon)
        assert sample(before, "consumergen_ready") == 1
        assert sample(before, "consumergen_paused_partitions") == 0

        down["database"] = True
        produce_events(broker, 0, 2)
        produce_events(broker, 1, 2)

        async def paused() -> bool:
            return bool((await readyz(daemon))[1]["paused_partitions"] == ["events/0"])

        await poll(paused, WITHIN, "partition 0 reported paused")
        status, body = await readyz(daemon)
        assert status == 503
        assert body["ready"] is False and body["database_ok"] is False
        assert body["broker_ok"] is True and body["stopping"] is False
        assert body["last_error"].startswith(
            "database: TransientDatabaseError: the database is down for partition 0"
        ), body
        assert fakes.current_consumer().paused() == {broker.partitions[0]}
        tp1 = broker.partitions[1]
        await poll(lambda: broker.committed.get(tp1) == 2, WITHIN, "partition 1 flows")
        during = await samples(daemon)
        assert sample(during, "consumergen_ready") == 0
        assert sample(during, "consumergen_paused_partitions") == 1
        assert sample(during, "consumergen_infrastructure_failures_total", kind="database") == 1
        assert sample(during, "consumergen_infrastructure_failures_total", kind="broker") == 0
        assert sample(during, "consumergen_retries_total", step="database") >= 1

        down["database"] = False
        await poll(broker.all_committed, WITHIN, "partition 0 recovered and committed")
        await poll(ready, WITHIN, "ready again")
        status, body = await readyz(daemon)
        assert body["paused_partitions"] == [] and body["last_error"] is None
        assert fakes.current_consumer().paused() == set()
        after = await samples(daemon)
        assert sample(after, "consumergen_ready") == 1
        assert sample(after, "consumergen_paused_partitions") == 0
        assert sample(after, "consumergen_infrastructure_failures_total", kind="database") == 1
    logged = [e for e in log_events(caplog) if e.get("partition") == "events/0"]
    [paused_line] = [e for e in logged if e["event"].startswith("partition paused")]
    assert paused_line == {
        "level": "warning",
        "event": "partition paused: infrastructure failure, retrying with backoff",
        "partition": "events/0",
        "step": "database",
        "error_class": "TransientDatabaseError",
        "error": "the database is down for partition 0",
    }
    [resumed] = [e for e in logged if e["event"] == "partition resumed"]
    assert resumed == {
        "level": "info",
        "event": "partition resumed",
        "partition": "events/0",
        "step": "database",
    }


# -- every committed event counted once, under its outcome and reason --------------------
async def test_every_committed_event_is_counted_once_under_its_outcome_and_reason(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On one partition: plain events, one that took 3 compare-and-swap attempts, one
    that lost every one (failed, dead-lettered), an event sent twice (a duplicate) and
    a record that is not JSON (invalid, dead-lettered).  /metrics counts each event once
    under its outcome and reason, the dead letters by reason, the compare-and-swap
    attempts beyond the first, each record in a batch, each valid event's latency."""
    broker = FakeBroker("events", 1)
    tries = {2: 3, 3: 99}

    def attempts(source: EventSource) -> int:
        return tries.get(source.offset, 1)

    fakes = fake_edges(broker, FakeApplier(attempts=attempts, max_attempts=10))
    async with daemon_over_fakes(fake_settings(database), fakes, health=True) as daemon:
        await started(daemon)
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_events(broker, 0, 4)  # offsets 0-3: 2 took 3 attempts, 3 failed
        again, key = event(0)
        broker.produce(0, again, key)  # 4
        broker.produce(0, again, key)  # 5: a duplicate of 4
        broker.produce(0, b"not json", b"key")  # 6: invalid
        await poll(broker.all_committed, WITHIN, "committed")
        await poll(
            lambda: (
                (daemon.metrics.registry.get_sample_value("consumergen_batch_size_sum") or 0) == 7
            ),
            WITHIN,
            "every batch accounted",
        )
        found = await samples(daemon)
    [invalid] = [letter for letter in fakes.dead_letters.letters if letter.invalid]
    events = "consumergen_events_total"
    assert sample(found, events, outcome="applied", reason="") == 4  # 0, 1, 2, 4
    assert sample(found, events, outcome="failed", reason="cas_retries_exhausted") == 1
    assert sample(found, events, outcome="duplicate", reason="") == 1
    assert sample(found, events, outcome="invalid", reason=invalid.reason) == 1
    counted = sum(v for (name, _), v in found.items() if name == events)
    assert counted == 7, "an event counted twice, or not at all"
    dead = "consumergen_dead_lettered_total"
    assert sample(found, dead, reason="cas_retries_exhausted") == 1
    assert sample(found, dead, reason=invalid.reason) == 1
    assert sum(v for (name, _), v in found.items() if name == dead) == 2
    # 3 attempts: 2 beyond the first; failed after the 10 allowed: 9 beyond the first
    assert sample(found, "consumergen_cas_retries_total") == 2 + 9
    batches = sample(found, "consumergen_batch_size_count")
    assert 1 <= batches <= 7
    assert sample(found, "consumergen_batch_size_sum") == 7
    assert sample(found, "consumergen_batch_duration_seconds_count") == batches
    assert sample(found, "consumergen_event_latency_seconds_count") == 6  # the valid events
    assert sample(found, "consumergen_batches_in_progress") == 0
    # The "batch committed" lines (a partition's batches of a second share one, at the
    # stop at the latest): together every batch and every offset once, in order, and
    # the same outcomes as counted.
    committed = [e for e in log_events(caplog) if e.get("event") == "batch committed"]
    assert sum(e["batches"] for e in committed) == batches
    assert [e["partition"] for e in committed] == ["events/0"] * len(committed)
    spans = [(e["first_offset"], e["last_offset"], e["events"]) for e in committed]
    covered = [o for first, last, _ in spans for o in range(first, last + 1)]
    assert covered == list(range(7)) and all(n == b - a + 1 for a, b, n in spans)
    merged: dict[str, int] = {}
    for entry in committed:
        for outcome, n in entry["outcomes"].items():
            merged[outcome] = merged.get(outcome, 0) + n
        assert isinstance(entry["seconds"], float) and entry["seconds"] == round(
            entry["seconds"], 4
        )
    assert merged == {
        "applied": 4,
        "duplicate": 1,
        "failed:cas_retries_exhausted": 1,
        f"invalid:{invalid.reason}": 1,
    }
    lettered = [e for e in log_events(caplog) if e.get("event") == "dead-lettered"]
    assert sorted((e["level"], e["reason"], e["origin"]) for e in lettered) == sorted(
        [
            ("warning", "cas_retries_exhausted", "events/0@3"),
            ("warning", invalid.reason, "events/0@6"),
        ]
    )
