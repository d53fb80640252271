"""Single-process apply throughput: one-by-one vs batch, SQLite and PostgreSQL, one run.

    python benchmarks/apply_throughput.py [--events 4000] [--batch 500] [--consumers 200]
        [--postgres-url postgresql+asyncpg://...] [--output docs/benchmarks-apply.md]

Without ``--postgres-url`` (or ``CONSUMERGEN_TEST_POSTGRES_URL``) a throwaway PostgreSQL
cluster is started with the project's own launcher.  The workload is the daemon's
common case: unconditional upserts spread over a set of consumers (first event of
each creates it), every event a new id.  Each mode runs on a fresh database.
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
from service.config import load_settings
from service.domain.events import ConsumerEvent, EventType
from service.embedded.postgres import create_database
from service.store.dialects.sqlite import SYNCHRONOUS
from service.store.engine import create_engine
from service.store.migrate import upgrade_engine
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


async def measure(url: str, events: list[ConsumerEvent], batch: int | None) -> float:
    settings = load_settings(database_url=url)
    engine = create_engine(settings)
    try:
        await upgrade_engine(engine)
        applier = Applier(SqlUnitOfWorkFactory(engine), settings)
        started = time.perf_counter()
        if batch is None:
            for event in events:
                await applier.apply(event)
        else:
            for start in range(0, len(events), batch):
                await applier.apply_batch([(e, None) for e in events[start : start + batch]])
        elapsed = time.perf_counter() - started
        assert applier.stats.failed == 0
        return len(events) / elapsed
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, postgres_server: str) -> list[tuple[str, float, float]]:
    rows = []
    for name in ("SQLite", "PostgreSQL"):
        results = []
        for batch in (None, args.batch):
            if name == "SQLite":
                folder = tempfile.mkdtemp(prefix="bench-sqlite-")
                url = f"sqlite+aiosqlite:///{folder}/bench.sqlite3"
            else:
                url = await create_database(postgres_server)
            events = workload(args.events if batch else args.one_by_one_events, args.consumers)
            rate = await measure(url, events, batch)
            print(f"{name:10} {'batch ' + str(batch) if batch else 'one-by-one':>12}: "
                  f"{rate:9.0f} events/s", flush=True)  # fmt: skip
            results.append(rate)
        rows.append((name, results[0], results[1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the batch mode")
    parser.add_argument("--one-by-one-events", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--consumers", type=int, default=500)
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
        f"| database | one-by-one (events/s) | batch of {args.batch} (events/s) | speed-up |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {one:,.0f} | {many:,.0f} | {many / one:.1f}x |" for name, one, many in rows),
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
