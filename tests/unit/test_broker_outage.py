"""A broker outage's parking alone (``service.daemon.outage.BrokerOutage``), over fakes:
fake consumers (``service.testing.fake_kafka``), a membership whose workers run over a
recording ``WorkerHost`` (``test_partition_worker.FakeHost``), and callables that record
what the parking asked for.

What must hold: a parking runs as the task a task dump names ``broker-outage``, says in
the log when the clients are parked and when the consumer rejoins, abandons a batch in
flight at once (no grace), and leaves no error in the loop; a parking that ends
otherwise than by returning (a client's call that ends cancelled by itself, a bug)
stops the daemon, naming what happened; at shutdown, ``close`` ends a parking in
progress before it returns, and waits for an old consumer still stopping only up to the
request timeout, without cutting its stop short.  The whole daemon's outages:
test_daemon_invariants.py and test_daemon_rebalance_rules.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import Settings, load_settings
from service.daemon.health import Readiness
from service.daemon.membership import Membership
from service.daemon.outage import BrokerOutage
from service.daemon.pauses import Pauses
from service.daemon.ports import WorkerHost
from service.testing.fake_kafka import FakeBroker, FakeConsumer, fetched_record
from service.testing.model import event_doc
from service.testing.polling import poll
from tests.log_lines import logged
from tests.unit.test_partition_worker import FakeHost

WITHIN = 10.0
TP = TopicPartition("events", 0)


async def _returns() -> None:
    return None


@dataclass
class Clients:
    """What a ``BrokerOutage`` is given, recording each step it took, in order."""

    broker: FakeBroker = field(default_factory=lambda: FakeBroker("events", 1))
    consumers: list[FakeConsumer] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    fatal_errors: list[BaseException] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Each step's behaviour, replaced by a test to fail or hold it.
    on_drop_producer: Callable[[], Awaitable[None]] = _returns
    on_reconnect: Callable[[], Awaitable[None]] = _returns

    def __post_init__(self) -> None:
        if not self.consumers:
            self.consumers.append(FakeConsumer(self.broker))

    def consumer(self) -> AIOKafkaConsumer:
        return cast(AIOKafkaConsumer, self.consumers[-1])

    def renew_consumer(self) -> None:
        self.steps.append("consumer renewed")
        self.consumers.append(FakeConsumer(self.broker))

    async def drop_producer(self) -> None:
        self.steps.append("producer dropped")
        await self.on_drop_producer()

    async def reconnect(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.steps.append(f"reconnecting in task {task.get_name()}")
        await self.on_reconnect()

    def subscribe(self) -> None:
        self.steps.append("subscribed")

    def fatal(self, exc: BaseException) -> None:
        self.fatal_errors.append(exc)


class HangingApplier:
    """A database whose transaction never ends (only a cancellation ends it)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def apply_batch(self, items: Any) -> list[Any]:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _membership(clients: Clients, host: FakeHost, revoke_grace: float = 20.0) -> Membership:
    return Membership(
        cast(WorkerHost, host),  # FakeHost's sinks are the memory ones: a WorkerHost
        pauses=Pauses(clients.consumer),
        readiness=Readiness(),
        metrics=host.metrics,
        revoke_grace=revoke_grace,
    )


