"""The lost-update test: writer *processes* race read-modify-write on the same consumers.

Each call of ``producer.update`` must end applied exactly once, the final generation of
each consumer must equal its applied events (its creation included), and the database
must equal the independent model fed with every event in the order the daemon read them
(the outcome records say where).  With the retry loop off, the same race shows the
conflicts the loop absorbs.  Each writer reads only its own reply partition: counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from log_guard import scan_external

from service.domain.events import EventType
from service.producer import EventProducer, new_event
from service.producer.events import encode
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state
from service.testing.model import Model
from service.testing.polling import poll

pytestmark = [pytest.mark.kafka]
TopicFactory = Callable[..., Awaitable[str]]
WRITER = Path(__file__).with_name("rmw_writer.py")


async def _race(
    kafka_bootstrap: str,
    database_url: str,
    new_topic: TopicFactory,
    *,
    writers: int,
    calls: int,
    attempts: int,
    reply_partitions: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Run the race; (each writer's report, the creations, the consumers)."""
    topics = Topics(
        events=await new_topic(partitions=2, prefix="events"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        outcomes=await new_topic(partitions=1, prefix="outcomes"),
        group=f"group-{uuid.uuid4().hex[:8]}",
    )
    replies = await new_topic(partitions=reply_partitions, prefix="replies")
    settings = daemon_settings(kafka_bootstrap, database_url, topics, reply_topic=replies)
    consumers = [str(uuid.uuid4()) for _ in range(5)]
    async with running_daemon(settings, health=True) as daemon:
        await poll(lambda: daemon.readiness.verdict()[0], 60, "the daemon ready")
        assert daemon.read_api is not None
        created = []
        async with EventProducer(settings) as producer:
            for consumer in consumers:
                event = new_event(EventType.UPSERT, consumer, expected_generation=None)
                outcome = await producer.send_and_wait(event)
                assert outcome.ok
                created.append(
                    {
                        "doc": json.loads(encode(event)),
                        "outcome": "applied",
                        "reason": None,
                        "partition": outcome.source.partition,
                        "offset": outcome.source.offset,
                    }
                )
        env = {
            "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CONSUMERGEN_TOPIC": topics.events,
            "CONSUMERGEN_REPLY_TOPIC": replies,
            "CONSUMERGEN_READ_API_URL": f"http://127.0.0.1:{daemon.read_api.port}",
            "CONSUMERGEN_LOG_REDACTION_KEY": "lost-update-test",
            "CONSUMERGEN_LOG_FORMAT": "json",
            "PATH": "/usr/bin:/bin",
        }
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WRITER),
                ",".join(consumers),
                str(calls),
                str(attempts),
                str(index * reply_partitions // writers),
                f"writer-{index}",
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for index in range(writers)
        ]
        try:
            for proc in procs:  # all connected: then all start at once
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 120)
                assert line.strip() == b"ready", line
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            began = time.monotonic()
            finished = [await asyncio.wait_for(p.communicate(), 280) for p in procs]
            print(f"race of {writers} writers x {calls} calls: {time.monotonic() - began:.1f} s")
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        reports = []
        for proc, (out, err) in zip(procs, finished, strict=True):
            scan_external(err.decode(errors="replace"), "rmw writer stderr")
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports, created, consumers


def _check_against_model(
    reports: list[dict[str, Any]], created: list[dict[str, Any]], database: dict[str, Any]
) -> Counter[str]:
    """Feed the model every event in the daemon's order; it must agree on each outcome
    and on the final state.  Returns the applied events per consumer."""
    events = created + [e for report in reports for e in report["sent"]]
    events.sort(key=lambda e: (e["partition"], e["offset"]))
    assert len({(e["partition"], e["offset"]) for e in events}) == len(events)
    model = Model()
    applied: Counter[str] = Counter()
    for event in events:
        said = event["outcome"] if event["reason"] is None else f"rejected:{event['reason']}"
        assert model.apply(event["doc"]) == said
        if event["outcome"] == "applied":
            applied[event["doc"]["consumer_uuid"]] += 1
    assert model.state() == database
    return applied


async def test_read_modify_write_loses_no_update(
    kafka_bootstrap: str, database_url: str, new_topic: TopicFactory
) -> None:
    writers, calls = 8, 50
    reports, created, consumers = await _race(
        kafka_bootstrap,
        database_url,
        new_topic,
        writers=writers,
        calls=calls,
        attempts=200,
        reply_partitions=writers,
    )
    for report in reports:
        assert len(report["calls"]) == calls
        assert all(c["outcome"] == "applied" and not c["exhausted"] for c in report["calls"])
        # Applied exactly once per call: each call's last event, and none before it.
        kinds = [e["outcome"] for e in report["sent"]]
        assert kinds.count("applied") == calls
        assert sum(c["attempts"] for c in report["calls"]) == len(report["sent"])
        # Its own reply partition: it read the replies to its own events, nothing else.
        assert report["records_read"] == report["matched"] == len(report["sent"])
        assert report["foreign"] == 0
    database = await consumer_state(database_url)
    applied = _check_against_model(reports, created, database)
    for consumer in consumers:
        assert database[consumer][0] == applied[consumer]
    assert sum(applied.values()) == writers * calls + len(consumers)
    conflicts = sum(len(r["sent"]) for r in reports) - writers * calls
    print(f"lost-update race: {conflicts} conflicts absorbed by the retry loop")


async def test_without_retries_the_conflicts_show(
    kafka_bootstrap: str, sqlite_url: str, new_topic: TopicFactory
) -> None:
    """Four writers, one attempt per call, two writers on each reply partition."""
    writers, calls = 4, 25
    reports, created, consumers = await _race(
        kafka_bootstrap,
        sqlite_url,
        new_topic,
        writers=writers,
        calls=calls,
        attempts=1,
        reply_partitions=2,
    )
    rejected = [c for r in reports for c in r["calls"] if c["outcome"] != "applied"]
    assert rejected, "no conflict at all: the race did not happen"
    assert {c["reason"] for c in rejected} <= {"generation_conflict"}
    assert all(c["exhausted"] for c in rejected)
    for index, report in enumerate(reports):
        assert len(report["sent"]) == calls  # no retry: one event per call
        # It reads its partition only: its own replies, and its partner's while it is
        # still reading (a writer done first stops before its partner's last replies).
        partner = reports[index ^ 1]
        assert report["matched"] == calls and report["foreign"] <= len(partner["sent"])
        assert report["records_read"] == report["matched"] + report["foreign"]
    assert any(report["foreign"] for report in reports)  # sharing a partition shows
    database = await consumer_state(sqlite_url)
    applied = _check_against_model(reports, created, database)
    for consumer in consumers:
        assert database[consumer][0] == applied[consumer]
    assert sum(applied.values()) == writers * calls - len(rejected) + len(consumers)
