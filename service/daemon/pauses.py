"""Why each partition is paused at the consumer; it resumes when no reason is left.

Two sources pause a partition independently: backpressure (its worker has too much
queued) and a failing step of its worker (infrastructure).  Each clears only its own
reason, so one recovering cannot resume a partition another still holds.  A broker that
is away pauses nothing here: the clients are parked instead (``daemon.outage``).
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition


class Pauses:
    def __init__(self, consumer: Callable[[], AIOKafkaConsumer]) -> None:
        self._consumer = consumer
        self._reasons: dict[TopicPartition, set[str]] = {}

    def pause(self, tp: TopicPartition, why: str) -> None:
        reasons = self._reasons.setdefault(tp, set())
        consumer = self._consumer()
        if not reasons and tp in consumer.assignment():
            consumer.pause(tp)
        reasons.add(why)

    def resume(self, tp: TopicPartition, why: str) -> None:
        reasons = self._reasons.get(tp)
        if not reasons or why not in reasons:
            return
        reasons.discard(why)
        consumer = self._consumer()
        if not reasons and tp in consumer.assignment():
            consumer.resume(tp)

    def is_paused(self, tp: TopicPartition) -> bool:
        """Held by any reason (a paused partition is not a stall: ``daemon.stalls``)."""
        return bool(self._reasons.get(tp))

    def forget(self, tp: TopicPartition) -> None:
        """The partition was revoked: its reasons go with it."""
        self._reasons.pop(tp, None)