def _outage(
    clients: Clients, settings: Settings | None = None, membership: Membership | None = None
) -> BrokerOutage:
    return BrokerOutage(
        settings or load_settings(request_timeout_seconds=1.0),
        consumer=clients.consumer,
        renew_consumer=clients.renew_consumer,
        membership=membership or _membership(clients, FakeHost(HangingApplier())),
        drop_producer=clients.drop_producer,
        reconnect=clients.reconnect,
        subscribe=clients.subscribe,
        stop=clients.stop,
        fatal=clients.fatal,
    )


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What the running loop reports to its exception handler meanwhile (an exception
    in a callback, a task's exception never retrieved): logged as errors in production."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


def outage_log(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The outage module's log events, without their timestamp and logger."""
    return [
        {k: v for k, v in e.items() if k not in ("timestamp", "logger")}
        for e in logged(caplog)
        if e.get("logger") == "service.daemon.outage"
    ]


async def _parked_and_back(outage: BrokerOutage) -> None:
    await poll(lambda: outage.online.is_set() and not outage.parked.is_set(), WITHIN, "back")


# -- a parking that goes well ----------------------------------------------------------
async def test_a_parking_runs_as_the_broker_outage_task_and_says_when_it_parks_and_rejoins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker is lost: the clients are parked (offline, ``parked`` set at once), the
    producer dropped, the consumer replaced and the old one stopped; the reconnect runs
    in the task a task dump names ``broker-outage`` (what an operator reads in a
    shutdown's or a hang's task listing); the new consumer subscribes and the daemon is
    online again.  The log says when the clients were parked and when the consumer
    rejoins; nothing is left for the loop to report (the old consumer's stop, once done,
    is let go without an error)."""
    clients = Clients()
    old = clients.consumers[0]
    with loop_errors() as errors:
        outage = _outage(clients)
        outage.online.set()
        outage.lost()
        assert not outage.online.is_set() and outage.parked.is_set()
        await _parked_and_back(outage)
        await poll(lambda: old.stopped, WITHIN, "the old consumer stopped")
        await outage.close()
    assert errors == []
    assert clients.steps == [
        "producer dropped",
        "consumer renewed",
        "reconnecting in task broker-outage",
        "subscribed",
    ]
    assert clients.fatal_errors == []
    assert outage_log(caplog) == [
        {
            "level": "warning",
            "event": "broker gone: Kafka clients parked, reconnecting with backoff",
        },
        {"level": "info", "event": "broker back: consumer rejoining the group"},
    ]


async def test_a_parking_abandons_a_batch_in_flight_without_a_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch hangs in its transaction when the broker is lost.  Its acknowledgements
    and its offset commit need the broker, so the parking does not give it the
    revocation grace (20 s): it is abandoned at once (``grace_seconds`` 0 in the log),
    and the clients are parked."""
    clients = Clients()
    applier = HangingApplier()
    host = FakeHost(applier)
    membership = _membership(clients, host, revoke_grace=20.0)
    membership.adopt([TP])
    consumer_uuid = "00000000-0000-4000-8000-000000000001"
    doc = event_doc(consumer_uuid, project="p", user="u")
    record = fetched_record(TP, 0, json.dumps(doc).encode(), consumer_uuid.encode())
    membership.workers[TP].feed([record])
    await asyncio.wait_for(applier.entered.wait(), WITHIN)
    outage = _outage(clients, membership=membership)
    outage.lost()
    await _parked_and_back(outage)
    await outage.close()
    assert membership.workers == {}
    abandoned = [e for e in logged(caplog) if e["event"] == "batch abandoned at stop"]
    assert [(e["partition"], e["grace_seconds"]) for e in abandoned] == [("events/0", 0)]
    assert host.commits == []


# -- a parking that ends otherwise than by returning: the daemon stops ------------------
async def test_a_parking_that_ends_cancelled_by_itself_stops_the_daemon_saying_so() -> None:
    """The reconnect ends with ``CancelledError`` although nobody cancelled the parking
    (as aiokafka's client calls may: aio-libs/aiokafka#647).  Nothing would ever bring the
    clients back, so the daemon is stopped with an error that says what happened."""
    clients = Clients()

    async def cancelled_by_itself() -> None:
        raise asyncio.CancelledError()

    clients.on_reconnect = cancelled_by_itself
    outage = _outage(clients)
    outage.lost()
    await poll(lambda: clients.fatal_errors != [], WITHIN, "the daemon told to stop")
    [error] = clients.fatal_errors
    assert type(error) is RuntimeError
    assert str(error) == "the broker outage's parking was cancelled"
    assert not outage.online.is_set()
    await outage.close()


async def test_a_parking_that_fails_logs_the_error_class_and_stops_the_daemon_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dropping the producer fails with an error that is nobody's expected failure (a
    bug): the log says the parking failed and with what class of error, and the daemon
    is stopped with that very error."""
    clients = Clients()
    bug = ValueError("a bug in dropping the producer")

    async def failing() -> None:
        raise bug

    clients.on_drop_producer = failing
    outage = _outage(clients)
    outage.lost()
    await poll(lambda: clients.fatal_errors != [], WITHIN, "the daemon told to stop")
    assert clients.fatal_errors == [bug]
    assert outage_log(caplog) == [
        {"level": "error", "event": "parking the Kafka clients failed", "error_class": "ValueError"}
    ]
    await outage.close()


# -- close, at shutdown ----------------------------------------------------------------
async def test_close_ends_a_parking_in_progress_before_it_returns() -> None:
    """The broker is still gone at shutdown: the parking is reconnecting.  ``close``
    ends it, and the reconnect has ended by the time ``close`` returns (the daemon then
    closes the rest: no client connect may still be running); a parking ended so at the
    stop is not a bug."""
    clients = Clients()
    reconnecting = asyncio.Event()

    async def until_cancelled() -> None:
        reconnecting.set()
        try:
            await asyncio.Event().wait()
        finally:
            clients.steps.append("reconnect ended")

    clients.on_reconnect = until_cancelled
    outage = _outage(clients)
    outage.lost()
    await asyncio.wait_for(reconnecting.wait(), WITHIN)
    clients.stop.set()
    # Awaited in this task, not through ``wait_for``'s task: nothing else lets the loop
    # turn in between, so only ``close`` itself can have let the reconnect end.
    await outage.close()
    assert clients.steps[-1] == "reconnect ended"
    assert clients.fatal_errors == []


class HeldClose(FakeConsumer):
    """A consumer whose stop leaves the group, then waits for ``release`` to finish
    closing (as aiokafka's waits for its heartbeat and fetch tasks)."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__(broker)
        self.release = asyncio.Event()
        self.closed = False

    async def stop(self) -> None:
        await super().stop()
        await self.release.wait()
        self.closed = True


async def test_close_waits_for_an_old_consumer_still_stopping_up_to_the_request_timeout() -> None:
    """The old consumer's stop outlasts the parking (bounded by the request timeout,
    it goes on in the background).  At shutdown ``close`` waits for it; once the request
    timeout has passed, ``close`` returns all the same (the shutdown is bounded), and the
    stop is not cut short: it finishes when it can."""
    timeout = 1.0  # far above a few turns of the loop, even on a loaded machine
    clients = Clients()
    old = HeldClose(clients.broker)
    clients.consumers[:] = [old]
    outage = _outage(clients, load_settings(request_timeout_seconds=timeout))
    outage.lost()
    await _parked_and_back(outage)
    assert not old.closed
    clients.stop.set()
    closing = asyncio.create_task(outage.close())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done(), "close did not wait for the old consumer's stop"
    await asyncio.wait_for(closing, WITHIN)  # returns after the request timeout
    assert not old.closed, "the old consumer's stop ended early"
    old.release.set()
    await poll(lambda: old.closed, WITHIN, "the old consumer's stop finished, not cut short")
    assert clients.fatal_errors == []
