"""``python -m benchmarks e2e``: the daemon against the limits measured in the same run."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.infra import Infra, machine_description
from benchmarks.latency import daemon_settings
from benchmarks.measure import (
    PARTITIONS,
    daemon_run,
    describe_stages,
    median,
    naive_peer,
    offered_load,
    percentile,
    produce,
    raw_consume,
    raw_db_write,
    write_json,
)
from benchmarks.workload import Workload, encode
from service.store.dialects.sqlite import SYNCHRONOUS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--consumers", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-events", type=int, default=2_000)
    parser.add_argument("--latency-rate", type=float, default=1_000.0)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="20,000 events, 1 repeat, short latency runs"
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["full", "normal-may-lose-commits-on-power-loss"],
        default="full",
        help="the daemons' CONSUMERGEN_SQLITE_SYNCHRONOUS (the durable default is full)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a daemon setting by field name (e.g. event_loop=uvloop), repeatable",
    )


def apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.events = min(args.events, 20_000)
        args.consumers = min(args.consumers, 2_000)
        args.repeat = 1
        args.naive_events = min(args.naive_events, 500)
        args.latency_seconds = min(args.latency_seconds, 8.0)


def say(text: str) -> None:
    print(text, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    apply_quick(args)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    infra = Infra().start(postgres="postgres" in dbs)
    infra.daemon_defaults["sqlite_synchronous"] = args.sqlite_synchronous
    try:
        return await _run(args, infra, dbs)
    finally:
        await infra.close_admin()
        infra.stop()


async def _run(args: argparse.Namespace, infra: Infra, dbs: list[str]) -> dict[str, Any]:
    began = time.monotonic()
    workload = Workload(consumers=args.consumers, seed=args.seed)
    records = [encode(workload.next()) for _ in range(args.events)]
    model = workload.belief
    say(f"workload: {args.events} events over {args.consumers} consumers: {workload.tally}")
    topic = await infra.new_topic("events", PARTITIONS)
    produce_rate = await produce(infra.bootstrap, topic, records)
    del records
    say(f"produced at {produce_rate:,.0f} events/s")

    results: dict[str, Any] = {
        "machine": machine_description("postgres" in dbs),
        "events": args.events,
        "consumers": args.consumers,
        "partitions": PARTITIONS,
        "repeat": args.repeat,
        "mix": dict(sorted(workload.tally.items())),
        "naive_events": args.naive_events,
        "latency_rate": args.latency_rate,
        "latency_seconds": args.latency_seconds,
        "daemon_settings": daemon_settings(args.set),
        "produce_rate": produce_rate,
        "sqlite_synchronous": args.sqlite_synchronous,
        "databases": {},
    }
    consume = []
    for _ in range(args.repeat):
        consume.append(await raw_consume(infra.bootstrap, topic, args.events))
        say(f"(a) raw consume: {consume[-1]:,.0f} events/s")
    results["raw_consume"] = consume
    parsed = []
    for _ in range(args.repeat):
        parsed.append(await raw_consume(infra.bootstrap, topic, args.events, parse=True))
        say(f"(a2) raw consume + json.loads: {parsed[-1]:,.0f} events/s")
    results["raw_consume_json"] = parsed

    for db in dbs:
        entry: dict[str, list[Any]] = {
            "raw_db": [],
            "naive": [],
            "daemon": [],
            "daemon_no_outcomes": [],
            "latency": [],
        }
        for r in range(args.repeat):
            url = await infra.fresh_database(db)
            pragma = SYNCHRONOUS[args.sqlite_synchronous]
            entry["raw_db"].append(
                await raw_db_write(url, args.events, 500, sqlite_synchronous=pragma)
            )
            await infra.drop_database(url)
            say(f"[{db} {r + 1}] (b) raw db write: {entry['raw_db'][-1]:,.0f} rows/s")

            url = await infra.fresh_database(db)
            entry["naive"].append(await naive_peer(infra.bootstrap, topic, url, args.naive_events))
            await infra.drop_database(url)
            say(f"[{db} {r + 1}] (c) naive peer: {entry['naive'][-1]:,.0f} events/s")

            for key, outcomes in (("daemon", True), ("daemon_no_outcomes", False)):
                run_ = await daemon_run(
                    infra,
                    topic,
                    db,
                    args.events,
                    model,
                    outcomes=outcomes,
                    label=f"e2e-{db}",
                    extra=daemon_settings(args.set),
                )
                entry[key].append(run_.__dict__ | {"samples": None})
                say(
                    f"[{db} {r + 1}] (d) daemon{'' if outcomes else ' (no outcomes topic)'}: "
                    f"{run_.rate:,.0f} events/s (steady {run_.steady_rate:,.0f}), "
                    f"{run_.seconds:.1f}s, peak RSS {run_.peak_rss_mib:.0f} MiB, "
                    f"CPU {run_.cpu_seconds:.1f}s, verified={run_.verified}"
                )
                say(f"[{db} {r + 1}]     {describe_stages(run_, args.events)}")
                if not run_.verified:
                    raise SystemExit("the daemon's database does not match the model")

            load = await offered_load(
                infra,
                db,
                rate=args.latency_rate,
                seconds=args.latency_seconds,
                seed=1_000 + r,
                consumers=args.consumers,
                progress=say,
                extra=daemon_settings(args.set),
            )
            if not load.verified:
                raise SystemExit("the daemon's database does not match the model")
            entry["latency"].append(
                {
                    "offered": load.rate_offered,
                    "achieved": load.rate_achieved,
                    "events": load.events,
                    "p50": percentile(load.latencies_ms, 50),
                    "p90": percentile(load.latencies_ms, 90),
                    "p99": percentile(load.latencies_ms, 99),
                    "max": max(load.latencies_ms, default=float("nan")),
                    "matched": len(load.latencies_ms),
                    "unmatched": load.unmatched,
                    "peak_rss_mib": load.peak_rss_mib,
                }
            )
            lat = entry["latency"][-1]
            say(
                f"[{db} {r + 1}] latency at {load.rate_achieved:,.0f} events/s: "
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms "
                f"({lat['matched']} matched, {lat['unmatched']} unmatched)"
            )
        results["databases"][db] = entry
    results["seconds"] = time.monotonic() - began
    write_json(args.json, results)
    if not args.no_docs:
        write_docs(results)
    say(summary(results))
    return results


def _med(entry: dict[str, Any], key: str, field: str | None = None) -> float:
    values = entry[key]
    return median([v[field] if field else v for v in values])


def summary(results: dict[str, Any]) -> str:
    a = median(results["raw_consume"])
    a2 = median(results.get("raw_consume_json") or [float("nan")])
    lines = [
        f"| database | (a) raw consume | (a2) + json.loads | (b) raw DB write | (c) naive peer | "
        f"(d) daemon | (d') daemon, no outcomes topic | d/a | d/a2 | d/c | p50 / p99 at "
        f"{results['latency_rate']:,.0f} ev/s | CPU µs/event (d) | peak RSS (d) | DB == model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for db, entry in results["databases"].items():
        b = _med(entry, "raw_db")
        c = _med(entry, "naive")
        d = _med(entry, "daemon", "rate")
        d0 = _med(entry, "daemon_no_outcomes", "rate")
        p50 = _med(entry, "latency", "p50")
        p99 = _med(entry, "latency", "p99")
        rss = _med(entry, "daemon", "peak_rss_mib")
        cpu = median([run["run_cpu_seconds"] / results["events"] * 1e6 for run in entry["daemon"]])
        ok = all(r["verified"] for r in entry["daemon"] + entry["daemon_no_outcomes"])
        name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[db]
        lines.append(
            f"| {name} | {a:,.0f} | {a2:,.0f} | {b:,.0f} | {c:,.0f} | **{d:,.0f}** | {d0:,.0f} | "
            f"**{d / a:.3f}** | **{d / a2:.3f}** | **{d / c:.1f}** | "
            f"{p50:.0f} / **{p99:.0f}** ms | **{cpu:.0f}** | "
            f"{rss:.0f} MiB | "
            f"{'yes' if ok else 'NO'} |"
        )
    return "\n".join(lines)


def stage_table(results: dict[str, Any]) -> str:
    """Per stage, CPU µs per event of the daemon with the outcomes topic (median run)."""
    events = results["events"]
    dbs = list(results["databases"])
    names = [{"sqlite": "SQLite", "postgres": "PostgreSQL"}[db] for db in dbs]
    lines = [
        "| stage (loop CPU µs/event; wall s summed over partitions) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(dbs),
    ]
    runs = {db: results["databases"][db]["daemon"] for db in dbs}

    def cell(db: str, stage: str) -> str:
        cpu = median([run["stages"].get(stage, {}).get("cpu", 0.0) for run in runs[db]])
        wall = median([run["stages"].get(stage, {}).get("wall", 0.0) for run in runs[db]])
        return f"{cpu / events * 1e6:.1f} ({wall:.1f} s)"

    stages = list(next(iter(runs.values()))[0]["stages"]) if dbs else []
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(cell(db, stage) for db in dbs) + " |")

    def rest(db: str) -> str:
        values = [
            (run["loop_cpu_seconds"] - sum(v.get("cpu", 0.0) for v in run["stages"].values()))
            for run in runs[db]
        ]
        return f"{median(values) / events * 1e6:.1f}"

    def threads(db: str) -> str:
        values = [run["run_cpu_seconds"] - run["loop_cpu_seconds"] for run in runs[db]]
        return f"{median(values) / events * 1e6:.1f}"

    def process(db: str) -> str:
        return f"**{median([run['run_cpu_seconds'] for run in runs[db]]) / events * 1e6:.1f}**"

    unowned = " | ".join(rest(db) for db in dbs)
    lines.append(f"| loop thread, no stage (fetcher, sender, committer, logs, GC) | {unowned} |")
    others = " | ".join(threads(db) for db in dbs)
    lines.append(f"| other threads (aiosqlite's: SQLite itself) | {others} |")
    processes = " | ".join(process(db) for db in dbs)
    lines.append(f"| **process CPU during the run** | {processes} |")
    return "\n".join(lines)


def write_docs(results: dict[str, Any]) -> None:
    machine = results["machine"]
    dbs = list(results["databases"])
    names = [{"sqlite": "SQLite", "postgres": "PostgreSQL"}[db] for db in dbs]
    a = median(results["raw_consume"])
    series = {
        "(a) raw consume": [a for _ in dbs],
        "(b) raw DB write": [_med(results["databases"][db], "raw_db") for db in dbs],
        "(c) naive peer": [_med(results["databases"][db], "naive") for db in dbs],
        "(d) daemon": [_med(results["databases"][db], "daemon", "rate") for db in dbs],
        "(d') no outcomes topic": [
            _med(results["databases"][db], "daemon_no_outcomes", "rate") for db in dbs
        ],
    }
    latency = {
        "p50": [_med(results["databases"][db], "latency", "p50") for db in dbs],
        "p99": [_med(results["databases"][db], "latency", "p99") for db in dbs],
    }
    report.bar_chart(
        report.DOCS / "benchmarks.png",
        f"Throughput, {results['events']:,} events (events/s, log scale)",
        names,
        series,
        "events/s",
        log=True,
        second=(
            f"Latency at {results['latency_rate']:,.0f} events/s offered (ms)",
            names,
            latency,
            "ms",
        ),
    )
    mix = ", ".join(f"{k}: {v:,}" for k, v in results["mix"].items())
    body = f"""## End to end (`python -m benchmarks e2e`)

