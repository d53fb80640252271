"""Offset commits, coalesced: one OffsetCommit request at a time for every partition.

Workers of every partition commit after each batch; their offsets are merged into one
request at a time (one round trip for all partitions that finished meanwhile, instead
of a queue of them).  Each worker awaits the outcome of the request that carried its
offset: True (committed), False (the group moved on: harmless, the next owner re-reads
from the last durable commit and the inbox turns what it re-reads into duplicates), or
the request's error, which the worker classifies (``service.failures``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

log = structlog.get_logger(__name__)

#: Commit errors that only mean "the group moved on": the next owner re-reads from the
#: last durable commit and the inbox turns what it re-reads into duplicates.
HARMLESS_COMMIT_ERRORS = (
    CommitFailedError,
    IllegalGenerationError,
    # "Partition ... is not assigned": a worker's offset arrived after its revocation.
    # (Retried for ever as "any KafkaError" before failures were classified; it is
    # neither the infrastructure's fault nor a bug, but a rebalance.)
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

CommitOffsets = Callable[[dict[TopicPartition, int]], Awaitable[object]]


class CommitCoalescer:
    """``await commit(tp, offset)`` from any worker; one request in flight at a time.

    ``commit_offsets`` sends one request (the consumer's ``commit``); it is bounded by
    ``timeout``: aiokafka waits for a coordinator without end, and a commit that cannot
    be made must surface (as TimeoutError, an infrastructure failure) so that the
    partition is reported paused.  ``committed(tp, offset)`` is told of every offset
    committed (the daemon updates the lag).
    """

    def __init__(
        self,
        commit_offsets: CommitOffsets,
        *,
        timeout: float,
        committed: Callable[[TopicPartition, int], None] | None = None,
    ) -> None:
        self._commit_offsets = commit_offsets
        self._timeout = timeout
        self._committed = committed
        #: Offsets waiting for the committer task, with the future each worker awaits.
        self._pending: dict[TopicPartition, tuple[int, asyncio.Future[bool]]] = {}
        self._committer: asyncio.Task[None] | None = None
        #: Requests sent so far (for tests and curiosity).
        self.requests = 0

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        """Commit ``offset`` for ``tp``; False when the group moved on (harmless)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[tp] = (offset, done)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="committer")
        return await done

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            offsets = {tp: offset for tp, (offset, _) in batch.items()}
            outcome: bool | BaseException
            self.requests += 1
            try:
                # (``asyncio.timeout``, not ``wait_for``: the same bound without a task
                # and its hand-offs for every request, issue 22)
                async with asyncio.timeout(self._timeout):
                    await self._commit_offsets(offsets)
                outcome = True
            except HARMLESS_COMMIT_ERRORS as exc:
                log.info("commit refused by a rebalance; redelivery is absorbed", error=str(exc))
                outcome = False
            except Exception as exc:  # each waiter's worker classifies it (failures.py)
                outcome = exc
            for tp, (offset, done) in batch.items():
                if done.done():  # the waiting worker was cancelled (revoked, stopping)
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                    continue
                done.set_result(outcome)
                if outcome and self._committed is not None:
                    self._committed(tp, offset)
