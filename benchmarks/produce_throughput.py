"""Produce throughput: the validated bulk path (``EventProducer.send_many``) against
aiokafka's raw ``send`` of the same pre-encoded values, same broker, same run.

    .venv/bin/python benchmarks/produce_throughput.py --bootstrap-server 127.0.0.1:19092 -n 50000

Creates two fresh topics (auto-creation is usually off) and prints events/s for both.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer

from service.config import load_settings
from service.domain.events import EventType
from service.kafka.clients import client_options
from service.kafka.topics import ensure_topics
from service.producer import EventProducer, new_event


async def main(bootstrap: str, count: int, partitions: int) -> None:
    base = f"bench-{uuid.uuid4().hex[:8]}"
    consumers = [str(uuid.uuid4()) for _ in range(1000)]
    events = [new_event(EventType.UPSERT, consumers[i % len(consumers)]) for i in range(count)]
    results = {}
    for name in ("raw", "bulk"):
        settings = load_settings(
            None,
            bootstrap_servers=bootstrap,
            topic=f"{base}-{name}",
            dlq_topic=f"{base}-{name}.dlq",
        )
        await ensure_topics(settings, partitions=partitions)
        if name == "raw":
            values = [(e.consumer_uuid.encode(), e.to_json_bytes()) for e in events]
            kafka = AIOKafkaProducer(
                **client_options(settings), enable_idempotence=True, acks="all", linger_ms=5
            )
            await kafka.start()
            started = time.perf_counter()
            futures = [await kafka.send(settings.topic, v, key=k) for k, v in values]
            await asyncio.gather(*futures)
            results[name] = time.perf_counter() - started
            await kafka.stop()
        else:
            async with EventProducer(settings) as producer:
                started = time.perf_counter()
                items = await producer.send_many(events)
                results[name] = time.perf_counter() - started
            assert all(item.ok for item in items)
    for name, seconds in results.items():
        print(f"{name:>4}: {count} events in {seconds:.2f} s = {count / seconds:,.0f} events/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap-server", default="127.0.0.1:9092")
    parser.add_argument("-n", "--count", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.bootstrap_server, args.count, args.partitions))
