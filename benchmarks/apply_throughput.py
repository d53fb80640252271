"""Single-process apply throughput: one-by-one vs batch, SQLite and PostgreSQL, one run.

    python benchmarks/apply_throughput.py [--events 4000] [--batch 500] [--consumers 200]
        [--postgres-url postgresql+asyncpg://...] [--output docs/benchmarks-apply.md]

Without ``--postgres-url`` (or ``CONSUMERGEN_TEST_POSTGRES_URL``) a throwaway PostgreSQL
cluster is started with the project's own launcher.  The workload is the daemon's
common case: unconditional upserts spread over a set of consumers (first event of
each creates it), every event a new id.  Each mode runs on a fresh database.  SQLite is
also measured through the daemon's own path there, group commit over its writer thread
(``service.apply.group``, ``service.store.sqlite_writer``), one batch at a time and with
``--partitions`` batches handed in at once; each figure comes with the process CPU per
event (``time.process_time``: the writer threads count).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from service.apply.applier import Applier
from service.apply.group import GroupCommit
from service.config import load_settings
from service.domain.events import ConsumerEvent, EventType
from service.embedded.postgres import create_database
from service.store.dialects.sqlite import SYNCHRONOUS
from service.store.engine import create_engine
from service.store.migrate import upgrade_engine
from service.store.sqlite_writer import SqliteGroupWriter
from service.store.unit_of_work import SqlUnitOfWorkFactory


def workload(events: int, consumers: int) -> list[ConsumerEvent]:
    owners = [str(uuid.uuid4()) for _ in range(consumers)]
    moment = datetime.now(UTC)
    return [
        ConsumerEvent(
            event_id=str(uuid.uuid4()),
            type=EventType.UPSERT,
            consumer_uuid=owners[i % consumers],
            occurred_at=moment,
            project_id=f"project-{i % 7}",
            user_id=f"user-{i % 5}",
        )
        for i in range(events)
    ]


async def measure(
    url: str, events: list[ConsumerEvent], batch: int | None, *, group: int = 0
) -> tuple[float, float]:
    """Events/s and process CPU µs per event.  ``group``: through ``GroupCommit`` with
    that many batches handed in at once (SQLite only)."""
    settings = load_settings(database_url=url)
    engine = create_engine(settings)
    writer = None
    try:
        await upgrade_engine(engine)
        units = SqlUnitOfWorkFactory(engine)
        applier = Applier(units, settings)
        applies: Applier | GroupCommit = applier
        if group:
            writer = SqliteGroupWriter(settings)
            applies = GroupCommit(applier, writer, units.write_turn)
        started, cpu = time.perf_counter(), time.process_time()
        if batch is None:
            for event in events:
                await applier.apply(event)
        else:
            chunks = [
                [(e, None) for e in events[start : start + batch]]
                for start in range(0, len(events), batch)
            ]
            width = max(1, group)
            for first in range(0, len(chunks), width):
                await asyncio.gather(
                    *(applies.apply_batch(c) for c in chunks[first : first + width])
                )
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert applier.stats.failed == 0
        return len(events) / elapsed, cpu / len(events) * 1e6
    finally:
        if writer is not None:
            await writer.close()
        await engine.dispose()


Row = tuple[str, tuple[float, float], tuple[float, float]]


async def run(args: argparse.Namespace, postgres_server: str) -> list[Row]:
    rows: list[Row] = []
    modes: list[tuple[str, int | None, int]] = [
        ("SQLite", None, 0),
        ("SQLite", args.batch, 0),
        ("SQLite group commit, 1 batch at a time", None, 1),
        ("SQLite group commit, 1 batch at a time", args.batch, 1),
        (f"SQLite group commit, {args.partitions} batches at a time", None, args.partitions),
        (f"SQLite group commit, {args.partitions} batches at a time", args.batch, args.partitions),
        ("PostgreSQL", None, 0),
        ("PostgreSQL", args.batch, 0),
    ]
    results: dict[str, list[tuple[float, float]]] = {}
    for name, batch, group in modes:
        if name.startswith("SQLite"):
            folder = tempfile.mkdtemp(prefix="bench-sqlite-")
            url = f"sqlite+aiosqlite:///{folder}/bench.sqlite3"
        else:
            url = await create_database(postgres_server)
        events = workload(args.events if batch else args.one_by_one_events, args.consumers)
        # "one-by-one" through group commit: batches of one event each
        rate, cpu = await measure(url, events, batch if batch or not group else 1, group=group)
        print(f"{name:42} {'batch ' + str(batch) if batch else 'one-by-one':>12}: "
              f"{rate:9.0f} events/s, {cpu:6.0f} µs CPU/event", flush=True)  # fmt: skip
        results.setdefault(name, []).append((rate, cpu))
    for name, (one, many) in results.items():
        rows.append((name, one, many))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the batch mode")
    parser.add_argument("--one-by-one-events", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--consumers", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--postgres-url", default=os.environ.get("CONSUMERGEN_TEST_POSTGRES_URL"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    with ExitStack() as stack:
        server = args.postgres_url
        if not server:
            from service.embedded.postgres import running_cluster

            server = stack.enter_context(running_cluster()).url()
        rows = asyncio.run(run(args, server))

    table = [
        f"| database | one-by-one (events/s, CPU µs/event) | batch of {args.batch} "
        "(events/s, CPU µs/event) | speed-up |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {one[0]:,.0f} ({one[1]:,.0f} µs) | {many[0]:,.0f} ({many[1]:,.0f} µs) "
            f"| {many[0] / one[0]:.1f}x |"
            for name, one, many in rows
        ),
    ]
    print("\n".join(table))
    if args.output:
        postgres = "at --postgres-url" if args.postgres_url else "the embedded test cluster"
        postgres += "" if args.postgres_url else " (fsync off)"
        args.output.write_text(
            "# Apply throughput (single process)\n\n"
            "Measured by `benchmarks/apply_throughput.py`: unconditional upserts over "
            f"{args.consumers} consumers, every event a new id; one-by-one = one transaction "
            f"per event ({args.one_by_one_events} events), batch = `Applier.apply_batch` with "
            f"{args.batch} events per transaction ({args.events} events); fresh database per "
            "mode.  SQLite with the service's PRAGMAs (WAL, synchronous="
            f"{SYNCHRONOUS[load_settings().sqlite_synchronous]}) on local disk; PostgreSQL 15 "
            + postgres
            + ", over TCP on 127.0.0.1.\n\n"
            + "\n".join(table)
            + f"\n\nMachine: {platform.machine()}, {os.cpu_count()} CPUs (shared), "
            f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}.\n"
        )


if __name__ == "__main__":
    main()
