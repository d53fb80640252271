"""CPU per event of each hot-path stage, in-process, no Kafka: ``python -m benchmarks hot-path``.

Every stage runs over the same seeded workload (``service.testing.workload.mixed_stream``:
creates, updates, stale preconditions, deletes, redeliveries) encoded as the Kafka record
values a producer sends, plus a share of invalid records for the failure path. Each
stage is timed with the process CPU clock (``time.process_time``: aiosqlite's worker
thread counts, as it does in the daemon's CPU figure), best of ``--repeats`` passes:

* decode+validate: ``admit`` (bytes to a validated ``ConsumerEvent``);
* invalid decode: ``admit`` of records it refuses (the failure path);
* hash: ``ConsumerEvent.payload_hash``;
* plan: ``domain.rules.plan`` over a batch, given the rows the store returned;
* SQL read / SQL write / commit: one unit of work per batch, on SQLite (WAL, on local
  disk) and on an embedded PostgreSQL (the launcher's test settings: fsync off);
* outcome encode: ``outcome_record`` for every outcome;
* dead-letter encode: ``invalid_event_headers`` for every invalid record.

Why in-process: the daemon's figure (``python -m benchmarks e2e``) mixes all of these
with the Kafka client and the pipeline's waiting; this one says which stage a change
moved. The machine is shared: absolute figures move between runs; compare stages
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.report import update_section
from service.apply.admission import admit
from service.config import load_settings
from service.contract.decode import InvalidEvent
from service.contract.records import invalid_event_headers, outcome_record
from service.domain.consumer import Owners
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource
from service.domain.rules import Decision, plan, validate
from service.store.dialects.sqlite import SYNCHRONOUS
from service.store.engine import create_engine
from service.store.migrate import upgrade_engine
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.testing.workload import mixed_stream

SECTION = "hot-path"
TOPIC = "consumer-events"


@dataclass
class Stages:
    """Best CPU seconds per stage, over the passes, and how many items each counted."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float, items: int) -> None:
        self.seconds.setdefault(name, []).append(seconds)
        self.items[name] = items

    def micros(self, name: str) -> tuple[float, float]:
        """(best, spread) in µs per item: spread is max - min over the passes."""
        runs = [s * 1e6 / self.items[name] for s in self.seconds[name]]
        return min(runs), max(runs) - min(runs)


