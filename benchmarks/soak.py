"""``python -m benchmarks soak``: a sustained offered load below capacity, for minutes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import offered_load, percentile, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1_000.0, help="offered events/s")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--consumers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-docs", action="store_true")


def say(text: str) -> None:
    print(text, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    infra = Infra().start(postgres=args.db == "postgres")
    try:
        say(f"soak: {args.rate:,.0f} events/s for {args.minutes} min on {args.db}")
        load = await offered_load(
            infra,
            args.db,
            rate=args.rate,
            seconds=args.minutes * 60,
            seed=args.seed,
            consumers=args.consumers,
            progress=say,
        )
    finally:
        await infra.close_admin()
        infra.stop()
    minutes = []
    for minute, values in sorted(load.by_minute.items()):
        minutes.append(
            {
                "minute": minute + 1,
                "events": len(values),
                "p50": percentile(values, 50),
                "p90": percentile(values, 90),
                "p99": percentile(values, 99),
                "max": max(values),
            }
        )
    rss = load.rss
    start = rss[0][1]
    warm = next((mib for t, mib in rss if t >= 60), rss[-1][1])
    end = rss[-1][1]
    results = {
        "machine": machine_description(args.db == "postgres"),
        "db": args.db,
        "minutes": args.minutes,
        "offered": load.rate_offered,
        "achieved": load.rate_achieved,
        "events": load.events,
        "unmatched": load.unmatched,
        "verified": load.verified,
        "rss_start": start,
        "rss_warm": warm,
        "rss_end": end,
        "rss_peak": load.peak_rss_mib,
        "growth_from_start": (end - start) / start,
        "growth_from_warm": (end - warm) / warm,
        "rss": rss,
        "minutes_table": minutes,
        "overall": {
            "p50": percentile(load.latencies_ms, 50),
            "p99": percentile(load.latencies_ms, 99),
            "max": max(load.latencies_ms, default=float("nan")),
        },
    }
    write_json(args.json, results)
    table = _table(results)
    say(table)
    if not args.no_docs:
        _docs(results, table)
    return results


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| minute | events | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["minutes_table"]:
        lines.append(
            f"| {row['minute']} | {row['events']:,} | {row['p50']:.0f} | {row['p90']:.0f} | "
            f"{row['p99']:.0f} | {row['max']:.0f} |"
        )
    return "\n".join(lines)


def _docs(results: dict[str, Any], table: str) -> None:
    machine = results["machine"]
    report.line_chart(
        report.DOCS / "benchmarks-soak.png",
        "Daemon RSS (MiB)",
        {"RSS": [(t / 60, mib) for t, mib in results["rss"]]},
        "minutes",
        "MiB",
        second=(
            "Latency per minute (ms)",
            {
                q: [(row["minute"], row[q]) for row in results["minutes_table"]]
                for q in ("p50", "p99")
            },
            "ms",
        ),
    )
    overall = results["overall"]
    body = f"""## Soak (`python -m benchmarks soak --minutes {results["minutes"]:g}`)

Run of {machine["date"]}: one daemon (outcomes topic on, {results["db"]}) fed
{results["offered"]:,.0f} events/s offered ({results["achieved"]:,.0f} achieved) for
{results["minutes"]:g} minutes, {results["events"]:,} events of the seeded mix.  Latency as
in the end-to-end section; {results["unmatched"]} outcome(s) could not be matched to a sent
event; the database ended {"in" if results["verified"] else "**not** in"} the independent
model's state (every consumer and every inbox row).

RSS of the daemon: {results["rss_start"]:.0f} MiB at the start (partitions assigned, no
load yet), {results["rss_warm"]:.0f} MiB after the first minute, {results["rss_end"]:.0f}
MiB at the end (peak {results["rss_peak"]:.0f} MiB): growth **{results["growth_from_start"]:+.1%}**
from the start, **{results["growth_from_warm"]:+.1%}** from the end of the first minute.
Latency over the whole run: p50 {overall["p50"]:.0f} ms, p99 {overall["p99"]:.0f} ms,
max {overall["max"]:.0f} ms.

{table}

![soak](benchmarks-soak.png)

Machine:

{report.machine_table(machine)}
"""
    report.update_section("soak", body)
