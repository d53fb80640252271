"""``python -m benchmarks tracing``: the daemon's CPU per event with tracing off, at 100%
and at 1% sampling (issue 23).

One backlog of the seeded mix is produced before any daemon starts; then, interleaved
(off, 100%, 1%, off, ... so that the shared machine's load falls on every mode alike),
one daemon (``python -m service run``, outcomes topic on, SQLite, default settings) works
through the whole backlog in a fresh group and database, and its process CPU from the
partitions' assignment to the last commit is divided by the events.  Tracing is set by
the standard variables only: ``OTEL_TRACES_EXPORTER=otlp`` to an OTLP/HTTP receiver in
this process (so the export, protobuf encoding and HTTP included, is paid by the daemon
as with a real collector), ``OTEL_TRACES_SAMPLER=parentbased_always_on`` or
``parentbased_traceidratio`` with ``0.01``.  The backlog's producer does not trace, so
each batch span is a root and the ratio applies to it, its event spans following; in the
last mode every record carries a ``traceparent`` (random ids, sampled one time in a
hundred, as from producers tracing at 1%), so the daemon extracts each one, makes a span
for each (recording 1%) and puts its context on each outcome record.  Every run is
checked against the independent model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

from benchmarks import report
from benchmarks.backlog import _backlog
from benchmarks.infra import Infra, machine_description
from benchmarks.measure import PARTITIONS, daemon_run, write_json
from benchmarks.workload import Workload, encode

RATIO_1 = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
#: mode -> (the daemon's sampling variables, whether the backlog's records carry a context)
MODES: dict[str, tuple[dict[str, str], bool]] = {
    "off": ({}, False),
    "100%": ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, False),
    "1%": (RATIO_1, False),
    "1%, producers tracing at 1%": (RATIO_1, True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")


def say(text: str) -> None:
    print(text, flush=True)


class Receiver:
    """An OTLP/HTTP endpoint that counts what it is sent (as a collector would take it)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.bytes += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    infra = Infra().start(postgres=False)
    receiver = Receiver()
    await receiver.start()
    try:
        return await _run(args, infra, receiver)
    finally:
        await receiver.stop()
        await infra.close_admin()
        infra.stop()


async def _run(args: argparse.Namespace, infra: Infra, receiver: Receiver) -> dict[str, Any]:
    began = time.monotonic()
    load_before = os.getloadavg()
    topic, model, rate = await _backlog(infra, args.events, args.consumers, args.seed)
    say(f"backlog of {args.events:,} events produced at {rate:,.0f} events/s")
    traced_topic = await _traced_backlog(infra, args.events, args.consumers, args.seed)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeat):
        for mode, (variables, carried) in MODES.items():
            env = {}
            if variables:
                env = {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                    **variables,
                }
            requests_before, bytes_before = receiver.requests, receiver.bytes
            saved = {name: os.environ.get(name) for name in env}
            os.environ.update(env)
            try:
                source = traced_topic if carried else topic
                done = await _daemon_run(infra, source, args.events, model)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
            if not done.verified:
                raise SystemExit("the daemon's database does not match the model")
            entry = {
                "cpu_us_per_event": done.cpu_us_per_event(args.events),
                "rate": done.rate,
                "export_requests": receiver.requests - requests_before,
                "export_kib": (receiver.bytes - bytes_before) / 1024,
            }
            runs[mode].append(entry)
            say(
                f"[{repeat + 1}/{args.repeat} {mode}] {entry['cpu_us_per_event']:.0f} µs/event, "
                f"{done.rate:,.0f} events/s, {entry['export_requests']} OTLP requests "
                f"({entry['export_kib']:,.0f} KiB)"
            )
    results = {
        "machine": machine_description(False),
        "events": args.events,
        "repeat": args.repeat,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "runs": runs,
        "seconds": time.monotonic() - began,
    }
    write_json(args.json, results)
    say(table(results))
    if not args.no_docs:
        write_docs(results, args)
    return results


async def _traced_backlog(infra: Infra, size: int, consumers: int, seed: int) -> str:
    """The same backlog (same seed: the same events and model), each record with a
    ``traceparent`` of random ids, sampled one time in a hundred."""
    topic = await infra.new_topic(f"traced-{size}", PARTITIONS)
    workload = Workload(consumers=consumers, seed=seed)
    draw = random.Random(seed)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        for start in range(0, size, 5_000):
            futures = []
            for _ in range(min(5_000, size - start)):
                key, value = encode(workload.next())
                flags = "01" if draw.random() < 0.01 else "00"
                parent = f"00-{draw.getrandbits(128):032x}-{draw.getrandbits(64):016x}-{flags}"
                headers = [("traceparent", parent.encode())]
                futures.append(await producer.send(topic, key=key, value=value, headers=headers))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topic


async def _daemon_run(infra: Infra, topic: str, events: int, model: Any) -> Any:
    """One run; again once if the daemon could not bind a port (DaemonProcess picks its
    two ports free but does not hold them, so another process may take one first)."""
    for attempt in (1, 2):
        try:
            return await daemon_run(
                infra, topic, "sqlite", events, model, outcomes=True, label="tracing"
            )
        except RuntimeError as exc:
            if attempt == 2 or "address already in use" not in str(exc):
                raise
            say("the daemon could not bind its port (taken meanwhile): run again")
    raise AssertionError("unreachable")


def table(results: dict[str, Any]) -> str:
    lines = [
        "| tracing | CPU µs/event (median) | runs | events/s (median) | OTLP export per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, entries in results["runs"].items():
        cpu = [e["cpu_us_per_event"] for e in entries]
        rate = [e["rate"] for e in entries]
        kib = statistics.median(e["export_kib"] for e in entries)
        lines.append(
            f"| {mode} | **{statistics.median(cpu):.0f}** | "
            f"{', '.join(f'{c:.0f}' for c in cpu)} | {statistics.median(rate):,.0f} | "
            f"{kib:,.0f} KiB |"
        )
    return "\n".join(lines)


def write_docs(results: dict[str, Any], args: argparse.Namespace) -> None:
    machine = results["machine"]
    before = ", ".join(f"{v:.2f}" for v in results["load_before"])
    after = ", ".join(f"{v:.2f}" for v in results["load_after"])
    command = f"python -m benchmarks tracing --events {args.events} --repeat {args.repeat}"
    body = f"""## Tracing cost (`{command}`)

Run of {machine["date"]}: a backlog of {results["events"]:,} events (seeded mix) worked
through by one daemon (SQLite, outcomes topic on, default settings) per run, {args.repeat}
runs per mode, interleaved; tracing by the standard variables only, exported over OTLP/HTTP
to a receiver in the benchmark's process (`benchmarks/tracing_cost.py` says how).  CPU is
the daemon process's, all threads, from the assignment to the last commit, per event.
Load average (1, 5, 15 min) before {before}, after {after}: the machine is shared, so
compare the modes within this run.

{table(results)}

Where 100% goes: every event is one more span, created, given its attributes and ended on
the event loop, and exported on the SDK's own thread (copied by the redacting exporter,
encoded as OTLP protobuf, POSTed 512 spans at a time); all of it is the daemon's CPU.  At
1% the batch spans are sampled roots and nothing is made for the 99%'s records (no
context, no span); with producers tracing at 1% each record's context is extracted and put
on its outcome record, and only the sampled ones get a span.  Without the `traces` extra,
or with `OTEL_TRACES_EXPORTER` unset, the daemon makes one check per batch ("off").

Machine:

{report.machine_table(machine)}
"""
    report.update_section("tracing", body)
