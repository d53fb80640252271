"""One writer process of the lost-update test (``test_lost_update.py``).

Settings come from ``CONSUMERGEN_*``; argv: consumer UUIDs (comma-separated), calls,
retry attempts, reply partition, project.  It prints ``ready``, waits for a line on
stdin (all writers start together), runs ``producer.update`` ``calls`` times over the
consumers in turn, moving each to its own project, and prints one JSON document: every
event it sent with its outcome, every call's result, and what its reply listener read.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from service.config import load_settings
from service.domain.events import ConsumerEvent
from service.logging.setup import configure_logging
from service.producer import Change, EventOutcome, EventProducer, RetryPolicy
from service.producer.client import EventInput
from service.producer.events import encode


class RecordingProducer(EventProducer):
    """An ``EventProducer`` that notes every event it sends and the outcome it got."""

    sent: list[dict[str, Any]]

    async def send_and_wait(
        self, event: EventInput, *, wait_seconds: float | None = None
    ) -> EventOutcome:
        outcome = await super().send_and_wait(event, wait_seconds=wait_seconds)
        assert isinstance(event, ConsumerEvent)
        self.sent.append(
            {
                "doc": json.loads(encode(event)),
                "outcome": str(outcome.kind),
                "reason": None if outcome.reason is None else str(outcome.reason),
                "partition": outcome.source.partition,
                "offset": outcome.source.offset,
            }
        )
        return outcome


async def main() -> None:
    consumers = sys.argv[1].split(",")
    calls, attempts, partition = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    project = sys.argv[5]
    settings = load_settings()
    configure_logging(settings, warn_missing_key=False)
    policy = RetryPolicy(attempts=attempts, timeout_seconds=240, wait_initial=0.01, wait_max=0.3)
    async with RecordingProducer(settings, reply_partition=partition) as producer:
        producer.sent = []
        await producer.replies()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = []
        for call in range(calls):
            result = await producer.update(
                consumers[call % len(consumers)],
                lambda state: Change(project_id=project),
                policy=policy,
                wait_seconds=60,
            )
            results.append(
                {
                    "attempts": result.attempts,
                    "exhausted": result.exhausted,
                    "outcome": str(result.outcome.kind),
                    "reason": None if result.outcome.reason is None else str(result.outcome.reason),
                }
            )
        counts = (await producer.replies()).counts
        print(
            json.dumps(
                {
                    "sent": producer.sent,
                    "calls": results,
                    "records_read": counts.records_read,
                    "matched": counts.matched,
                    "foreign": counts.foreign,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
