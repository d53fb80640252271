"""The fetch loop: records from the consumer to each partition's worker.

Fetching happens in one loop; each assigned partition has its own worker, so
partitions progress concurrently while each stays strictly in offset order.  A
partition whose worker has too much queued is paused at the consumer (backpressure),
so that memory stays bounded and nothing is fetched in vain.

Records of a fetch during which the group changed are handed out only where they are
still current (``_still_current``): a partition revoked meanwhile is another member's
now, and one revoked *and assigned again* was rewound to its committed offset, so
its records come again; handing out the stale copy first would let its worker commit
past records it has not processed yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from stamina.instrumentation import RetryDetails

from service.config import Settings
from service.daemon.membership import Membership
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.retries import retry_scope, retry_until_stopped
from service.daemon.stalls import StallWatch
from service.failures import is_infrastructure

log = structlog.get_logger(__name__)

Fetched = dict[TopicPartition, list[ConsumerRecord]]


async def fetch_loop(
    settings: Settings,
    *,
    consumer: Callable[[], AIOKafkaConsumer],
    membership: Membership,
    pauses: Pauses,
    high_water: int,
    metrics: DaemonMetrics,
    stop: asyncio.Event,
    fatal: Callable[[BaseException], None],
    online: asyncio.Event,
    parked: asyncio.Event | None = None,
    stalls: StallWatch | None = None,
) -> None:
    """Fetch and hand out until ``stop``; a fetch error that is not the infrastructure's
    (records aiokafka cannot decode arrive as ``UndecodableRecord`` values, so what is
    still raised is the broker's "not now" or a bug) stops the daemon (``fatal``).
    Fetching waits while ``online`` is clear (``service.daemon.outage``), and a fetch
    in flight when the clients are ``parked`` is given up (``_Waits``, and
    ``_unless_parked`` in the retry's attempts).  Each poll is
    told to ``stalls`` (a fetch loop that stops polling is a stall: ``daemon.stalls``)."""

    def polled() -> None:
        if stalls is not None:
            stalls.polled(time.monotonic())

    async def fetch(
        give_way: Callable[[Awaitable[Fetched]], Awaitable[Fetched | None]],
    ) -> tuple[int, Fetched]:
        await online.wait()  # the clients are parked while the broker is gone
        current = consumer()
        changes = membership.changes
        polled()
        try:
            batches = await give_way(
                metrics.stages.timed(
                    "fetch",
                    current.getmany(timeout_ms=500, max_records=settings.batch_max_events * 2),
                )
            )
        except ConsumerStoppedError:
            if current is not consumer():
                return changes, {}  # parked during the fetch: nothing was handed out
            raise
        polled()
        return changes, {} if batches is None else batches

    def unless_parked(getmany: Awaitable[Fetched]) -> Awaitable[Fetched | None]:
        return _unless_parked(getmany, parked)

    def retrying(details: RetryDetails) -> None:
        error = details.caused_by
        metrics.infrastructure_failures.labels("broker").inc()
        log.warning(
            "fetch failed, retrying",
            error_class=type(error).__name__,
            error=str(error)[:300],
            attempt=details.retry_num,
            retry_in=round(details.wait_for, 2),
        )

    waits = _Waits(stop, parked)
    try:
        while not stop.is_set():
            try:
                # A poll's first attempt gives way to the stop and the parking through
                # ``waits``; a failure of it, or a poll while the clients are not online
                # (``waits`` cannot interrupt the wait for them), is the retry's.
                result: tuple[int, Fetched] | None = None
                failure: Exception | None = None
                if online.is_set() and waits.armed() is not None:
                    try:
                        result = await fetch(waits.give_way)
                    except _Stopped:
                        return
                    except Exception as exc:
                        if not is_infrastructure(exc):
                            raise
                        if stop.is_set():
                            return  # failed after the stop: not retried
                        failure = exc
                if result is None:
                    with retry_scope(metrics, "fetch", retrying):
                        fetched, result = await retry_until_stopped(
                            partial(fetch, unless_parked),
                            stop=stop,
                            wait_initial=settings.infra_retry_wait_initial_seconds,
                            wait_max=settings.infra_retry_wait_max_seconds,
                            interrupt_attempt=True,
                            first_failure=failure,
                        )
                    if not fetched or result is None:
                        return
            except Exception as exc:  # not the infrastructure's (those are retried): a bug
                log.error(
                    "fetch failed with an error that is not the infrastructure's: stopping",
                    error_class=type(exc).__name__,
                    error=str(exc)[:300],
                )
                fatal(exc)
                return
            await _hand_out(result, consumer, membership, pauses, high_water, settings)
    finally:
        await waits.close()


async def _hand_out(
    result: tuple[int, Fetched],
    consumer: Callable[[], AIOKafkaConsumer],
    membership: Membership,
    pauses: Pauses,
    high_water: int,
    settings: Settings,
) -> None:
    """Each partition's records to its worker, where they are still current."""
    changes, batches = result
    changed = changes != membership.changes
    for tp, records in batches.items():
        worker = membership.workers.get(tp)
        if worker is None:  # revoked while the fetch was in flight
            continue
        if changed and not await _still_current(consumer(), tp, records, settings):
            continue  # assigned again while the fetch was in flight: read again
        worker.feed(records)
        if worker.backlog >= high_water:
            pauses.pause(tp, "backpressure")


class _Stopped(Exception):
    """The stop came before the poll's records (``_Waits.give_way``)."""


class _Waits:
    """The stop and the parking a poll gives way to, each awaited by one task that
    lives across polls (re-armed once a parking is over) rather than by new ones each
    poll: a poll is then one task and one ``asyncio.wait`` (issue 22: the retry's and
    the parking's two tasks, two waits and two gathers each poll, and the loop
    iterations of their hand-offs, were a fixed cost of every small batch)."""

    def __init__(self, stop: asyncio.Event, parked: asyncio.Event | None) -> None:
        self.stop = stop
        self.parked = parked
        self._stopping: asyncio.Task[Any] | None = None
        self._parking: asyncio.Task[Any] | None = None

    def armed(self) -> set[asyncio.Future[Any]] | None:
        """The waiters, or None when the clients are parked right now (a poll then
        takes the retry's path, which waits for them to be back)."""
        if self.parked is not None and self.parked.is_set():
            return None
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.stop.wait())
        waiters: set[asyncio.Future[Any]] = {self._stopping}
        if self.parked is not None:
            if self._parking is None or self._parking.done():
                self._parking = asyncio.ensure_future(self.parked.wait())
            waiters.add(self._parking)
        return waiters

    async def give_way(self, getmany: Awaitable[Fetched]) -> Fetched | None:
        """``getmany``'s records; None once the clients are parked first (the fetch
        cancelled, as ``_unless_parked`` does); ``_Stopped`` once the stop came first."""
        waiters = self.armed()
        fetching: asyncio.Future[Any] = asyncio.ensure_future(getmany)
        try:
            if waiters is not None:
                await asyncio.wait({fetching, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fetching.done():
                fetching.cancel()  # (a cancel of this task lands here too)
                await asyncio.gather(fetching, return_exceptions=True)
        if fetching.cancelled():
            if self.stop.is_set():
                raise _Stopped
            return None
        batches: Fetched = fetching.result()
        return batches

    async def close(self) -> None:
        waiters = [w for w in (self._stopping, self._parking) if w is not None]
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _still_current(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    records: list[ConsumerRecord],
    settings: Settings,
) -> bool:
    """Are ``records`` from the consumer's current assignment of ``tp``, its position
    past them?  Not when ``tp`` was assigned again meanwhile: its position went back to
    the committed offset, at or before these records, which come again from there (the
    position is valid at once, or still being reset: then this waits at most the
    request timeout); nor when ``tp`` is no longer assigned.  (Past, not right after:
    under ``read_committed`` a transaction marker may follow the last record.)"""
    try:
        position = await asyncio.wait_for(consumer.position(tp), settings.request_timeout_seconds)
    except (IllegalStateError, KafkaError, TimeoutError):
        return False
    return bool(position > records[-1].offset)


async def _unless_parked(
    getmany: Awaitable[Fetched], parked: asyncio.Event | None
) -> Fetched | None:
    """``getmany``'s records, or None once the clients are ``parked`` first
    (``service.daemon.outage``), the fetch then cancelled.

    aiokafka's fetch waits, without a bound, for the next assignment while a rebalance
    is in progress (``Fetcher.fetched_records``); a consumer parked meanwhile never gets
    one, and its stop does not end that wait.  Issue 21's stall: the fetch loop stayed
    in the old consumer's fetch while the new one joined the group, was assigned
    partitions and was never asked for records, until aiokafka's poll-interval limit
    made it leave the group.  A fetch is cancelled only where it awaits, before it
    takes any record, so nothing fetched is lost."""
    if parked is None:
        return await getmany
    fetching = asyncio.ensure_future(getmany)
    parking = asyncio.ensure_future(parked.wait())
    try:
        await asyncio.wait((fetching, parking), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (fetching, parking):
            task.cancel()  # (no effect on a task that is done)
        await asyncio.gather(fetching, parking, return_exceptions=True)
    if fetching.cancelled():
        return None
    return fetching.result()
