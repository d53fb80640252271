"""Group membership alone (``service.daemon.membership``): a worker per assigned
partition over a recording ``WorkerHost`` (``test_partition_worker.FakeHost``), what a
revocation leaves in /readyz and /metrics, and what the shutdown says it abandoned.
The whole daemon's rebalances over the fake broker: test_daemon_rebalance_rules.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.daemon.health import Readiness
from service.daemon.membership import Membership
from service.daemon.pauses import Pauses
from service.daemon.ports import WorkerHost
from service.testing.fake_kafka import FakeBroker, FakeConsumer, fetched_record
from service.testing.model import event_doc
from tests.log_lines import logged
from tests.unit.test_broker_outage import HangingApplier
from tests.unit.test_partition_worker import FakeHost

TP0 = TopicPartition("events", 0)
TP1 = TopicPartition("events", 1)


def _membership(host: FakeHost, readiness: Readiness) -> Membership:
    consumer = FakeConsumer(FakeBroker("events", 2))
    return Membership(
        cast(WorkerHost, host),  # FakeHost's sinks are the memory ones: a WorkerHost
        pauses=Pauses(lambda: cast(AIOKafkaConsumer, consumer)),
        readiness=readiness,
        metrics=host.metrics,
        revoke_grace=1.0,
    )


def _value(host: FakeHost, name: str, **labels: str) -> float | None:
    return host.metrics.registry.get_sample_value(name, labels)


async def test_partitions_revoked_before_the_first_lag_probe_are_released_cleanly() -> None:
    """A rebalance right after an assignment (members joining one after another at a
    start): the probe measured the lag of partition 1, not yet of partition 0.  Both are
    revoked: partition 1's series goes, partition 0 (no series to remove) is released
    all the same, and /readyz and /metrics count no partition."""
    host = FakeHost(HangingApplier())
    readiness = Readiness()
    membership = _membership(host, readiness)
    membership.adopt([TP0, TP1])
    assert readiness.assigned == 2
    host.metrics.lag.labels("events", "1").set(4)
    await membership.release([TP0, TP1])
    assert membership.workers == {}
    assert readiness.assigned == 0
    assert _value(host, "consumergen_assigned_partitions") == 0
    assert _value(host, "consumergen_consumer_lag", topic="events", partition="1") is None


async def test_a_revoked_partition_no_longer_holds_readiness_down() -> None:
    """Both partitions are reported failing (paused by the infrastructure: /readyz 503
    names them).  Partition 0 is revoked: whatever its worker reported on the way out,
    /readyz no longer names it (it is another member's now) and the paused-partitions
    gauge counts partition 1 alone.  (The daemon's own host clears a retrying
    partition's entry when its worker gives up; the membership does not rely on it.)"""
    host = FakeHost(HangingApplier())
    readiness = Readiness(started=True)
    membership = _membership(host, readiness)
    membership.adopt([TP0, TP1])
    readiness.failing.update({"events/0": "database", "events/1": "broker"})
    await membership.release([TP0])
    assert readiness.failing == {"events/1": "broker"}
    assert readiness.verdict()[1]["paused_partitions"] == ["events/1"]
    assert _value(host, "consumergen_paused_partitions") == 1
    await membership.stop_all(1.0)


async def test_the_shutdown_says_how_many_batches_it_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At shutdown partition 0's batch hangs in its transaction, partition 1 is idle:
    after the grace, the log says two partitions stopped and one batch abandoned (its
    events come again: what an operator expects as duplicates)."""
    applier = HangingApplier()
    host = FakeHost(applier)
    membership = _membership(host, Readiness())
    membership.adopt([TP0, TP1])
    consumer_uuid = "00000000-0000-4000-8000-000000000002"
    doc = event_doc(consumer_uuid, project="p", user="u")
    record = fetched_record(TP0, 0, json.dumps(doc).encode(), consumer_uuid.encode())
    membership.workers[TP0].feed([record])
    await asyncio.wait_for(applier.entered.wait(), 10)
    await membership.stop_all(1.0)  # the idle worker stops well within
    assert membership.workers == {}
    [stopping] = [e for e in logged(caplog) if e["event"] == "daemon stopping"]
    assert (stopping["partitions"], stopping["abandoned_batches"]) == (2, 1)
    assert host.commits == []