def records(events: int, invalid_share: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(valid, invalid) records as (key, value) pairs, in stream order."""
    docs = mixed_stream(consumers=max(10, events // 40), events=events, seed=seed)
    rng = random.Random(seed)
    valid = [(d["consumer_uuid"].encode(), json.dumps(d).encode()) for d in docs]
    broken = []
    for doc in rng.sample(docs, int(len(docs) * invalid_share)):
        bad = dict(doc)
        match rng.randrange(4):
            case 0:
                bad["colour"] = "blue"  # unknown field
            case 1:
                bad["consumer_uuid"] = "not-a-uuid"
            case 2:
                bad["expected_generation"] = -1
            case _:
                bad["occurred_at"] = "yesterday"
        broken.append((doc["consumer_uuid"].encode(), json.dumps(bad).encode()))
    return valid, broken


def timed(function: Callable[[], object]) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def in_memory_stages(
    stages: Stages, valid: Sequence[Any], invalid: Sequence[Any], max_bytes: int
) -> list[ConsumerEvent]:
    events: list[ConsumerEvent] = []

    def decode() -> None:
        events.extend(admit(key, value, max_bytes) for key, value in valid)

    stages.add("decode+validate", timed(decode), len(valid))
    errors: list[InvalidEvent] = []

    def refuse() -> None:
        for key, value in invalid:
            try:
                admit(key, value, max_bytes)
            except InvalidEvent as exc:
                errors.append(exc)

    stages.add("invalid decode", timed(refuse), len(invalid))
    stages.add("hash", timed(lambda: [e.payload_hash() for e in events]), len(events))
    moment = datetime.now(UTC)

    def letters() -> None:
        for offset, error in enumerate(errors):
            invalid_event_headers(
                error,
                original_headers=[("content-type", b"application/json")],
                origin_topic=TOPIC,
                origin_partition=3,
                origin_offset=offset,
                failed_at=moment,
            )

    stages.add("dead-letter encode", timed(letters), len(errors))
    return events


def outcome_stage(stages: Stages, settled: Sequence[tuple[ConsumerEvent, Decision]]) -> None:
    moment = datetime.now(UTC)

    def encode() -> None:
        for offset, (event, decision) in enumerate(settled):
            outcome_record(
                event_id=event.event_id,
                consumer_uuid=event.consumer_uuid,
                outcome=decision.kind,
                reason=decision.reason,
                generation_after=decision.generation_after,
                original_outcome=decision.original,
                source_topic=TOPIC,
                source_partition=3,
                source_offset=offset,
                processed_at=moment,
            )

    stages.add("outcome encode", timed(encode), len(settled))


async def store_stages(
    stages: Stages, label: str, url: str, events: list[ConsumerEvent], batch: int
) -> list[tuple[ConsumerEvent, Decision]]:
    """One pass over a fresh database: the applier's unit of work, stage by stage."""
    settings = load_settings(database_url=url)
    engine = create_engine(settings)
    settled: list[tuple[ConsumerEvent, Decision]] = []
    spent = {"plan": 0.0, "SQL read": 0.0, "SQL write": 0.0, "commit": 0.0}
    try:
        await upgrade_engine(engine)
        units = SqlUnitOfWorkFactory(engine)
        placeholders = Owners(settings.incomplete_project_id, settings.incomplete_user_id)
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            for event in chunk:
                validate(event)
            hashes = [e.payload_hash() for e in chunk]
            sources = [EventSource(TOPIC, 3, start + i) for i in range(len(chunk))]
            clock = time.process_time()
            async with units.begin() as unit:
                inbox = await unit.load_inbox(e.event_id for e in chunk)
                consumers = await unit.load_consumers(e.consumer_uuid for e in chunk)
                read = time.process_time()
                result = plan(list(zip(chunk, hashes, strict=True)), consumers, inbox, placeholders)
                planned = time.process_time()
                now = datetime.now(UTC)
                await unit.write_consumers(result.writes, now)
                rows = [
                    (
                        result.decisions[i].inbox,
                        result.decisions[i].record(
                            chunk[i], hashes[i], attempts=1, source=sources[i]
                        ),
                    )
                    for i in result.recorded
                ]
                await unit.write_inbox(rows, now)
                written = time.process_time()
            committed = time.process_time()
            spent["SQL read"] += read - clock
            spent["plan"] += planned - read
            spent["SQL write"] += written - planned
            spent["commit"] += committed - written
            settled.extend(zip(chunk, result.decisions, strict=True))
    finally:
        await engine.dispose()
    for name, seconds in spent.items():
        stages.add(f"{name} ({label})" if name != "plan" else "plan", seconds, len(events))
    return settled


async def run(args: argparse.Namespace) -> None:
    valid, invalid = records(args.events, args.invalid_share, args.seed)
    max_bytes = load_settings().max_event_bytes
    stages = Stages()
    databases = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    with ExitStack() as stack:
        server = None
        if "postgresql" in databases:
            from service.embedded.postgres import create_database, running_cluster

            server = stack.enter_context(running_cluster()).url()
        for _ in range(args.repeats):
            events = in_memory_stages(stages, valid, invalid, max_bytes)
            settled: list[tuple[ConsumerEvent, Decision]] = []
            for db in databases:
                if db == "sqlite":
                    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="hot-"))
                    url = f"sqlite+aiosqlite:///{folder}/hot.sqlite3"
                else:
                    assert server is not None
                    url = await create_database(server, prefix="hot")
                settled = await store_stages(stages, db, url, events, args.batch)
            outcome_stage(stages, settled)
    rows = []
    for name in stages.seconds:
        best, spread = stages.micros(name)
        rows.append((name, best, spread, stages.items[name]))
        print(
            f"{name:24} {best:8.1f} µs/item  (spread {spread:.1f} over {args.repeats}"
            f" passes, {stages.items[name]} items)"
        )
    if not args.no_docs:
        update_section(SECTION, _markdown(args, rows))


def _markdown(args: argparse.Namespace, rows: list[tuple[str, float, float, int]]) -> str:
    table = "\n".join(
        f"| {name} | {best:.1f} | {spread:.1f} | {items:,} |" for name, best, spread, items in rows
    )
    synchronous = SYNCHRONOUS[load_settings().sqlite_synchronous]
    command = (
        f"python -m benchmarks hot-path --events {args.events} --batch {args.batch}"
        f" --repeats {args.repeats} --db {args.db}"
    )
    return f"""## Hot path, stage by stage (in-process)

`{command}`,
{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} with {os.cpu_count()} CPUs shared with
other work, Python {platform.python_version()}.  Process CPU µs per item (best of
{args.repeats} passes; spread = worst - best), over the seeded mixed workload
({args.invalid_share:.0%} of it again as invalid records).  SQL stages: one unit of work
per batch of {args.batch} on a fresh database; SQLite with the service's PRAGMAs (WAL,
synchronous={synchronous}) on local disk, PostgreSQL the embedded launcher's test cluster
(fsync off): its commit figure is not a durable one.  No Kafka: see the end-to-end
section for the daemon.

| stage | µs per item | spread | items |
|---|---:|---:|---:|
{table}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--invalid-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
