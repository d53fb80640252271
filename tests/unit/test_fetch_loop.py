"""The fetch loop poll by poll (``service.daemon.fetch.fetch_loop``), without a broker:
each ``getmany`` of its consumer is scripted (records, a failure, a wait), so what the
loop does with each answer is seen one at a time: which worker gets which records,
when a partition is paused for backpressure, what a group change, a parking, a stop
or a failed fetch does to a poll in flight, and what is told to the stall watch.

``tests/unit/test_daemon_invariants.py`` and ``test_daemon_fetch_failures.py`` hold the
same through the whole daemon over the fake broker; these take the cases the fake
broker does not make on its own (a consumer stopped under a fetch, a fetch that hangs
in a retry, a loop without parking)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from service.config import Settings
from service.daemon.fetch import fetch_loop
from service.daemon.membership import Membership
from service.daemon.metrics import DaemonMetrics
from service.daemon.pauses import Pauses
from service.daemon.retries import install_retry_hooks
from service.daemon.stalls import StallWatch
from service.testing.fake_edges import fake_settings
from service.testing.fake_kafka import fetched_record
from service.testing.polling import poll
from tests.log_lines import logged

TP0, TP1 = TopicPartition("events", 0), TopicPartition("events", 1)
WITHIN = 10.0
Fetched = dict[TopicPartition, list[ConsumerRecord]]
#: One scripted poll: returns the records, raises, or waits.
Poll = Callable[[], Awaitable[Fetched]]


def records(tp: TopicPartition, *offsets: int) -> list[ConsumerRecord]:
    return [fetched_record(tp, offset, b"{}") for offset in offsets]


def returning(batches: Fetched) -> Poll:
    async def answer() -> Fetched:
        return batches

    return answer


def failing(error: BaseException) -> Poll:
    async def answer() -> Fetched:
        raise error

    return answer


async def hanging() -> Fetched:
    """A fetch that never ends on its own (aiokafka's, waiting for an assignment)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def hanging_and_slow_to_give_up() -> Fetched:
    """A fetch that never ends on its own and, cancelled, takes a few turns of the loop
    to clean up before it is done (a client closing what it had open)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        for _ in range(3):
            await asyncio.sleep(0)
        raise
    raise AssertionError("unreachable")


class ScriptedConsumer:
    """The part of ``AIOKafkaConsumer`` the fetch loop and ``Pauses`` use.  ``getmany``
    runs the next of ``polls``; once they are used up it is an idle poll (nothing within
    its timeout).  ``position`` answers from ``positions``."""

    def __init__(self, *polls: Poll, positions: dict[TopicPartition, int] | None = None):
        self.polls = list(polls)
        self.positions = positions or {}
        #: Every getmany's (timeout_ms, max_records).
        self.calls: list[tuple[int, int | None]] = []
        #: getmany calls cancelled (given up by the loop).
        self.cancelled = 0
        self.asked_positions: list[TopicPartition] = []
        self.paused: set[TopicPartition] = set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched:
        self.calls.append((timeout_ms, max_records))
        try:
            if self.polls:
                return await self.polls.pop(0)()
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def position(self, tp: TopicPartition) -> int:
        self.asked_positions.append(tp)
        return self.positions[tp]

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


class Worker:
    """What the fetch loop uses of a partition worker: ``feed`` and ``backlog``."""

    def __init__(self) -> None:
        self.fed: list[int] = []

    def feed(self, batch: list[ConsumerRecord]) -> None:
        self.fed += [record.offset for record in batch]

    @property
    def backlog(self) -> int:
        return len(self.fed)


@dataclass
class Group:
    """What the fetch loop reads of ``Membership``: the workers and the change count."""

    workers: dict[TopicPartition, Worker] = field(
        default_factory=lambda: {TP0: Worker(), TP1: Worker()}
    )
    changes: int = 0


@dataclass
class Loop:
    settings: Settings
    consumer: ScriptedConsumer
    group: Group
    metrics: DaemonMetrics
    stop: asyncio.Event
    online: asyncio.Event
    parked: asyncio.Event | None
    stalls: StallWatch | None
    fatal: list[BaseException]
    task: asyncio.Task[None] | None = None

    def fed(self, tp: TopicPartition) -> list[int]:
        return self.group.workers[tp].fed

    def fetch_retries(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "consumergen_retries_total", {"step": "fetch"}
        )

    async def ended(self) -> None:
        """The loop has returned, within the deadline."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), WITHIN)


def _settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {"batch_max_events": 5, **extra}
    return fake_settings("sqlite+aiosqlite:///unused.sqlite3", **values)


@asynccontextmanager
async def running(
    consumer: ScriptedConsumer,
    *,
    high_water: int = 100,
    online: bool = True,
    parking: bool = True,
    stalls: StallWatch | None = None,
    current: Callable[[], ScriptedConsumer] | None = None,
    **settings: Any,
) -> AsyncIterator[Loop]:
    """``fetch_loop`` over ``consumer`` (or whatever ``current`` returns), stopped after."""
    install_retry_hooks()
    loop = Loop(
        settings=_settings(**settings),
        consumer=consumer,
        group=Group(),
        metrics=DaemonMetrics(),
        stop=asyncio.Event(),
        online=asyncio.Event(),
        parked=asyncio.Event() if parking else None,
        stalls=stalls,
        fatal=[],
    )
    if online:
        loop.online.set()
    the_consumer = cast(Callable[[], AIOKafkaConsumer], current or (lambda: consumer))
    loop.task = asyncio.create_task(
        fetch_loop(
            loop.settings,
            consumer=the_consumer,
            membership=cast(Membership, loop.group),
            pauses=Pauses(the_consumer),
            high_water=high_water,
            metrics=loop.metrics,
            stop=loop.stop,
            fatal=loop.fatal.append,
            online=loop.online,
            parked=loop.parked,
            stalls=stalls,
        )
    )
    try:
        yield loop
    finally:
        loop.stop.set()
        loop.online.set()  # (a loop waiting for the clients without parking cannot end else)
        await asyncio.wait_for(loop.task, WITHIN)


async def test_records_go_to_their_workers_and_one_at_the_high_water_mark_is_paused() -> None:
    """Backpressure: a worker with ``high_water`` records queued (not only more) has its
    partition paused at the consumer, so that nothing more is fetched for it."""
    consumer = ScriptedConsumer(returning({TP0: records(TP0, 0, 1, 2, 3), TP1: records(TP1, 0)}))
    async with running(consumer, high_water=4) as loop:
        await poll(lambda: loop.fed(TP1) == [0], WITHIN, "partition 1's record handed out")
        assert loop.fed(TP0) == [0, 1, 2, 3]
        assert consumer.paused == {TP0}
    assert loop.fatal == []


async def test_a_poll_asks_for_two_batches_worth_at_most_and_waits_at_most_half_a_second() -> None:
    """What one poll may bring is bounded (two batches' worth: memory stays bounded), and
    an idle poll comes back within half a second (the loop notices a stop, a parking and
    backpressure between polls, and the stall watch hears of each)."""
    consumer = ScriptedConsumer()
    async with running(consumer, batch_max_events=7) as loop:
        await poll(lambda: len(consumer.calls) >= 2, WITHIN, "two idle polls", every=0.01)
    assert all(max_records == 14 for _, max_records in consumer.calls), consumer.calls
    assert all(0 < timeout_ms <= 500 for timeout_ms, _ in consumer.calls), consumer.calls
    assert loop.fatal == []


async def test_each_poll_is_told_to_the_stall_watch() -> None:
    stalls = StallWatch(bound=60.0)
    began = time.monotonic()
    consumer = ScriptedConsumer(returning({TP0: records(TP0, 0)}))
    async with running(consumer, stalls=stalls) as loop:
        await poll(lambda: loop.fed(TP0) == [0], WITHIN, "the record handed out", every=0.01)
        assert stalls.last_poll is not None
        assert began <= stalls.last_poll <= time.monotonic()
    assert loop.fatal == []


async def test_a_fetch_during_which_the_group_changed_goes_out_only_where_still_current() -> None:
    """Partition 0 was assigned again while the fetch was in flight (its position went
    back to 5, the committed offset: records 5-7 come again), partition 1 was not (its
    position is past its records): partition 1's records are handed out all the same."""

    async def group_changes() -> Fetched:
        loop.group.changes += 1
        return {TP0: records(TP0, 5, 6, 7), TP1: records(TP1, 0, 1)}

    consumer = ScriptedConsumer(group_changes, positions={TP0: 5, TP1: 2})
    async with running(consumer) as loop:
        await poll(lambda: loop.fed(TP1) == [0, 1], WITHIN, "partition 1's records handed out")
        assert loop.fed(TP0) == []  # stale: they come again from the committed offset
        assert sorted(consumer.asked_positions) == [TP0, TP1]
    assert loop.fatal == []


async def test_a_fetch_during_which_the_group_did_not_change_is_handed_out_as_it_is() -> None:
    """No position is asked for (a request per partition and poll for nothing): were it
    asked, this consumer's answer (0) would make the records look stale."""
    consumer = ScriptedConsumer(returning({TP0: records(TP0, 0, 1)}), positions={TP0: 0})
    async with running(consumer) as loop:
        await poll(lambda: loop.fed(TP0) == [0, 1], WITHIN, "the records handed out")
        assert consumer.asked_positions == []
    assert loop.fatal == []


async def test_a_fetch_ended_by_a_parking_that_replaced_the_consumer_is_no_failure() -> None:
    """The outage parks the clients while a fetch is in flight: the old consumer is
    stopped (its fetch raises ``ConsumerStoppedError``) and a new one takes its place.
    Nothing was handed out, nothing failed: the loop goes on with the new consumer."""
    new = ScriptedConsumer(returning({TP0: records(TP0, 0)}))
    clients = {"current": ScriptedConsumer()}

    async def stopped_under_the_fetch() -> Fetched:
        clients["current"] = new
        raise ConsumerStoppedError()

    clients["current"].polls.append(stopped_under_the_fetch)
    async with running(clients["current"], current=lambda: clients["current"]) as loop:
        await poll(lambda: loop.fed(TP0) == [0], WITHIN, "the new consumer's record handed out")
        assert loop.fatal == []
        assert loop.fetch_retries() == 0  # not an infrastructure failure either


async def test_a_consumer_stopped_under_the_loop_while_still_current_is_a_bug() -> None:
    consumer = ScriptedConsumer(failing(ConsumerStoppedError()))
    async with running(consumer) as loop:
        await poll(lambda: bool(loop.fatal), WITHIN, "the loop stopping on the bug")
        await loop.ended()
    assert [type(exc) for exc in loop.fatal] == [ConsumerStoppedError]


async def test_a_retried_fetch_in_flight_is_given_up_when_the_clients_are_parked() -> None:
    """A fetch retried after a broker failure hangs (aiokafka waits for an assignment
    without a bound while a rebalance is in progress; issue 21): a parking cancels it,
    waits until it has let go, and once the clients are back the loop fetches again."""
    consumer = ScriptedConsumer(
        failing(KafkaConnectionError("no route")),
        hanging_and_slow_to_give_up,
        returning({TP0: records(TP0, 0)}),
    )
    async with running(consumer) as loop:
        await poll(lambda: len(consumer.calls) == 2, WITHIN, "the retry's fetch", every=0.01)
        assert loop.parked is not None
        loop.online.clear()  # as the outage parks the clients (service.daemon.outage)
        loop.parked.set()
        await poll(lambda: consumer.cancelled == 1, WITHIN, "the fetch given up", every=0.01)
        loop.parked.clear()
        loop.online.set()
        await poll(lambda: loop.fed(TP0) == [0], WITHIN, "fetching again once back")
        assert loop.fatal == []
        assert loop.fetch_retries() == 1


async def test_a_stop_ends_a_retried_fetch_in_flight() -> None:
    consumer = ScriptedConsumer(failing(KafkaConnectionError("no route")), hanging)
    async with running(consumer) as loop:
        await poll(lambda: len(consumer.calls) == 2, WITHIN, "the retry's fetch", every=0.01)
        loop.stop.set()
        await loop.ended()
        assert consumer.cancelled == 1
    assert loop.fatal == []


async def test_a_stop_ends_the_loop_while_it_waits_for_the_clients_to_be_back() -> None:
    """Without parking (``parked`` None), the loop waits for ``online`` in the retry's
    attempt, which the stop interrupts: a daemon stopping during an outage ends."""
    consumer = ScriptedConsumer()
    async with running(consumer, online=False, parking=False) as loop:
        # (not a wait for a condition: the loop's task runs into its wait for the clients
        # before this timer fires, so the stop below finds it waiting there)
        await asyncio.sleep(0.05)
        loop.stop.set()
        await loop.ended()
        assert consumer.calls == []  # never fetched while not online
    assert loop.fatal == []


async def test_a_loop_without_parking_fetches_as_one_with_it() -> None:
    consumer = ScriptedConsumer(returning({TP0: records(TP0, 0, 1)}))
    async with running(consumer, parking=False) as loop:
        await poll(lambda: loop.fed(TP0) == [0, 1], WITHIN, "the records handed out")
    assert loop.fatal == []


async def test_a_stopped_loop_leaves_no_task_of_its_own_behind() -> None:
    """The waiters for the stop and the parking live across polls; once the loop has
    returned they are gone too (the parking's would otherwise wait for ever)."""
    consumer = ScriptedConsumer(returning({TP0: records(TP0, 0)}))
    async with running(consumer) as loop:
        await poll(lambda: loop.fed(TP0) == [0], WITHIN, "the record handed out")
        loop.stop.set()
        await loop.ended()
        left = {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}
        assert left == set(), left
    assert loop.fatal == []


async def test_a_failed_fetch_is_logged_with_a_bounded_error_and_the_wait_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wait is stamina's (capped here at 0.123 s, jitter or not), rounded to
    hundredths in the line; the error to 300 characters."""
    error = KafkaConnectionError("no route " + "x" * 400)
    consumer = ScriptedConsumer(failing(error), returning({TP0: records(TP0, 0)}))
    async with running(
        consumer,
        infra_retry_wait_initial_seconds=0.123,
        infra_retry_wait_max_seconds=0.123,
    ) as loop:
        await poll(lambda: loop.fed(TP0) == [0], WITHIN, "the record after the retry")
    [line] = [e for e in logged(caplog) if e.get("event") == "fetch failed, retrying"]
    assert line["error_class"] == "KafkaConnectionError"
    assert line["error"] == str(error)[:300] and len(line["error"]) == 300
    assert line["attempt"] == 1
    assert line["retry_in"] == 0.12
    assert loop.fatal == []


async def test_a_successful_poll_costs_one_task() -> None:
    """Issue 22: a poll that gets its records takes the loop's own path (one task and one
    ``asyncio.wait`` against the stop and the parking, whose waiters live across polls),
    not the retry's (its task, a stop waiter, a fetch and a parking waiter: four a
    poll), which only a failure or an outage takes."""
    polls = 20
    consumer = ScriptedConsumer(*(returning({TP0: records(TP0, n)}) for n in range(polls)))
    made = 0
    event_loop = asyncio.get_running_loop()
    plain = event_loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal made
        made += 1
        if plain is not None:
            return plain(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    event_loop.set_task_factory(counting)
    try:
        async with running(consumer) as loop:
            await poll(
                lambda: len(loop.fed(TP0)) == polls, WITHIN, "every poll's record", every=0.01
            )
            counted = made
    finally:
        event_loop.set_task_factory(plain)
    assert loop.fed(TP0) == list(range(polls))
    # the loop's own task, the stop's and the parking's waiters, one a poll (and an idle
    # poll's after them): about ``polls``; the retry's path would have made four times
    assert counted <= 2 * polls, counted