Run of {machine["date"]}: {results["events"]:,} events over {results["consumers"]:,} consumers,
{results["partitions"]} partitions, seeded mix ({mix}), median of {results["repeat"]}
repeat(s); the whole run took {results["seconds"] / 60:.1f} min.

{summary(results)}

Where the daemon's CPU goes (run (d); `consumergen_stage_cpu_seconds_total` and
`consumergen_stage_seconds_total` read from its `/metrics` after the run; a stage that
awaits is charged only its own steps, see `service/daemon/stages.py`; the two thread rows
are differences of `/proc` counters that tick every {1000 / os.sysconf("SC_CLK_TCK"):.0f} ms,
so each is good to about {4e6 / os.sysconf("SC_CLK_TCK") / results["events"]:.1f} µs/event,
and a small negative value is a zero):

{stage_table(results)}

![throughput and latency](benchmarks.png)

- **(a) raw consume**: one aiokafka consumer reads the whole topic and discards it (the
  Kafka-side limit for one Python process).
- **(a2) + json.loads**: the same, with `json.loads` on every value: the least a reader
  that looks at the events at all must do (the issue 13 targets are against this).
- **(b) raw DB write**: the same number of inbox-like rows, 500 per transaction, with the
  fastest plain means (SQLite `executemany` with the daemon's `synchronous`, PostgreSQL
  `COPY`): the database-side limit for the rows the daemon must write at the least (it
  also writes the consumer rows).
