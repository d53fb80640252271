"""How the daemon stops, fast: the whole daemon over the fakes (``service.testing.
fake_kafka``, ``fake_edges``), no broker; /readyz asked over HTTP as an orchestrator
asks it.

What an operator relies on: from the moment a stop is asked for, /readyz says stopping
(no new traffic is routed here) until the end; a batch in flight gets the shutdown
grace and no more; the consumer leaves the group and then the sinks' producer is
flushed, each bounded by the request timeout, so that a broker that does not answer
cannot hold the exit; a stop asked for before the daemon could start ends it cleanly;
the benchmarks' timeline is written at the stop; and the daemon's own tasks carry names
a task dump can be read by.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.daemon.app import Daemon
from service.daemon.ports import DaemonEdges
from service.store.engine import create_engine
from service.testing.fake_edges import (
    FakeApplier,
    FakeEdges,
    FakeProducer,
    fake_edges,
    fake_settings,
    migrated_sqlite,
    produce_new_consumers,
)
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll
from tests.log_lines import logged

WITHIN = 20.0
#: Longer than any bounded stop here takes, far shorter than an unbounded one.
STOP_WITHIN = 10.0


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("stopping"))


@asynccontextmanager
async def running(
    settings: Any, fakes: FakeEdges, *, health: bool = False
) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    """A daemon over ``fakes`` as a task of this loop; the test stops it (and awaits it)
    itself, or it is stopped at the end."""
    engine = create_engine(settings)
    daemon = Daemon(settings, engine, edges=fakes.edges)
    task = asyncio.create_task(daemon.run(health=health), name="stopping-daemon")
    try:
        yield daemon, task
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        finally:
            await fakes.broker.close()
            await engine.dispose()
    assert daemon.fatal_error is None, daemon.fatal_error


def readyz_blocking(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    """/readyz asked while the daemon's loop is blocked (the server has a thread of its
    own): what it says at this very moment, before the loop could do anything else."""
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    assert daemon.health is not None
    url = f"http://127.0.0.1:{daemon.health.port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def hanging_batch(entered: asyncio.Event) -> FakeApplier:
    """An applier whose transaction never ends (a database that does not answer)."""

    async def before_apply(items: Any) -> None:
        entered.set()
        await asyncio.Event().wait()

    return FakeApplier(before_apply=before_apply)


# -- /readyz says stopping from the request to the end ------------------------------------
async def test_readyz_says_stopping_the_moment_a_stop_is_requested(database: str) -> None:
    """``request_stop`` (SIGTERM's handler) turns /readyz to 503 "stopping" at once,
    before the daemon's loop has run anything more: the orchestrator stops routing
    readers here before the consumer even leaves the group."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with running(fake_settings(database), fakes, health=True) as (daemon, task):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        await poll(lambda: daemon.readiness.verdict()[0], WITHIN, "ready")
        assert readyz_blocking(daemon)[0] == 200
        daemon.request_stop()
        status, body = readyz_blocking(daemon)  # the loop has not moved since
        assert (status, body["stopping"], body["ready"]) == (503, True, False), body
        await asyncio.wait_for(task, STOP_WITHIN)


async def test_a_batch_in_flight_gets_the_grace_and_readyz_says_stopping_meanwhile(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch hangs in its transaction when the stop comes: the daemon waits the
    shutdown grace for it (1 s here), abandons it (not committed: it comes again) and
    ends; every /readyz answer meanwhile is 503 "stopping"."""
    broker = FakeBroker("events", 1)
    (tp,) = broker.partitions
    entered = asyncio.Event()
    fakes = fake_edges(broker, hanging_batch(entered))
    settings = fake_settings(database, shutdown_grace_seconds=1.0)
    async with running(settings, fakes, health=True) as (daemon, task):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 1)
        await poll(entered.is_set, WITHIN, "a batch in its transaction")
        began = asyncio.get_running_loop().time()
        daemon.request_stop()
        answers = []
        while not task.done():
            try:
                answers.append(await readyz(daemon))
            except aiohttp.ClientConnectionError:
                break  # the health server closes last
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, STOP_WITHIN)
        took = asyncio.get_running_loop().time() - began
    assert answers, "no /readyz answer during the stop"
    assert all(status == 503 and body["stopping"] for status, body in answers), answers
    assert 1.0 <= took < STOP_WITHIN, took
    assert broker.committed.get(tp) is None  # the abandoned batch is not committed
    [abandoned] = [e for e in logged(caplog) if e["event"] == "batch abandoned at stop"]
    assert abandoned["grace_seconds"] == 1.0
    [stopping] = [e for e in logged(caplog) if e["event"] == "daemon stopping"]
    assert (stopping["partitions"], stopping["abandoned_batches"]) == (1, 1)


# -- the clients' close: in order, each bounded ---------------------------------------------
@dataclasses.dataclass
class Closing:
    """What the stop did to the clients, in order; ``hang`` names the one whose close
    never ends (a broker that does not answer)."""

    hang: str | None
    done: list[str] = dataclasses.field(default_factory=list)

    async def close(self, which: str) -> None:
        self.done.append(f"{which} close begun")
        if which == self.hang:
            await asyncio.Event().wait()
        self.done.append(f"{which} closed")


class ClosingConsumer(FakeConsumer):
    def __init__(self, broker: FakeBroker, closing: Closing) -> None:
        super().__init__(broker)
        self._closing = closing

    async def stop(self) -> None:
        await super().stop()
        await self._closing.close("consumer")


class ClosingProducer(FakeProducer):
    def __init__(self, broker: FakeBroker, closing: Closing) -> None:
        super().__init__(broker)
        self._closing = closing

    async def stop(self) -> None:
        await self._closing.close("producer")


@dataclasses.dataclass
class ClosingEdges(FakeEdges):
    closing: Closing = dataclasses.field(default_factory=lambda: Closing(None))

    @property
    def edges(self) -> DaemonEdges:
        return dataclasses.replace(
            super().edges, make_consumer=lambda: ClosingConsumer(self.broker, self.closing)
        )


def closing_fakes(broker: FakeBroker, hang: str | None) -> ClosingEdges:
    closing = Closing(hang)
    plain = fake_edges(broker)
    return ClosingEdges(
        broker,
        ClosingProducer(broker, closing),
        plain.dead_letters,
        plain.outcomes,
        plain.applier,
        closing,
    )


@pytest.mark.parametrize("hang", [None, "consumer", "producer"])
async def test_the_stop_leaves_the_group_then_flushes_the_producer_each_bounded(
    database: str, caplog: pytest.LogCaptureFixture, hang: str | None
) -> None:
    """The consumer leaves the group first (the partitions go to the other members at
    once), then the sinks' producer is flushed and closed, and the daemon says it has
    stopped.  A close that never ends (the broker does not answer) is given up after
    the request timeout (0.5 s here) and the stop goes on: the exit is not held."""
    broker = FakeBroker("events", 1)
    fakes = closing_fakes(broker, hang)
    settings = fake_settings(database, request_timeout_seconds=0.5)
    async with running(settings, fakes) as (daemon, task):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 1)
        await poll(broker.all_committed, WITHIN, "an event committed")
        daemon.request_stop()
        await asyncio.wait_for(task, STOP_WITHIN)
    expected = [
        "consumer close begun",
        "consumer closed",
        "producer close begun",
        "producer closed",
    ]
    if hang == "consumer":
        expected.remove("consumer closed")
    if hang == "producer":
        expected.remove("producer closed")
    assert fakes.closing.done == expected
    assert fakes.current_consumer().stopped and not fakes.current_consumer().in_group
    assert [e["event"] for e in logged(caplog)][-1] == "daemon stopped"


# -- a stop before the start ------------------------------------------------------------------
async def test_a_stop_while_waiting_for_the_broker_at_start_ends_cleanly(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker is down at start, and the daemon is told to stop while it waits for
    it: it ends at once and cleanly (no error), never started, nothing consumed; every
    consumer it tried is closed."""
    broker = FakeBroker("events", 1)
    broker.go_down()
    fakes = fake_edges(broker)
    async with running(fake_settings(database), fakes) as (daemon, task):
        await poll(
            lambda: (
                (
                    daemon.metrics.registry.get_sample_value(
                        "consumergen_retries_total", {"step": "startup_broker"}
                    )
                    or 0
                )
                >= 1
            ),
            WITHIN,
            "a start attempt refused",
        )
        daemon.request_stop()
        await asyncio.wait_for(task, STOP_WITHIN)  # raises what the run raised
        assert not daemon.readiness.started
    assert all(not c.in_group for c in broker.consumers)
    assert fakes.producer.starts == 0
    events = [e["event"] for e in logged(caplog)]
    assert "daemon started" not in events and events[-1] == "daemon stopped"


class SlowToAnswer(FakeConsumer):
    """Its metadata request (the broker probe's) is not answered until ``answer``."""

    def __init__(self, broker: FakeBroker, asked: asyncio.Event) -> None:
        super().__init__(broker)
        self._asked = asked

    async def topics(self) -> set[str]:
        self._asked.set()
        await asyncio.Event().wait()
        return await super().topics()


async def test_a_stop_while_a_probe_waits_for_the_broker_ends_cleanly(database: str) -> None:
    """The broker probe's request is in flight (the broker slow to answer, well within
    the request timeout) when the stop comes: the probe is given up and the daemon ends
    cleanly, not cancelled."""
    broker = FakeBroker("events", 1)
    asked = asyncio.Event()
    plain = fake_edges(broker)

    @dataclasses.dataclass
    class SlowEdges(FakeEdges):
        @property
        def edges(self) -> DaemonEdges:
            return dataclasses.replace(
                super().edges, make_consumer=lambda: SlowToAnswer(self.broker, asked)
            )

    fakes = SlowEdges(broker, plain.producer, plain.dead_letters, plain.outcomes, plain.applier)
    settings = fake_settings(database, request_timeout_seconds=30.0)
    async with running(settings, fakes) as (daemon, task):
        await poll(asked.is_set, WITHIN, "the broker probe asking")
        daemon.request_stop()
        await asyncio.wait_for(task, STOP_WITHIN)  # raises what the run raised
    assert not task.cancelled()


class UnwindsSlowly(FakeConsumer):
    """Its metadata request (the broker probe's) never answers, and once given up it
    takes a while to unwind: up to ``UNWIND`` s, or until the consumer is stopped under
    it, whichever is first; ``order`` says which came first."""

    def __init__(self, broker: FakeBroker, asked: asyncio.Event, order: list[str]) -> None:
        super().__init__(broker)
        self._asked = asked
        self._stopped = asyncio.Event()
        self.order = order

    async def topics(self) -> set[str]:
        self._asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), UNWIND)
            self.order.append("probe ended")
            raise
        return await super().topics()

    async def stop(self) -> None:
        self.order.append("consumer stopped")
        self._stopped.set()
        await super().stop()


