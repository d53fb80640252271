"""Why each partition is paused (``service.daemon.pauses``), over a fake consumer
(``service.testing.fake_kafka``) that, as aiokafka's, refuses to pause or resume a
partition it does not hold.

What must hold: a partition is paused at the consumer at its first reason and resumed
only when no reason is left (one source recovering cannot resume a partition another
still holds); ``is_paused`` says whether any reason holds it (a paused partition is not a
stall); a partition not assigned (revoked meanwhile) keeps its reasons without the
consumer being asked, and ``forget`` drops them at a revocation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from service.daemon.pauses import Pauses
from service.testing.fake_kafka import FakeBroker, FakeConsumer
from service.testing.polling import poll


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


async def _member(broker: FakeBroker) -> FakeConsumer:
    """A consumer of the group, holding every partition not reserved."""
    consumer = FakeConsumer(broker)
    consumer.subscribe([broker.topic], _Listener())
    wanted = {tp for tp in broker.partitions if tp not in broker.reserved}
    await poll(lambda: consumer.assignment() == wanted, 5, "assigned", every=0.01)
    return consumer


def _pauses(consumer: FakeConsumer) -> Pauses:
    return Pauses(lambda: cast(AIOKafkaConsumer, consumer))


async def test_a_partition_resumes_only_when_its_last_reason_is_cleared() -> None:
    """Backpressure and a failing database both hold partition 0: the backpressure
    clearing does not resume it (the database still fails), the database's recovery
    does; partition 1, never paused, is untouched throughout."""
    broker = FakeBroker("events", 2)
    consumer = await _member(broker)
    tp0, tp1 = broker.partitions
    pauses = _pauses(consumer)
    try:
        assert not pauses.is_paused(tp0) and not pauses.is_paused(tp1)
        pauses.pause(tp0, "backpressure")
        assert consumer.paused() == {tp0}
        assert pauses.is_paused(tp0) and not pauses.is_paused(tp1)
        pauses.pause(tp0, "infrastructure")
        pauses.resume(tp0, "backpressure")
        assert consumer.paused() == {tp0}, "resumed while the database still holds it"
        assert pauses.is_paused(tp0)
        pauses.resume(tp0, "backpressure")  # a reason cleared twice: nothing more
        assert consumer.paused() == {tp0}
        pauses.resume(tp0, "infrastructure")
        assert consumer.paused() == set()
        assert not pauses.is_paused(tp0) and not pauses.is_paused(tp1)
    finally:
        await broker.close()


async def test_a_partition_not_assigned_keeps_its_reasons_without_asking_the_consumer() -> None:
    """Partition 1 is held by another member (revoked from this one meanwhile): pausing
    and resuming it must not ask the consumer (aiokafka's raises for a partition it does
    not hold), while its reasons are kept; ``forget`` (the revocation) drops them."""
    broker = FakeBroker("events", 2)
    tp0, tp1 = broker.partitions
    broker.reserved.add(tp1)
    consumer = await _member(broker)
    pauses = _pauses(consumer)
    try:
        pauses.pause(tp1, "backpressure")  # the consumer's pause would raise
        assert pauses.is_paused(tp1)
        assert consumer.paused() == set()
        pauses.pause(tp0, "backpressure")
        assert consumer.paused() == {tp0}
        pauses.forget(tp1)
        assert not pauses.is_paused(tp1)
        pauses.pause(tp1, "infrastructure")
        pauses.resume(tp1, "infrastructure")  # the consumer's resume would raise
        assert not pauses.is_paused(tp1)
        assert consumer.paused() == {tp0}
    finally:
        await broker.close()
