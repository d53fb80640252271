"""Outcome records of every partition, one write at a time.

Each partition's worker writes its outcome records one write after another (its order
is the producer's order).  Six workers writing at once through one idempotent producer
queue behind one another inside it: a topic partition takes one batch in flight at a
time, and every write touches most of the outcomes topic's partitions and the reply
partitions, so a write waited for up to one round trip per other worker
(``python -m benchmarks timeline``: "transaction committed → outcome acknowledged").
``CoalescingOutcomeSink`` merges what the workers hand it while a write is in flight
into the next write, as the commit coalescer does for offsets: one request per round
for all partitions, each topic partition one batch.

Order: a worker's records go out in the order it handed them over (it hands over its
next records only after the previous write returned), and records of different workers
do not share an order.  Failures: the merged write's outcome is every caller's (a
``SinkUnavailable`` is retried by each worker with its own records, which then join a
later write; a bug reaches them all); a caller cancelled meanwhile (its partition
revoked) leaves the write to finish for the others, and its records are at-least-once
as every sink's are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.sinks.base import OutcomeMessage, OutcomeSink


class CoalescingOutcomeSink:
    """``OutcomeSink`` over ``inner``: one ``write_outcomes`` of ``inner`` at a time."""

    def __init__(self, inner: OutcomeSink) -> None:
        self.inner = inner
        self._pending: list[tuple[Sequence[OutcomeMessage], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Writes of ``inner`` so far (for tests and curiosity).
        self.writes = 0

    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # a caller cancelled after its write failed must not leave an asyncio ERROR
        # ("exception was never retrieved") behind: the others got the same failure
        done.add_done_callback(_look)
        self._pending.append((messages, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="outcome-writes")
        await done

    async def _write_pending(self) -> None:
        while self._pending:
            taken, self._pending = self._pending, []
            waiting = [(messages, done) for messages, done in taken if not done.done()]
            if not waiting:
                continue
            merged = [message for messages, _ in waiting for message in messages]
            self.writes += 1
            failure: BaseException | None = None
            try:
                await self.inner.write_outcomes(merged)
            except Exception as exc:  # each caller's worker classifies it (failures.py)
                failure = exc
            for _, done in waiting:
                if done.done():  # its worker was cancelled meanwhile
                    continue
                if failure is None:
                    done.set_result(None)
                else:
                    done.set_exception(failure)


def _look(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
