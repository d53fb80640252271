"""``python -m benchmarks backlog``: the daemon works through a backlog produced before it
started, and its peak RSS is recorded, per database and backlog size.

What should bound the daemon's memory is its settings, not the backlog: the consumer
fetches at most ``max_partition_fetch_bytes`` per partition (``service.kafka.clients``),
the fetch loop asks for ``2 x CONSUMERGEN_BATCH_MAX_EVENTS`` records at a time and pauses
a partition whose worker has ``4 x CONSUMERGEN_BATCH_MAX_EVENTS`` queued
(``service.daemon.fetch``/``host``), and each batch is one transaction of at most
``CONSUMERGEN_BATCH_MAX_EVENTS`` events.  Running the same daemon over backlogs of
different sizes shows whether that holds: peak RSS must not grow with the backlog.
Every run is checked against the independent model (nothing lost, nothing doubled).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import PARTITIONS, daemon_run, produce, write_json
from benchmarks.workload import Workload, encode
from service.config import Settings

#: Events generated and produced at a time (the benchmark's own memory stays flat).
CHUNK = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[2_000_000],
        help="backlog size(s); several sizes (e.g. 200000 400000) show whether RSS grows",
    )
    parser.add_argument("--consumers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")


def say(text: str) -> None:
    print(text, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    infra = Infra().start(postgres="postgres" in dbs)
    try:
        return await _run(args, infra, dbs)
    finally:
        await infra.close_admin()
        infra.stop()


async def _backlog(infra: Infra, size: int, consumers: int, seed: int) -> tuple[str, Any, float]:
    """A topic holding ``size`` events of the seeded mix, and the model of them."""
    topic = await infra.new_topic(f"backlog-{size}", PARTITIONS)
    workload = Workload(consumers=consumers, seed=seed)
    began, left = time.perf_counter(), size
    while left:
        chunk = [encode(workload.next()) for _ in range(min(CHUNK, left))]
        await produce(infra.bootstrap, topic, chunk)
        left -= len(chunk)
    return topic, workload.belief, size / (time.perf_counter() - began)


async def _run(args: argparse.Namespace, infra: Infra, dbs: list[str]) -> dict[str, Any]:
    began = time.monotonic()
    defaults = Settings.model_fields
    results: dict[str, Any] = {
        "machine": machine_description("postgres" in dbs),
        "consumers": args.consumers,
        "partitions": PARTITIONS,
        "batch_max_events": defaults["batch_max_events"].default,
        "max_event_bytes": defaults["max_event_bytes"].default,
        "runs": [],
    }
    for size in args.events:
        topic, model, rate = await _backlog(infra, size, args.consumers, args.seed)
        say(f"backlog of {size:,} events produced at {rate:,.0f} events/s")
        for db in dbs:
            done = await daemon_run(
                infra, topic, db, size, model, outcomes=True, label=f"backlog-{db}"
            )
            results["runs"].append(
                {
                    "db": db,
                    "events": size,
                    "peak_rss_mib": done.peak_rss_mib,
                    "rate": done.rate,
                    "seconds": done.seconds,
                    "cpu_seconds": done.cpu_seconds,
                    "verified": done.verified,
                }
            )
            say(
                f"[{db} {size:,}] peak RSS {done.peak_rss_mib:.0f} MiB, {done.rate:,.0f} "
                f"events/s over {done.seconds:.0f} s, CPU {done.cpu_seconds:.0f} s, "
                f"verified={done.verified}"
            )
            if not done.verified:
                raise SystemExit("the daemon's database does not match the model")
    results["seconds"] = time.monotonic() - began
    write_json(args.json, results)
    if not args.no_docs:
        write_docs(results, args)
    say(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    rows = [
        f"| {names[r['db']]} | {r['events']:,} | **{r['peak_rss_mib']:.0f}** | "
        f"{r['rate']:,.0f} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
        f"{'yes' if r['verified'] else 'NO'} |"
        for r in results["runs"]
    ]
    header = (
        "| database | backlog (events) | peak RSS (MiB) | events/s | seconds | CPU s | "
        "matches the model |\n|---|---:|---:|---:|---:|---:|---|"
    )
    return header + "\n" + "\n".join(rows)


def write_docs(results: dict[str, Any], args: argparse.Namespace) -> None:
    machine = results["machine"]
    sizes = " ".join(str(size) for size in args.events)
    body = f"""## Backlog (`python -m benchmarks backlog --events {sizes} --db {args.db}`)

Run of {machine["date"]}: each backlog ({results["consumers"]:,} consumers,
{results["partitions"]} partitions, the seeded mix) is produced in full before the daemon
starts; one daemon (`python -m service run`, outcomes topic on, default settings:
`CONSUMERGEN_BATCH_MAX_EVENTS={results["batch_max_events"]}`, per-partition fetch
{2 * results["max_event_bytes"] // 1_048_576} MiB) then works through it until the group's
committed offsets cover every event, and the database is compared with the independent
model.  Peak RSS is the daemon's VmHWM.  The whole run took {results["seconds"] / 60:.1f} min.

{table(results)}

What bounds the memory is the settings, not the backlog: at most
`max_partition_fetch_bytes` buffered per partition by the consumer, `2 x batch_max_events`
records per fetch, a partition paused at `4 x batch_max_events` queued, one transaction
per batch.  The machine was shared with other work (see the note at the top).

Machine:

{report.machine_table(machine)}
"""
    report.update_section("backlog", body)