UNWIND = 2.0


async def test_the_consumer_is_stopped_only_after_the_broker_probe_using_it_has_ended(
    database: str,
) -> None:
    """At a stop, the probes' task is cancelled and waited for before the clients are
    closed: a probe request still unwinding never finds its consumer stopped under it."""
    broker = FakeBroker("events", 1)
    asked = asyncio.Event()
    order: list[str] = []
    plain = fake_edges(broker)

    @dataclasses.dataclass
    class UnwindingEdges(FakeEdges):
        @property
        def edges(self) -> DaemonEdges:
            return dataclasses.replace(
                super().edges, make_consumer=lambda: UnwindsSlowly(self.broker, asked, order)
            )

    fakes = UnwindingEdges(
        broker, plain.producer, plain.dead_letters, plain.outcomes, plain.applier
    )
    settings = fake_settings(database, request_timeout_seconds=30.0)
    async with running(settings, fakes) as (daemon, task):
        await poll(asked.is_set, WITHIN, "the broker probe asking")
        daemon.request_stop()
        await asyncio.wait_for(task, STOP_WITHIN + UNWIND)
    assert "consumer stopped" in order
    assert order.index("probe ended") < order.index("consumer stopped"), order


# -- the timeline (benchmarks) ------------------------------------------------------------------
async def test_the_timeline_of_sampled_events_is_written_at_the_stop(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``CONSUMERGEN_TIMELINE_FILE`` and one event in 2 sampled, the file holds the
    stamps of offsets 0 and 2 of the four events at every boundary, written at the stop
    and said with its number of stamps."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    path = tmp_path / "timeline.csv"
    settings = fake_settings(database, timeline_file=path, timeline_every=2)
    async with running(settings, fakes) as (daemon, task):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        produce_new_consumers(broker, 0, 4)
        await poll(broker.all_committed, WITHIN, "committed")
        assert not path.exists()  # written at the stop, not before
        daemon.request_stop()
        await asyncio.wait_for(task, STOP_WITHIN)
    header, *rows = path.read_text().splitlines()
    assert header == "partition,offset,boundary,time"
    stamped = {(row.split(",")[1], row.split(",")[2]) for row in rows}
    assert {offset for offset, _ in stamped} == {"0", "2"}
    assert {boundary for _, boundary in stamped} >= {"fetched", "committed", "offset"}
    [written] = [e for e in logged(caplog) if e["event"] == "timeline written"]
    assert written["stamps"] == len(rows)


async def test_without_a_timeline_file_nothing_is_written(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with running(fake_settings(database), fakes) as (daemon, _):
        await poll(fakes.assigned_everything, WITHIN, "assigned")
        assert daemon.metrics.stages.timeline is None
    assert "timeline written" not in [e["event"] for e in logged(caplog)]


# -- the daemon's tasks are named --------------------------------------------------------------
async def test_the_daemons_own_tasks_are_named(database: str) -> None:
    """A task dump of a running daemon (asyncio's debug output, a "Task was destroyed
    but it is pending!" line) says which task is the liveness heartbeat and which the
    probes."""
    broker = FakeBroker("events", 1)
    fakes = fake_edges(broker)
    async with running(fake_settings(database), fakes) as (daemon, _):
        await poll(lambda: daemon.readiness.started, WITHIN, "started")
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert {"liveness-heartbeat", "probes"} <= names, names
