"""A broker that is gone: park the Kafka clients instead of letting them spin.

While its broker is unreachable, an aiokafka consumer that is a group member keeps
looking for its coordinator and refreshing metadata about every ``retry_backoff_ms``
(100 ms), with a connection attempt and a log line each time (aio-libs/aiokafka#1155):
a few percent of a core and hundreds of lines a minute, for as long as the outage lasts.
So when the probes find the broker gone, the daemon *parks*:

1. the partitions are released as at a revocation, without a grace (each worker
   abandons its in-flight batch, which needs the broker to finish; nothing is committed
   past the database, and what could not be committed comes again and is a duplicate in
   the inbox);
2. the sinks' producer is dropped and the consumer replaced by a fresh, unstarted one;
   the old one is stopped in the background (waited for up to the request timeout,
   never cut short: a stop cut short leaves its heartbeat and fetch tasks running);
3. the start-up connection routine (``startup.start_clients``: stamina's capped,
   jittered exponential backoff up to ``CONSUMERGEN_INFRA_RETRY_WAIT_MAX_SECONDS``, a
   failed client closed before the next attempt) runs until the broker answers;
4. the new consumer subscribes and rejoins the group, and fetching resumes.

``online`` is clear from step 1 to step 4; the fetch loop and the broker probe wait on it.
``parked`` is set over the same span: a fetch in flight on the old consumer gives up at
once (aiokafka's may otherwise wait for an assignment that never comes: issue 21's
stall).  A parking that ends otherwise than by returning (a bug) stops the daemon, since
nothing else would ever bring the clients back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer

from service.config import Settings
from service.daemon.membership import Membership
from service.kafka.clients import close_quietly

log = structlog.get_logger(__name__)


class BrokerOutage:
    """Parks the clients when the broker is lost and brings them back (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Callable[[], AIOKafkaConsumer],
        renew_consumer: Callable[[], None],
        membership: Membership,
        drop_producer: Callable[[], Awaitable[None]],
        reconnect: Callable[[], Awaitable[None]],
        subscribe: Callable[[], None],
        stop: asyncio.Event,
        fatal: Callable[[BaseException], None],
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._renew_consumer = renew_consumer
        self._membership = membership
        self._drop_producer = drop_producer
        self._reconnect = reconnect
        self._subscribe = subscribe
        self._stop = stop
        self._fatal = fatal
        #: Set while the consumer is started and subscribed (fetching may go on).
        self.online = asyncio.Event()
        #: Set from the moment the broker is found gone until ``online`` is set again: a
        #: fetch in flight on the old consumer gives up (``service.daemon.fetch``).
        self.parked = asyncio.Event()
        self._parking: asyncio.Task[None] | None = None
        #: Old consumers still stopping in the background (kept referenced).
        self._closing: set[asyncio.Future[None]] = set()

    def lost(self) -> None:
        """The probe found the broker gone: park, unless already parked."""
        if self._parking is None or self._parking.done():
            self.online.clear()
            self.parked.set()
            self._parking = asyncio.create_task(self._park(), name="broker-outage")
            self._parking.add_done_callback(self._parked)

    def _parked(self, parking: asyncio.Task[None]) -> None:
        """A parking that ended otherwise than by returning or by ``close`` would leave
        the clients parked for good, the fetch loop waiting on ``online``: a bug, which
        stops the daemon loudly rather than leave it standing still."""
        if self._stop.is_set():
            return
        if parking.cancelled():
            self._fatal(RuntimeError("the broker outage's parking was cancelled"))
        elif parking.exception() is not None:
            exc = parking.exception()
            assert exc is not None
            log.error("parking the Kafka clients failed", error_class=type(exc).__name__)
            self._fatal(exc)

    async def _park(self) -> None:
        bound = self.settings.request_timeout_seconds
        # No grace: a batch in flight can only end by its outcome acknowledgements and
        # its offset commit, which need the broker that is gone, so waiting for it only
        # gives the consumer's client time to spin (aio-libs/aiokafka#1155: tens of
        # thousands of connection attempts a second; a few CPU seconds per outage).
        # An abandoned batch is not committed and comes again as duplicates.
        await self._membership.release(list(self._membership.workers), grace=0)
        await self._drop_producer()
        old = self._consumer()
        self._renew_consumer()
        # Leaving the group cannot reach anyone.  The stop is shielded: cut short, it
        # would leave the old consumer's heartbeat and fetch tasks running, a member
        # of the group that never fetches; it goes on in the background instead (its
        # requests are bounded by aiokafka's own timeout).  ``close_quietly``: aiokafka's
        # stop may end cancelled by itself, which must not end this parking (issue 21:
        # the clients were then never reconnected).
        stopping = asyncio.ensure_future(close_quietly(old))
        self._closing.add(stopping)
        stopping.add_done_callback(self._closing.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stopping), bound)
        log.warning("broker gone: Kafka clients parked, reconnecting with backoff")
        await self._reconnect()
        if self._stop.is_set():
            return
        self._subscribe()
        self.parked.clear()
        self.online.set()
        log.info("broker back: consumer rejoining the group")

    async def close(self) -> None:
        """At shutdown: end a parking in progress (its reconnect returns on the stop),
        and let old consumers still stopping finish within the request timeout."""
        if self._parking is not None:
            self._parking.cancel()
            await asyncio.gather(self._parking, return_exceptions=True)
        if self._closing:
            await asyncio.wait(self._closing, timeout=self.settings.request_timeout_seconds)