- **(c) naive peer**: one message, one `Applier.apply` transaction, one offset commit, on the
  first {results["naive_events"]:,} events (it would take too long on all of them).
- **(d) daemon**: `python -m service run` (one process, outcomes topic on, INFO logs to a
  file), from the assignment of its partitions (its log) until the group's committed
  offsets cover every event (polled every 100 ms); then the database is compared with the
  independent model (`service/testing/model.py`): every consumer's state and every inbox
  row.  (d') is the same without an outcomes topic.  CPU µs/event is the daemon
  process's CPU (all threads, `/proc`) from the assignment to the last commit, over
  the events (start-up excluded).
- **Databases**: PostgreSQL {machine.get("postgresql_settings", "not measured")};
  SQLite {machine["sqlite_settings"]}.
- **Latency**: a fresh daemon fed {results["latency_rate"]:,.0f} events/s for
  {results["latency_seconds"]:.0f} s; per event, the outcome record's timestamp (sent
  right after the database commit) minus the event record's producer timestamp
  (millisecond resolution).  Peak RSS is the daemon's VmHWM.
- Produce rate of the benchmark's own producer (not a limit of the service):
  {results["produce_rate"]:,.0f} events/s.

Machine:

{report.machine_table(machine)}
"""
    report.update_section("e2e", body)
