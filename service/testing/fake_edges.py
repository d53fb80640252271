"""The fakes behind a whole daemon: the sinks' producer and broker-bound memory sinks, an
applier that keeps what it applied, and a ``Daemon`` run over them (``daemon_over_fakes``).

``fake_edges(broker)`` gives a ``FakeEdges``, whose ``edges`` (a
``service.daemon.ports.DaemonEdges``) ``Daemon(settings, engine, edges=...)`` takes; the
broker and its consumers are ``service.testing.fake_kafka``'s.  See that module for what
the tests read and for the hooks that time and fail each step.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.config import Settings, load_settings
from service.daemon.app import Daemon
from service.daemon.ports import DaemonEdges
from service.daemon.retries import install_retry_hooks
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.embedded.process import free_port
from service.kafka.clients import BrokerUnavailable
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.sinks.memory import MemoryDeadLetterSink, MemoryOutcomeSink
from service.store.engine import create_engine
from service.store.migrate import upgrade
from service.testing.fake_kafka import FakeBroker, FakeConsumer, Hook, no_hook
from service.testing.model import event_doc


class FakeProducer:
    """The sinks' producer: starts only while the broker is up."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.starts = 0
        self.abandoned = 0

    async def start(self) -> None:
        if not self.broker.up:
            raise BrokerUnavailable("fake broker is down")
        self.starts += 1

    async def stop(self) -> None:
        return None

    async def stop_quietly(self) -> None:
        return None

    async def abandon(self) -> None:
        self.abandoned += 1


class BrokerDeadLetterSink(MemoryDeadLetterSink):
    """A memory sink that writes only while the broker is up (and ``on_sink`` lets it)."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__()
        self.broker = broker

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await _through_broker(self.broker, "dead_letters", letters)
        await super().write_dead_letters(letters)


class BrokerOutcomeSink(MemoryOutcomeSink):
    """A memory sink that writes only while the broker is up (and ``on_sink`` lets it)."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__()
        self.broker = broker

    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        await _through_broker(self.broker, "outcomes", messages)
        await super().write_outcomes(messages)

    def sources(self) -> list[tuple[int, int]]:
        """(partition, offset) of every outcome record written, in writing order."""
        found = []
        for message in self.messages:
            source = orjson.loads(message.value)["source"]
            found.append((source["partition"], source["offset"]))
        return found


async def _through_broker(broker: FakeBroker, sink: str, items: Sequence[object]) -> None:
    await broker.on_sink(sink, items)
    if not broker.up:
        raise SinkUnavailable("fake broker is down", kind="broker")


@dataclass
class FakeApplier:
    """``Applies``: every event it is given is applied (an id seen before is a
    duplicate), unless ``before_apply`` raises, in which case nothing of the batch is.

    ``attempts(source)`` says how many compare-and-swap attempts an event took; more
    than ``max_attempts`` makes it ``failed`` (dead-lettered), as the real applier does.
    """

    before_apply: Hook = no_hook
    attempts: Callable[[EventSource], int] = lambda _: 1
    max_attempts: int = 10
    #: Where each successfully applied event was read, in applying order (duplicates too).
    applied: list[EventSource] = field(default_factory=list)
    _seen: dict[str, OutcomeKind] = field(default_factory=dict)
    _reasons: dict[str, Reason] = field(default_factory=dict)

    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]:
        await self.before_apply(items)
        outcomes = []
        for event, source in items:
            assert source is not None
            tries = self.attempts(source)
            failed = tries > self.max_attempts
            kind = OutcomeKind.FAILED if failed else OutcomeKind.APPLIED
            reason = Reason.CAS_RETRIES_EXHAUSTED if failed else None
            first = self._seen.get(event.event_id)
            if first is not None:
                outcomes.append(
                    Outcome(
                        event.event_id,
                        event.consumer_uuid,
                        OutcomeKind.DUPLICATE,
                        self._reasons.get(event.event_id),
                        1,
                        1,
                        first,
                    )
                )
            else:
                self._seen[event.event_id] = kind
                if reason is not None:
                    self._reasons[event.event_id] = reason
                outcomes.append(
                    Outcome(
                        event.event_id,
                        event.consumer_uuid,
                        kind,
                        reason,
                        1,
                        min(tries, self.max_attempts),
                    )
                )
            self.applied.append(source)
        return outcomes


