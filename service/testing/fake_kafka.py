"""The whole daemon without a broker: a fake broker and its consumers (the producer,
sinks and applier over it: ``service.testing.fake_edges``).

``fake_edges(broker)`` gives a ``service.daemon.ports.DaemonEdges``; ``Daemon(settings,
engine, edges=...)`` then runs its real fetch loop, membership, pauses, outage handling
and offset commits over them.  What the tests read is what a user of Kafka could see:
what was committed and when, which partitions a consumer had paused, which consumers
were stopped, what the sinks received in which order, what was applied.  Nothing here
reads the daemon's private state, so the daemon's pipeline may be rebuilt under it.

Every step a test may want to time or fail has a hook, an async callable awaited at that
step: ``FakeBroker.on_fetch`` (after a fetch took its records, before it returns: a
rebalance "while the fetch is in flight"), ``on_commit``, ``on_sink`` and
``FakeApplier.before_apply``.  A hook raises to fail the step (the exception a real
client would raise: ``KafkaConnectionError``, ``SinkUnavailable``,
``TransientDatabaseError``) or awaits to delay it (a gate, ``asyncio.sleep(0)``s).

The group is simplified: a member joins at ``subscribe``, and a rebalance (eager, as
aiokafka's) revokes every member's partitions through its listener and assigns the
partitions not ``reserved`` round-robin, each from its committed offset.
``revoke_only`` takes some partitions from one member without touching the others (an
incremental rebalance, or partitions handed to a member the test plays).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaConnectionError
from aiokafka.structs import ConsumerRecord

Hook = Callable[..., Awaitable[None]]


async def no_hook(*_: Any) -> None:
    return None


def fetched_record(
    tp: TopicPartition,
    offset: int,
    value: bytes | None,
    key: bytes | None = None,
    headers: Iterable[tuple[str, bytes]] = (),
) -> ConsumerRecord:
    """A record as aiokafka's consumer hands it out (no timestamp, no checksum): the one
    builder of the fakes and of tests that feed a worker by hand."""
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=list(headers),
    )


class FakeBroker:
    """One topic's partitions, the group's committed offsets and its members."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.logs: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in self.partitions}
        self.committed: dict[TopicPartition, int] = {}
        #: Every commit accepted, in order.
        self.commit_log: list[dict[TopicPartition, int]] = []
        self.up = True
        #: Partitions no consumer of the daemon gets (another member holds them).
        self.reserved: set[TopicPartition] = set()
        self.members: list[FakeConsumer] = []
        #: Every consumer made, in order.
        self.consumers: list[FakeConsumer] = []
        #: Fetches, commits and metadata requests that found the broker down.
        self.calls_while_down = 0
        self.on_fetch: Hook = no_hook
        self.on_commit: Hook = no_hook
        self.on_sink: Hook = no_hook
        self._appended: asyncio.Event | None = None
        self._rebalancing: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the test's side --------------------------------------------------------------
    def produce(self, partition: int, value: bytes, key: bytes | None = None) -> int:
        tp = self.partitions[partition]
        log = self.logs[tp]
        offset = len(log)
        log.append(fetched_record(tp, offset, value, key))
        self._data().set()
        return offset

    def go_down(self) -> None:
        self.up = False

    def come_up(self) -> None:
        self.up = True
        self._data().set()

    def end(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def all_committed(self) -> bool:
        return all(self.committed.get(tp, 0) >= self.end(tp) for tp in self.partitions)

    async def rebalance(self) -> None:
        """Eager: every member's partitions revoked, then all assigned anew.  A broker
        gone meanwhile ends it after the revocations: the members wait for an assignment
        that does not come (until a member joins once the broker is back)."""
        async with self._lock():
            members = [m for m in self.members if m.in_group]
            for member in members:
                member._reassigning()
            for member in members:
                await member._revoke(member.assignment())
            if not self.up:
                return
            free = [tp for tp in self.partitions if tp not in self.reserved]
            for i, member in enumerate(members):
                await member._assign(free[i :: len(members)])

    async def revoke_only(self, member: FakeConsumer, tps: Iterable[TopicPartition]) -> None:
        """Take ``tps`` from ``member`` (to a member the test plays); the rest stay."""
        async with self._lock():
            taken = set(tps) & member.assignment()
            self.reserved |= taken
            await member._revoke(taken)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the consumers' side ----------------------------------------------------------
    def _data(self) -> asyncio.Event:
        if self._appended is None:
            self._appended = asyncio.Event()
        return self._appended

    def _lock(self) -> asyncio.Lock:
        if self._rebalancing is None:
            self._rebalancing = asyncio.Lock()
        return self._rebalancing

    def _join(self, member: FakeConsumer) -> None:
        self.members.append(member)
        self._soon(self.rebalance())

    def _leave(self, member: FakeConsumer) -> None:
        if member in self.members:
            self.members.remove(member)
            if self.up and self.members:
                self._soon(self.rebalance())

    def _soon(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name="fake-broker")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reachable(self) -> None:
        if not self.up:
            self.calls_while_down += 1
            raise KafkaConnectionError("fake broker is down")


class FakeConsumer:
    """The part of ``AIOKafkaConsumer`` the daemon uses, over a ``FakeBroker``."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.started = False
        self.stopped = False
        self.in_group = False
        self.listener: ConsumerRebalanceListener | None = None
        self._assigned: dict[TopicPartition, int] = {}  # partition -> position
        self._paused: set[TopicPartition] = set()
        self._fetched: set[TopicPartition] = set()
        #: Set while an assignment is in place; clear from joining (or a rebalance's
        #: start) until the next one, as aiokafka's ``reassignment_in_progress``.
        self._assignment_set = asyncio.Event()
        #: Fetches made while the broker was down.
        self.fetches_while_down = 0
        broker.consumers.append(self)

    async def start(self) -> None:
        if not self.broker.up:
            raise KafkaConnectionError("fake broker is down")
        self.started = True

    async def stop(self) -> None:
        """Leave the group.  While the broker is down it ends with ``CancelledError``
        although nobody cancelled the caller, as aiokafka's does when its fetcher still
        had a request pending (aio-libs/aiokafka#647): the consumer is closed all the
        same."""
        self.stopped = True
        if self.in_group:
            self.in_group = False
            self.broker._leave(self)
        self._assigned.clear()
        if not self.broker.up and self.started:
            raise asyncio.CancelledError()

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        assert topics == [self.broker.topic], topics
        self.listener = listener
        self.in_group = True
        self.broker._join(self)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._assigned_or_fail(tp)
            self._paused.add(tp)

    def resume(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._assigned_or_fail(tp)
            self._paused.discard(tp)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """As aiokafka 0.14's (``Fetcher.fetched_records``): records at once if there
        are; else wait up to ``timeout_ms`` for some, and when woken by data (not by the
        timeout) look again, first waiting, without a bound, for the assignment if a
        rebalance is in progress.  A consumer stopped meanwhile does not end that wait."""
        if self.stopped:
            raise ConsumerStoppedError()
        broker = self.broker
        if not broker.up:
            self.fetches_while_down += 1
            broker.calls_while_down += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            await self._assignment_set.wait()
            data = broker._data()
            data.clear()
            fetched = self._take(max_records)
            remaining = deadline - loop.time()
            if fetched or remaining <= 0:
                break
            try:
                await asyncio.wait_for(data.wait(), remaining)
            except TimeoutError:
                return {}
            if self.stopped:
                return {}
        if fetched:
            await broker.on_fetch(self, fetched)
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        broker = self.broker
        broker._reachable()
        await broker.on_commit(self, offsets)
        broker._reachable()
        for tp in offsets:
            if tp not in self._assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        broker.committed.update(offsets)
        broker.commit_log.append(dict(offsets))

    async def topics(self) -> set[str]:
        self.broker._reachable()
        return {self.broker.topic}

    async def position(self, tp: TopicPartition) -> int:
        self._assigned_or_fail(tp)
        return self._assigned[tp]

    @property
    def reassignment_in_progress(self) -> bool:
        """Between joining (or a rebalance's start) and the next assignment."""
        return not self._assignment_set.is_set()

    def position_of(self, tp: TopicPartition) -> int | None:
        """The next offset a fetch of ``tp`` reads (None: not assigned); for tests."""
        return self._assigned.get(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """As aiokafka's: known once a fetch of ``tp`` has returned (None before)."""
        return self.broker.end(tp) if tp in self._fetched else None

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.broker._reachable()
        return {tp: self.broker.end(tp) for tp in tps}

    async def committed(self, tp: TopicPartition) -> int | None:
        self.broker._reachable()
        return self.broker.committed.get(tp)

    # -- the group's side -------------------------------------------------------------
    def _take(self, max_records: int | None) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self.broker.up or self.stopped:
            return {}
        room = max_records or 1_000_000
        fetched: dict[TopicPartition, list[ConsumerRecord]] = {}
        for tp, position in self._assigned.items():
            if tp in self._paused or room <= 0:
                continue
            records = self.broker.logs[tp][position : position + room]
            self._fetched.add(tp)
            if records:
                fetched[tp] = records
                self._assigned[tp] = position + len(records)
                room -= len(records)
        return fetched

    def _assigned_or_fail(self, tp: TopicPartition) -> None:
        if tp not in self._assigned:
            raise IllegalStateError(f"No current assignment for partition {tp}")

    def _reassigning(self) -> None:
        self._assignment_set.clear()

    async def _revoke(self, tps: set[TopicPartition]) -> None:
        if self.listener is not None:
            await self.listener.on_partitions_revoked(set(tps))
        for tp in tps:
            self._assigned.pop(tp, None)
            self._paused.discard(tp)

    async def _assign(self, tps: list[TopicPartition]) -> None:
        if not self.in_group:
            return
        for tp in tps:
            self._assigned[tp] = self.broker.committed.get(tp, 0)
        self._assignment_set.set()
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(tps))
        self.broker._data().set()
