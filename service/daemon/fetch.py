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
    in flight when the clients are ``parked`` is given up (``_unless_parked``).  Each poll is
    told to ``stalls`` (a fetch loop that stops polling is a stall: ``daemon.stalls``)."""

    def polled() -> None:
        if stalls is not None:
            stalls.polled(time.monotonic())

    async def fetch() -> tuple[int, Fetched]:
        await online.wait()  # the clients are parked while the broker is gone
        current = consumer()
        changes = membership.changes
        polled()
        try:
            batches = await _unless_parked(
                metrics.stages.timed(
                    "fetch",
                    current.getmany(timeout_ms=500, max_records=settings.batch_max_events * 2),
                ),
                parked,
            )
        except ConsumerStoppedError:
            if current is not consumer():
                return changes, {}  # parked during the fetch: nothing was handed out
            raise
        polled()
        return changes, {} if batches is None else batches

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

    while not stop.is_set():
        try:
            with retry_scope(metrics, "fetch", retrying):
                fetched, result = await retry_until_stopped(
                    fetch,
                    stop=stop,
                    wait_initial=settings.infra_retry_wait_initial_seconds,
                    wait_max=settings.infra_retry_wait_max_seconds,
                    interrupt_attempt=True,
                )
        except Exception as exc:  # not the infrastructure's (those are retried): a bug
            log.error(
                "fetch failed with an error that is not the infrastructure's: stopping",
                error_class=type(exc).__name__,
                error=str(exc)[:300],
            )
            fatal(exc)
            return
        if not fetched or result is None:
            return
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
