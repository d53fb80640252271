"""``python -m benchmarks scaling``: 1, 2 and 3 daemon processes in one group, PostgreSQL."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from benchmarks import report
from benchmarks.cpu import machine_busy_seconds, tree_cpu_seconds
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import PARTITIONS, daemon_run, median, produce, raw_consume, write_json
from benchmarks.workload import Workload, encode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--consumers", type=int, default=10_000)
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20,000 events, 1 repeat")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-docs", action="store_true")


def say(text: str) -> None:
    print(text, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.events, args.consumers, args.repeat = min(args.events, 20_000), 2_000, 1
    infra = Infra().start(postgres=True)
    try:
        return await _run(args, infra)
    finally:
        await infra.close_admin()
        infra.stop()


async def _run(args: argparse.Namespace, infra: Infra) -> dict[str, Any]:
    workload = Workload(consumers=args.consumers, seed=args.seed)
    records = [encode(workload.next()) for _ in range(args.events)]
    topic = await infra.new_topic("events", PARTITIONS)
    await produce(infra.bootstrap, topic, records)
    del records
    consume = [await raw_consume(infra.bootstrap, topic, args.events) for _ in range(args.repeat)]
    say(f"(a) raw consume: {median(consume):,.0f} events/s")
    broker_pid = infra.broker.process.pid if infra.broker and infra.broker.process else None
    pg_pid = infra.postgres.process.pid if infra.postgres and infra.postgres.process else None
    rows: list[dict[str, Any]] = []
    for n in [int(p) for p in args.processes.split(",")]:
        runs = []
        for r in range(args.repeat):
            before = (
                time.monotonic(),
                machine_busy_seconds(),
                tree_cpu_seconds(broker_pid),
                tree_cpu_seconds(pg_pid),
            )
            result = await daemon_run(
                infra, topic, "postgres", args.events, workload.belief, outcomes=True,
                processes=n, label=f"scale{n}",
            )  # fmt: skip
            wall = time.monotonic() - before[0]
            cores = os.cpu_count() or 1
            runs.append(
                {
                    "rate": result.rate,
                    "steady_rate": result.steady_rate,
                    "seconds": result.seconds,
                    "peak_rss_mib": result.peak_rss_mib,
                    "verified": result.verified,
                    # share of all cores over the whole run (incl. start and stop)
                    "machine_busy": (machine_busy_seconds() - before[1]) / wall / cores,
                    "daemons_cpu": result.cpu_seconds / wall / cores,
                    "kafka_cpu": (tree_cpu_seconds(broker_pid) - before[2]) / wall / cores,
                    "postgres_cpu": (tree_cpu_seconds(pg_pid) - before[3]) / wall / cores,
                }
            )
            say(
                f"[{n} process(es), {r + 1}] {result.rate:,.0f} events/s "
                f"(steady {result.steady_rate:,.0f}), machine busy "
                f"{runs[-1]['machine_busy']:.0%} (daemons {runs[-1]['daemons_cpu']:.0%}, "
                f"PostgreSQL {runs[-1]['postgres_cpu']:.0%}, Kafka {runs[-1]['kafka_cpu']:.0%}),"
                f" verified={result.verified}"
            )
            if not result.verified:
                raise SystemExit("the database does not match the model")
        rows.append(
            {"processes": n} | {key: median([r[key] for r in runs]) for key in runs[0]}
            | {"verified": all(r["verified"] for r in runs)}
        )  # fmt: skip
    results = {
        "machine": machine_description(True),
        "events": args.events,
        "repeat": args.repeat,
        "raw_consume": median(consume),
        "rows": rows,
    }
    if args.json:
        write_json(__import__("pathlib").Path(args.json), results)
    table = _table(results)
    say(table)
    if not args.no_docs:
        _docs(results, table)
    return results


def _table(results: dict[str, Any]) -> str:
    base = results["rows"][0]["rate"]
    lines = [
        "| daemons | events/s | steady (10-90%) | vs 1 | machine CPU busy | daemons | "
        "PostgreSQL | Kafka | peak RSS (all) | DB == model |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['processes']} | {row['rate']:,.0f} | {row['steady_rate']:,.0f} | "
            f"{row['rate'] / base:.2f}x | {row['machine_busy']:.0%} | {row['daemons_cpu']:.0%} | "
            f"{row['postgres_cpu']:.0%} | {row['kafka_cpu']:.0%} | "
            f"{row['peak_rss_mib']:.0f} MiB | {'yes' if row['verified'] else 'NO'} |"
        )
    return "\n".join(lines)


def _docs(results: dict[str, Any], table: str) -> None:
    machine = results["machine"]
    rows = results["rows"]
    report.bar_chart(
        report.DOCS / "benchmarks-scaling.png",
        "Daemons in one group, PostgreSQL (events/s)",
        [f"{r['processes']} daemon(s)" for r in rows],
        {"events/s": [r["rate"] for r in rows], "steady": [r["steady_rate"] for r in rows]},
        "events/s",
    )
    body = f"""## Scaling (`python -m benchmarks scaling`)

Run of {machine["date"]}: {results["events"]:,} events, {PARTITIONS} partitions, PostgreSQL,
1-3 `python -m service run` processes in one consumer group (outcomes topic on), median of
{results["repeat"]} repeat(s).  Raw consume in the same run: {results["raw_consume"]:,.0f}
events/s.  CPU columns are shares of all {machine["cores"]} cores over the run's wall time
(the daemons' own /proc counters, PostgreSQL's postmaster and backends, the broker's JVM).

{table}

![scaling](benchmarks-scaling.png)

**Why it flattens.**  With one daemon the machine was already
{rows[0]["machine_busy"]:.0%} busy (daemon {rows[0]["daemons_cpu"]:.0%}, PostgreSQL
{rows[0]["postgres_cpu"]:.0%}, Kafka {rows[0]["kafka_cpu"]:.0%} of all cores; the rest is
the benchmark's own poller and whatever else runs on the machine).  Each daemon is one
Python process, so one core at most; on this
{machine["cores"]}-core machine the broker's JVM and PostgreSQL's backends need CPU of their
own for every event (fetch, produce of the outcome record, offset commit; the CAS
statements and the inbox insert).  One daemon already keeps the machine mostly busy, so a
second or third process can only take CPU from the servers it feeds: the work per event
does not shrink, and more processes add group coordination, more connections and more,
smaller batches (each daemon's share of the partitions fills its batches more slowly),
i.e. more transactions and commits per event.  On a machine with more cores (or with
Kafka and PostgreSQL elsewhere) the daemons scale with the partitions they own, up to the
database's write limit, because partitions are independent and CAS plus the inbox make
several daemons safe together.

Machine:

{report.machine_table(machine)}
"""
    report.update_section("scaling", body)
