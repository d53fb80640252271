"""``python -m benchmarks outcome-wait``: how long a producer waits for its outcome
(request-reply, send to outcome, at offered rates) and how many reads a second the read
API serves.

One daemon process (SQLite or PostgreSQL) with a reply topic; one producer sends
creates paced at each ``--rate`` for ``--seconds``, each as a request, and times it
from just before the send to the outcome in hand.  Then ``--readers`` concurrent HTTP
clients read existing consumers for ``--seconds``.  Every run is repeated
``--repeats`` times; the table gives each run, so the spread is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import report
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import percentile, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--readers", type=int, default=200, help="concurrent HTTP clients")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-docs", action="store_true")


def say(text: str) -> None:
    print(text, flush=True)


async def _waits(settings: Any, rate: float, seconds: float) -> dict[str, Any]:
    from service.domain.events import EventType
    from service.producer import EventProducer, OutcomeTimeout, ProduceError, new_event

    latencies: list[float] = []
    failures = 0
    async with EventProducer(settings) as producer:
        await producer.replies()

        async def one() -> None:
            nonlocal failures
            event = new_event(EventType.UPSERT, str(uuid.uuid4()), expected_generation=None)
            began = time.perf_counter()
            try:
                outcome = await (await producer.request(event)).outcome(60)
            except (ProduceError, OutcomeTimeout):  # counted: a run reports, never dies
                failures += 1
                return
            latencies.append((time.perf_counter() - began) * 1000)
            failures += not outcome.ok

        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for index in range(total):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "events": len(latencies),
        "achieved": len(latencies) / elapsed,
        "failures": failures,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
    }


async def _reads(port: int, uuids: list[str], readers: int, seconds: float) -> dict[str, Any]:
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def reader(index: int) -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                uuid_ = uuids[(index + done) % len(uuids)]
                async with session.get(f"http://127.0.0.1:{port}/v1/consumers/{uuid_}") as r:
                    await r.read()
                    errors += r.status != 200
                    done += 1

        began = time.perf_counter()
        await asyncio.gather(*(reader(i) for i in range(readers)))
        elapsed = time.perf_counter() - began
    return {"requests": done, "per_second": done / elapsed, "errors": errors}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from service.config import load_settings
    from service.embedded.process import free_port
    from service.store.migrate import upgrade
    from service.testing.database import consumer_state

    load_before = os.getloadavg()[0]
    infra = Infra().start(postgres=args.db == "postgres")
    waits: list[dict[str, Any]] = []
    reads: list[dict[str, Any]] = []
    try:
        url = await infra.fresh_database(args.db)
        await upgrade(url)
        topic = await infra.new_topic("events", 6)
        replies = await infra.new_topic("replies", 4)
        read_port = free_port()
        daemon = infra.daemon(
            f"wait-{args.db}",
            database_url=url,
            topic=topic,
            dlq_topic=await infra.new_topic("dlq", 1),
            outcomes_topic=await infra.new_topic("outcomes", 6),
            reply_topic=replies,
            read_api_port=read_port,
            group_id=f"wait-{uuid.uuid4().hex[:8]}",
        ).start()
        await daemon.wait_assigned()
        settings = load_settings(
            bootstrap_servers=infra.bootstrap, topic=topic, reply_topic=replies
        )
        for repeat in range(args.repeats):
            for rate in args.rates:
                result = await _waits(settings, rate, args.seconds) | {"run": repeat + 1}
                say(
                    f"run {repeat + 1}, {rate:,.0f} ev/s offered: p50 {result['p50']:.1f} ms, "
                    f"p99 {result['p99']:.1f} ms, {result['achieved']:,.0f} ev/s achieved"
                )
                waits.append(result)
        uuids = list(await consumer_state(url))[:5000]
        for repeat in range(args.repeats):
            result = await _reads(read_port, uuids, args.readers, args.seconds)
            say(f"run {repeat + 1}, reads: {result['per_second']:,.0f} req/s")
            reads.append(result | {"run": repeat + 1})
        await daemon.terminate()
    finally:
        await infra.close_admin()
        infra.stop()
    results = {
        "machine": machine_description(args.db == "postgres"),
        "db": args.db,
        "seconds": args.seconds,
        "readers": args.readers,
        "waits": waits,
        "reads": reads,
        "load": [load_before, os.getloadavg()[0]],
    }
    if args.json:
        write_json(args.json, results)
    if not args.no_docs:
        report.update_section("outcome-wait", _section(results, args))
    return results


def _section(results: dict[str, Any], args: argparse.Namespace) -> str:
    machine = results["machine"]
    rows = "\n".join(
        f"| {w['run']} | {w['rate']:,.0f} | {w['achieved']:,.0f} | {w['events']:,} | "
        f"{w['p50']:.1f} | {w['p99']:.1f} | {w['max']:.1f} | {w['failures']} |"
        for w in sorted(results["waits"], key=lambda w: (w["rate"], w["run"]))
    )
    read_rows = "\n".join(
        f"| {r['run']} | {r['per_second']:,.0f} | {r['requests']:,} | {r['errors']} |"
        for r in results["reads"]
    )
    rates = " ".join(f"{rate:g}" for rate in args.rates)
    return f"""## Outcome wait and the read API

`python -m benchmarks outcome-wait --db {results["db"]} --rates {rates} --seconds \
{args.seconds:g} --repeats {args.repeats} --readers {args.readers}`, on {machine.get("cpu", "?")}
({machine.get("cores", "?")} cores; the machine was shared with other work while this ran:
1-minute load average {results["load"][0]:.1f} before and {results["load"][1]:.1f} after,
so read the spread, not one number).  One daemon process on {results["db"]}; one producer
sends creates paced at the offered rate, each as a request (`EventProducer.request`),
timed from just before the send to the outcome in hand (its own reply partition).

| run | offered ev/s | achieved ev/s | outcomes | p50 ms | p99 ms | max ms | failed or not applied |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Read API (`GET /v1/consumers/{{uuid}}`, {results["readers"]} concurrent clients on one
host, daemon idle, {args.seconds:g} s per run):

| run | requests/s | requests | errors |
| --- | --- | --- | --- |
{read_rows}
"""