@dataclass
class FakeEdges:
    """The fakes behind one daemon (``edges`` is what ``Daemon`` takes)."""

    broker: FakeBroker
    producer: FakeProducer
    dead_letters: BrokerDeadLetterSink
    outcomes: BrokerOutcomeSink
    applier: FakeApplier

    @property
    def edges(self) -> DaemonEdges:
        broker = self.broker
        return DaemonEdges(
            make_consumer=lambda: FakeConsumer(broker),
            producer=self.producer,
            dead_letters=self.dead_letters,
            outcomes=self.outcomes,
            applier=self.applier,
        )

    def current_consumer(self) -> FakeConsumer:
        """The latest consumer made (the daemon's, once started)."""
        return self.broker.consumers[-1]

    def assigned_everything(self) -> bool:
        """The daemon's consumer is in the group and holds every partition not
        ``reserved`` for another member: the state a test waits for before it produces."""
        consumer = self.current_consumer()
        wanted = {tp for tp in self.broker.partitions if tp not in self.broker.reserved}
        return consumer.in_group and consumer.assignment() == wanted


def fake_edges(broker: FakeBroker, applier: FakeApplier | None = None) -> FakeEdges:
    return FakeEdges(
        broker=broker,
        producer=FakeProducer(broker),
        dead_letters=BrokerDeadLetterSink(broker),
        outcomes=BrokerOutcomeSink(broker),
        applier=applier or FakeApplier(),
    )


def fake_settings(database_url: str, **extra: Any) -> Settings:
    """Settings of a daemon over the fakes: short retry waits and probe interval, a
    bootstrap address nothing listens on (only the start-up diagnosis ever dials it)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "topic": "events",
        "dlq_topic": "events.dlq",
        "outcomes_topic": "events.outcomes",
        "group_id": "fake-group",
        "infra_retry_wait_initial_seconds": 0.002,
        "infra_retry_wait_max_seconds": 0.02,
        "probe_interval_seconds": 0.02,
        "request_timeout_seconds": 1.0,
        "shutdown_grace_seconds": 1.0,
        "health_port": 0,
        "read_api_port": 0,
    }
    values.update(extra)
    return load_settings(**values)


def migrated_sqlite(folder: Path) -> str:
    """A migrated SQLite database in ``folder`` for daemons over the fakes, with the retry
    hooks installed (what a daemon's start does before its first retry), for a module
    fixture: the schema is made once and each test works on consumers of its own."""
    url = f"sqlite+aiosqlite:///{folder / 'consumergen.sqlite3'}"
    asyncio.run(upgrade(fake_settings(url)))
    install_retry_hooks()
    return url


def produce_new_consumers(broker: FakeBroker, partition: int, count: int) -> None:
    """``count`` creating events on ``partition``, each for a consumer of its own, so
    every one is applied whatever else the test's database holds."""
    for _ in range(count):
        consumer = str(uuid.uuid4())
        doc = event_doc(consumer, project="p", user="u")
        broker.produce(partition, json.dumps(doc).encode(), consumer.encode())


@asynccontextmanager
async def daemon_over_fakes(
    settings: Settings, fakes: FakeEdges, *, health: bool = False
) -> AsyncIterator[Daemon]:
    """A ``Daemon`` over ``fakes`` as a task of this loop (its database's schema must be
    current: ``service.store.migrate.upgrade``); with ``health``, its /livez, /readyz
    and /metrics on ``settings.health_port`` (0: any free port, ``daemon.health.port``);
    stopped and awaited on exit, and a daemon that stopped on its own (a bug:
    ``Daemon.fatal``) fails the exit."""
    engine = create_engine(settings)
    daemon = Daemon(settings, engine, edges=fakes.edges)
    task = asyncio.create_task(daemon.run(health=health), name="daemon-over-fakes")
    try:
        yield daemon
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await fakes.broker.close()
            await engine.dispose()
        if daemon.fatal_error is not None:
            raise AssertionError(f"the daemon stopped on a bug: {daemon.fatal_error!r}")
