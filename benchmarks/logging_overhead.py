"""Log calls per second with and without UUID redaction, on typical service events.

Runs the service's real logging path (structlog -> stdlib -> the root handler's
ProcessorFormatter -> JSON) into an in-memory sink; the only difference between the
two variants is the redaction processor (replaced by a pass-through).

    .venv/bin/python benchmarks/logging_overhead.py [--calls 20000] [--repeats 5]

Prints a Markdown table (pasted into docs/logging.md).
"""

from __future__ import annotations

import argparse
import io
import logging
import platform
import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from service.logging import Redactor, build_formatter, configure_structlog


class PassThrough(Redactor):
    """The 'without redaction' variant: same pipeline, redaction step does nothing."""

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        return dict(event_dict)


def scenarios() -> dict[str, Callable[[], None]]:
    log = structlog.stdlib.get_logger("service.daemon")
    sql = logging.getLogger("sqlalchemy.engine.Engine")
    consumer, event_id, project = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def batch_summary() -> None:
        log.info(
            "batch_applied",
            topic="consumer-events",
            partition=3,
            first_offset=120_000,
            last_offset=120_499,
            events=500,
            applied=497,
            duplicates=2,
            dead_lettered=1,
            duration_ms=12.7,
        )

    def event_with_uuids() -> None:
        log.warning(
            "event_dead_lettered",
            consumer_uuid=str(consumer),
            event_id=str(event_id),
            project_id=project,
            reason="cas_retries_exhausted",
            partition=3,
            offset=120_321,
        )

    def sqlalchemy_parameters() -> None:
        sql.warning("[cached since 1.2s ago] %r", (str(consumer), 41, str(project)))

    return {
        "per-batch summary (no UUID)": batch_summary,
        "event with 3 UUID fields": event_with_uuids,
        "SQLAlchemy line, 2 UUID parameters": sqlalchemy_parameters,
    }


def calls_per_second(
    call: Callable[[], None], sink: io.StringIO, calls: int, repeats: int
) -> float:
    best = float("inf")
    for _ in range(repeats):
        sink.seek(0)
        sink.truncate()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - start)
    return calls / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    configure_structlog()
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    key = b"benchmark-key"
    formatters = {
        "without": build_formatter(PassThrough(key), "json"),
        "with": build_formatter(Redactor(key), "json"),
    }

    print(f"Python {platform.python_version()}, {args.calls} calls x best of {args.repeats}\n")
    print("| event | without redaction (calls/s) | with redaction (calls/s) | overhead |")
    print("|---|---:|---:|---:|")
    for name, call in scenarios().items():
        rates = {}
        for variant, formatter in formatters.items():
            handler.setFormatter(formatter)
            call()  # warm caches (logger binding, pseudonym cache)
            rates[variant] = calls_per_second(call, sink, args.calls, args.repeats)
        overhead = rates["without"] / rates["with"] - 1
        print(f"| {name} | {rates['without']:,.0f} | {rates['with']:,.0f} | {overhead:+.1%} |")


if __name__ == "__main__":
    main()
