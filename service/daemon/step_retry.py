"""A partition's step run until it succeeds: paused while the infrastructure fails.

The three stages of a partition worker (``service.daemon.worker``: the database, the
sinks, the offset commit) each retry their own step; while any of them fails on the
infrastructure the partition is paused and reported not ready, and it is resumed only
once none of them fails any more.

The first attempt runs bare: at light load every batch is small, so a step's retry
machinery (stamina's retry context, its tenacity state, the retry scope's context
variable) entered for every step of every batch was a per-batch cost paid for nothing
(issue 22's profile).  Only a first infrastructure failure enters it, and that failure
is handed to stamina as the outcome of its first attempt: stamina counts it, calls its
hooks and backs off before the second attempt exactly as if it had made the first one
itself, so what happens on failure (the hooks, the counters, the waits, the attempt
numbers) is what it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import stamina
from aiokafka import TopicPartition

from service.daemon.retries import retry_scope
from service.failures import is_infrastructure

if TYPE_CHECKING:
    from service.daemon.ports import WorkerHost

T = TypeVar("T")


class StepRetry:
    """``run(what, operation)`` for the steps of one partition (see the module docstring)."""

    def __init__(self, host: WorkerHost, tp: TopicPartition) -> None:
        self.host = host
        self.tp = tp
        #: Steps of this partition failing on the infrastructure right now.
        self.failing = 0

    async def run(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it succeeds: pause the partition and report not-ready
        while it fails with an infrastructure failure (``failures.is_infrastructure``),
        resume once it works.  Never gives up on its own; only a stop or a revocation
        (which cancel this task) ends it.  Any other failure propagates at once: a bug,
        or a record refusal the step should have handled itself."""
        try:
            return await operation()
        except Exception as exc:
            if not is_infrastructure(exc):
                raise  # not retried (stamina's predicate says the same)
            failure = exc
        return await self._until_it_works(what, operation, failure)

    async def _until_it_works(
        self, what: str, operation: Callable[[], Awaitable[T]], failure: Exception
    ) -> T:
        """The first attempt failed on the infrastructure with ``failure``: report it,
        then retry with stamina, whose first attempt is that failure (module docstring)."""
        self.failing += 1
        self.host.infrastructure_failed(self.tp, what, failure)
        first: Exception | None = failure
        resumed = True
        config = self.host.config
        try:
            with retry_scope(self.host.metrics, what):
                async for attempt in stamina.retry_context(
                    on=is_infrastructure,
                    attempts=None,
                    timeout=None,
                    wait_initial=config.retry_wait_initial,
                    wait_max=config.retry_wait_max,
                ):
                    with attempt:
                        if first is not None:
                            replayed, first = first, None
                            raise replayed  # the attempt made before: counted, backed off
                        return await operation()
        except asyncio.CancelledError:
            resumed = False  # abandoned at a revocation or a stop, not recovered
            raise
        finally:
            # Several steps of a partition may fail at once (the database step of
            # one batch, a sink of an earlier one, the offset commit): the partition
            # is resumed only once none of them is failing any more.
            self.failing -= 1
            if not self.failing:
                self.host.infrastructure_recovered(self.tp, what, resumed=resumed)
        raise AssertionError("unreachable: retries are unbounded")  # pragma: no cover
