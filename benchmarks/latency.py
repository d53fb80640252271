"""``python -m benchmarks latency``: latency alone at one offered load, for tuning.

The e2e benchmark measures latency at one load after its throughput runs; this runs only
the offered-load part (a fresh daemon, outcomes topic on, fed ``--rate`` events/s for
``--seconds`` by applications sending one record per request and by a batching producer,
``--producer``), ``--repeat`` times, optionally with daemon settings (``--set
batch_max_events=100``) so that one setting at a time can be compared on one broker.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.drivers import MODES
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import offered_load, percentile, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rate", type=float, action="append", default=None)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=2_000)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a daemon setting by field name (CONSUMERGEN_ upper-cased), repeatable",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SETTING=VALUE[,SETTING=VALUE]",
        help="also run with these settings on top of --set (repeatable; one broker for all)",
    )
    parser.add_argument(
        "--producer",
        choices=[*MODES, "both"],
        default="both",
        help="one record per request (applications sending one event at a time), "
        "batching (a bulk loader), or both (benchmarks/drivers.py)",
    )
    parser.add_argument("--json", default=None, help="also write raw results here")


def daemon_settings(pairs: list[str]) -> dict[str, object]:
    settings: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set wants SETTING=VALUE, got {pair!r}")
        settings[name] = value
    return settings


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rates = args.rate or [1_000.0]
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    base = daemon_settings(args.set)
    variants = [base] + [base | daemon_settings(v.split(",")) for v in args.variant]
    producers = list(MODES) if args.producer == "both" else [args.producer]
    infra = Infra().start(postgres="postgres" in dbs)
    results: dict[str, Any] = {
        "machine": machine_description("postgres" in dbs),
        "settings": variants,
        "runs": [],
    }
    try:
        for db, rate, r, extra, mode in (
            (db, rate, r, extra, mode)
            for db in dbs
            for rate in rates
            for r in range(args.repeat)
            for extra in variants  # interleaved: drift in the machine's load hits all alike
            for mode in producers
        ):
            began = time.monotonic()
            load = await offered_load(
                infra,
                db,
                rate=rate,
                seconds=args.seconds,
                seed=2_000 + r,
                consumers=args.consumers,
                extra=extra,
                producer=mode,
            )
            row = {
                "db": db,
                "producer": mode,
                "settings": extra,
                "offered": rate,
                "achieved": load.rate_achieved,
                "p50": percentile(load.latencies_ms, 50),
                "p90": percentile(load.latencies_ms, 90),
                "p99": percentile(load.latencies_ms, 99),
                "max": max(load.latencies_ms, default=float("nan")),
                "matched": len(load.latencies_ms),
                "unmatched": load.unmatched,
                "verified": load.verified,
                "seconds": time.monotonic() - began,
            }
            results["runs"].append(row)
            if not load.verified:
                raise SystemExit("the daemon's database does not match the model")
            print(
                f"[{db} {rate:,.0f}/s {mode} #{r + 1}] achieved {row['achieved']:,.0f}/s: "
                f"p50 {row['p50']:.0f} ms, p90 {row['p90']:.0f} ms, "
                f"p99 {row['p99']:.0f} ms, max {row['max']:.0f} ms "
                f"({row['matched']} matched, {row['unmatched']} unmatched)"
                + (f" with {extra}" if extra else ""),
                flush=True,
            )
    finally:
        await infra.close_admin()
        infra.stop()
    if args.json:
        from pathlib import Path

        write_json(Path(args.json), results)
    return results
