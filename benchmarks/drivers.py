"""How a benchmark offers its load to the daemon: the two kinds of producer users have.

* ``per-request``: applications that send one event at a time (a request handler that
  changes one consumer): ``linger.ms`` 0 and one send awaited before the next, each
  application with its own producer.  Enough applications (``apps``) share the offered
  rate that none has to send faster than its acknowledgements come back; every key
  belongs to one application, so a consumer's events reach Kafka in the order the
  workload made them (the independent model still holds).
* ``batching``: one producer that hands over everything due every few milliseconds
  without awaiting each send, so the client batches what is handed over while a request
  is in flight (``linger_ms`` 0 unless asked): a bulk loader.

Both report each sent event through ``on_sent(sequence, partition, offset, produced,
acked)``
(``time.time()`` seconds: the daemon's timeline uses the same clock), and stop after
``seconds``; the caller matches the events with what the daemon did by partition and
offset.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaProducer

from benchmarks.workload import Record

Mode = Literal["per-request", "batching"]
MODES: tuple[Mode, ...] = ("per-request", "batching")
#: (sequence, partition, offset, produced, acked); the last two are ``time.time()`` s.
OnSent = Callable[[int, int, int, float, float], None]
#: The headers to send with an event (reply headers), given its sequence number.
Headers = Callable[[int], list[tuple[str, bytes]]]

#: Events per second one per-request application is asked to send at most (an
#: acknowledgement takes a few ms; an application asked for more would queue).
PER_APP_RATE = 50.0


@dataclass
class Offered:
    """What a driver sent: how many events, and how fast it managed."""

    events: int
    achieved: float


def _no_headers(_: int) -> list[tuple[str, bytes]]:
    return []


async def drive(
    mode: Mode,
    bootstrap: str,
    topic: str,
    records: Iterator[Record],
    *,
    rate: float,
    seconds: float,
    on_sent: OnSent,
    headers: Headers = _no_headers,
    batching_linger_ms: int = 0,
) -> Offered:
    """Offer ``rate`` events/s of ``records`` to ``topic`` for ``seconds``."""
    if mode == "per-request":
        return await _per_request(bootstrap, topic, records, rate, seconds, on_sent, headers)
    return await _batching(
        bootstrap, topic, records, rate, seconds, on_sent, headers, batching_linger_ms
    )


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms
    )


async def _per_request(
    bootstrap: str,
    topic: str,
    records: Iterator[Record],
    rate: float,
    seconds: float,
    on_sent: OnSent,
    headers: Headers,
) -> Offered:
    apps = max(1, math.ceil(rate / PER_APP_RATE))
    producers = [_producer(bootstrap, 0) for _ in range(apps)]
    await asyncio.gather(*(p.start() for p in producers))
    queues: list[asyncio.Queue[tuple[int, Record] | None]] = [asyncio.Queue() for _ in range(apps)]
    sent = 0

    async def app(producer: AIOKafkaProducer, queue: asyncio.Queue[Any]) -> None:
        nonlocal sent
        while (item := await queue.get()) is not None:
            sequence, (key, value) = item
            produced = time.time()
            metadata = await producer.send_and_wait(
                topic, value, key=key, headers=headers(sequence)
            )
            on_sent(sequence, metadata.partition, metadata.offset, produced, time.time())
            sent += 1

    tasks = [asyncio.create_task(app(p, q)) for p, q in zip(producers, queues, strict=True)]
    try:
        began = time.monotonic()
        due_total = int(rate * seconds)
        handed = 0
        while handed < due_total:
            due = min(due_total, int((time.monotonic() - began) * rate) + 1)
            while handed < due:
                key, value = next(records)
                # a key's events always go to one application, in order
                queues[zlib.crc32(key) % apps].put_nowait((handed, (key, value)))
                handed += 1
            await asyncio.sleep(0.001)
        for queue in queues:
            queue.put_nowait(None)
        await asyncio.gather(*tasks)
        return Offered(sent, sent / (time.monotonic() - began))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)


async def _batching(
    bootstrap: str,
    topic: str,
    records: Iterator[Record],
    rate: float,
    seconds: float,
    on_sent: OnSent,
    headers: Headers,
    linger_ms: int,
) -> Offered:
    producer = _producer(bootstrap, linger_ms)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        began = time.monotonic()
        due_total = int(rate * seconds)
        handed = 0
        while handed < due_total:
            due = min(due_total, int((time.monotonic() - began) * rate) + 1)
            while handed < due:
                key, value = next(records)
                produced = time.time()
                future = await producer.send(topic, value, key=key, headers=headers(handed))
                future.add_done_callback(_acked(on_sent, handed, produced))
                pending.append(future)
                handed += 1
            if len(pending) > 5_000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        return Offered(handed, handed / (time.monotonic() - began))
    finally:
        await producer.stop()


def _acked(
    on_sent: OnSent, sequence: int, produced: float
) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        metadata = future.result()
        on_sent(sequence, metadata.partition, metadata.offset, produced, time.time())

    return done
