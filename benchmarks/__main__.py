"""``python -m benchmarks e2e | latency | timeline | scaling | soak | hot-path |
outcome-wait | backlog | tracing | small-batches`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import asyncio

from benchmarks import (
    backlog,
    e2e,
    hot_path,
    latency,
    outcome_wait,
    scaling,
    small_batches,
    soak,
    timeline,
    tracing_cost,
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    e2e.add_arguments(commands.add_parser("e2e", help="throughput, ratios, latency, RSS"))
    latency.add_arguments(commands.add_parser("latency", help="latency alone at offered loads"))
    timeline.add_arguments(
        commands.add_parser("timeline", help="per-event boundary times next to the floor")
    )
    scaling.add_arguments(commands.add_parser("scaling", help="1, 2, 3 daemons on PostgreSQL"))
    soak.add_arguments(commands.add_parser("soak", help="sustained load: RSS and latency"))
    hot_path.add_arguments(commands.add_parser("hot-path", help="CPU per event, stage by stage"))
    outcome_wait.add_arguments(
        commands.add_parser("outcome-wait", help="request-reply latency, read API req/s")
    )
    backlog.add_arguments(
        commands.add_parser("backlog", help="peak RSS through a backlog made before the start")
    )
    tracing_cost.add_arguments(
        commands.add_parser("tracing", help="daemon CPU per event: tracing off, 100%%, 1%%")
    )
    small_batches.add_arguments(
        commands.add_parser("small-batches", help="daemon CPU per small batch, A/B by tree")
    )
    args = parser.parse_args()
    module = {
        "e2e": e2e,
        "latency": latency,
        "timeline": timeline,
        "scaling": scaling,
        "soak": soak,
        "hot-path": hot_path,
        "outcome-wait": outcome_wait,
        "backlog": backlog,
        "tracing": tracing_cost,
        "small-batches": small_batches,
    }[args.command]
    try:
        asyncio.run(module.run(args))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
