"""``python -m benchmarks timeline``: where each millisecond of an event's latency goes.

For every event of a run, the wall-clock time at each boundary: produced and acknowledged
(the benchmark's producer), fetched, admitted, transaction committed, outcome
acknowledged and offset committed (the daemon's own stamps, ``CONSUMERGEN_TIMELINE_FILE``,
``service.daemon.timeline``), reply in hand (the benchmark's reply reader, the product's
``ReplyListener`` on the reply topic).  Per step, p50 and p99 of the deltas, next to the
floor measured in the same run on the same machine: a Kafka produce (acks=all, linger 0)
to its acknowledgement, a produce-to-consume hop, an offset commit, a 4 KiB write+fsync
in the folder the SQLite files live in.

Loads: ``idle`` (``EventProducer.send_and_wait``, one event at a time, a pause between),
then each ``--rate`` offered by both kinds of producer (``benchmarks.drivers``): one
record per request, and batching.  Each load gets a fresh daemon, topics and database,
checked against the independent model at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks import report
from benchmarks.drivers import MODES, drive
from benchmarks.infra import Infra, machine_description
from benchmarks.latency import daemon_settings
from benchmarks.measure import PARTITIONS, percentile, verify, write_json
from benchmarks.workload import Workload

#: (label, from boundary, to boundary): the critical path first, then what is off it.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("produced → fetched", "produced", "fetched"),
    ("fetched → admitted", "fetched", "admitted"),
    ("admitted → transaction committed", "admitted", "committed"),
    ("transaction committed → outcome acknowledged", "committed", "acknowledged"),
    ("outcome acknowledged → reply in hand", "acknowledged", "reply"),
    ("produced → outcome acknowledged (event → outcome record)", "produced", "acknowledged"),
    ("produced → reply in hand (the whole loop)", "produced", "reply"),
    ("produced → producer's ack (beside the path)", "produced", "acked"),
    ("outcome acknowledged → offset committed (off the path)", "acknowledged", "offset"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rate", type=float, action="append", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-events", type=int, default=100)
    parser.add_argument("--idle-gap", type=float, default=0.05, help="seconds between events")
    parser.add_argument("--floor-samples", type=int, default=200)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every load this many times (the spread)"
    )
    parser.add_argument("--consumers", type=int, default=2_000)
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SETTING=VALUE", help="a daemon setting"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-docs", action="store_true")


def say(text: str) -> None:
    print(text, flush=True)


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}


# --- the floor ---------------------------------------------------------------------------


async def measure_floor(infra: Infra, samples: int) -> dict[str, dict[str, float]]:
    """The physical floor of this machine now: Kafka ack, hop, commit; disk sync (ms)."""
    topic = await infra.new_topic("floor", 1)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.bootstrap,
        group_id=f"floor-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        fetch_max_wait_ms=500,
    )
    await producer.start()
    await consumer.start()
    acks: list[float] = []
    hops: list[float] = []
    commits: list[float] = []
    try:
        for _ in range(samples):
            began = time.perf_counter()
            await producer.send_and_wait(topic, b"x" * 600)
            acks.append((time.perf_counter() - began) * 1000)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        for _ in range(samples):
            getting = asyncio.ensure_future(consumer.getmany(tp, timeout_ms=2_000))
            await asyncio.sleep(0.005)  # the fetch is waiting at the broker
            began = time.perf_counter()
            await producer.send(topic, b"x" * 600)
            got = await getting
            if got:
                hops.append((time.perf_counter() - began) * 1000)
        for index in range(samples):
            began = time.perf_counter()
            await consumer.commit({tp: index})
            commits.append((time.perf_counter() - began) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    syncs = await asyncio.to_thread(_fsyncs, infra.root / "fsync-probe", samples)
    return {
        "produce (acks=all, linger 0) → ack": _spread(acks),
        "produce → consume hop": _spread(hops),
        "offset commit": _spread(commits),
        "4 KiB write + fsync": _spread(syncs),
    }


def _fsyncs(path: Path, samples: int) -> list[float]:
    block = os.urandom(4096)
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(samples):
            began = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter() - began) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return times


# --- one load --------------------------------------------------------------------------


@dataclass
class Events:
    """Each event's stamps (``time.time()`` s), keyed by (partition, offset)."""

    stamps: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    #: sequence -> (partition, offset), for matching replies sent by sequence.
    where: dict[int, tuple[int, int]] = field(default_factory=dict)
    replies: dict[int, float] = field(default_factory=dict)

    def sent(
        self, sequence: int, partition: int, offset: int, produced: float, acked: float
    ) -> None:
        self.where[sequence] = (partition, offset)
        self.stamps[(partition, offset)] = {"produced": produced, "acked": acked}

    def replied(self, sequence: int) -> Callable[[object], None]:
        def done(_: object) -> None:
            self.replies[sequence] = time.time()

        return done

    def joined(self, daemon: dict[tuple[int, int], dict[str, float]]) -> list[dict[str, float]]:
        for sequence, moment in self.replies.items():
            place = self.where.get(sequence)
            if place is not None:
                self.stamps[place]["reply"] = moment
        return [stamps | daemon.get(place, {}) for place, stamps in self.stamps.items()]


async def one_load(
    infra: Infra,
    db: str,
    label: str,
    *,
    rate: float | None,
    mode: str,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    from service.config import load_settings
    from service.contract.replies import request_headers
    from service.daemon.timeline import read_timeline
    from service.producer.replies import ReplyListener
    from service.store.migrate import upgrade

    url = await infra.fresh_database(db)
    await upgrade(url)
    topic = await infra.new_topic("timeline", PARTITIONS)
    replies_topic = await infra.new_topic("replies", 1)
    stamps_file = infra.root / f"timeline-{uuid.uuid4().hex[:8]}.csv"
    group = f"timeline-{uuid.uuid4().hex[:8]}"
    daemon = infra.daemon(
        f"timeline-{db}-{label.replace('/s', 'ps')}-{mode}",
        database_url=url,
        topic=topic,
        dlq_topic=await infra.new_topic("dlq", 1),
        outcomes_topic=await infra.new_topic("outcomes", PARTITIONS),
        reply_topic=replies_topic,
        group_id=group,
        timeline_file=stamps_file,
        **daemon_settings(args.set),
    ).start()
    workload = Workload(consumers=args.consumers, seed=seed)
    events = Events()
    settings = load_settings(
        bootstrap_servers=infra.bootstrap, topic=topic, reply_topic=replies_topic
    )
    try:
        await daemon.wait_assigned()
        cpu_before = daemon.cpu_seconds()
        began = time.monotonic()
        if rate is None:
            sent = await _idle(settings, workload, events, args)
        else:
            listener = ReplyListener(settings, 0)
            await listener.start()
            try:

                def headers(sequence: int) -> list[tuple[str, bytes]]:
                    correlation = sequence.to_bytes(8, "big")
                    future = listener.expect(correlation)
                    future.add_done_callback(events.replied(sequence))
                    return request_headers(replies_topic, 0, correlation)

                offered = await drive(
                    mode,  # type: ignore[arg-type]
                    infra.bootstrap,
                    topic,
                    workload.records(),
                    rate=rate,
                    seconds=args.seconds,
                    on_sent=events.sent,
                    headers=headers,
                )
                sent = offered.events
                deadline = time.monotonic() + 120
                while len(events.replies) < sent and time.monotonic() < deadline:
                    daemon.check_alive()
                    await asyncio.sleep(0.05)
            finally:
                await listener.close()
        elapsed = time.monotonic() - began
        deadline = time.monotonic() + 60
        while await infra.committed_total(group, topic) < sent:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not commit every offset")
            await asyncio.sleep(0.1)
        cpu = daemon.cpu_seconds() - cpu_before
    finally:
        await daemon.terminate()
    verified = await verify(url, workload.belief)
    await infra.drop_database(url)
    rows = events.joined(read_timeline(stamps_file) if stamps_file.exists() else {})
    steps: dict[str, dict[str, float]] = {}
    for name, start, end in STEPS:
        deltas = [(row[end] - row[start]) * 1000 for row in rows if start in row and end in row]
        steps[name] = _spread(deltas)
    return {
        "db": db,
        "load": label,
        "mode": mode,
        "offered": rate,
        "achieved": sent / elapsed if elapsed else 0.0,
        "events": sent,
        "replies": len(events.replies),
        "cpu_us_per_event": cpu / sent * 1e6 if sent else float("nan"),
        "verified": verified,
        "steps": steps,
        "load_average": os.getloadavg()[0],
    }


async def _idle(settings: Any, workload: Workload, events: Events, args: argparse.Namespace) -> int:
    """``EventProducer.send_and_wait``, one event at a time, ``--idle-gap`` apart."""
    from service.producer import EventProducer

    async with EventProducer(settings) as producer:
        await producer.replies()
        for sequence in range(args.idle_events):
            doc = workload.next()
            produced = time.time()
            pending = await producer.request(doc)
            acked = time.time()
            outcome = await pending.outcome(60)
            events.replies[sequence] = time.time()
            events.sent(sequence, outcome.source.partition, outcome.source.offset, produced, acked)
            await asyncio.sleep(args.idle_gap)
    count: int = args.idle_events
    return count


# --- the run ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    rates = args.rate or [1_000.0, 5_000.0]
    modes = list(MODES) if args.mode == "both" else [args.mode]
    load_before = os.getloadavg()[0]
    infra = Infra().start(postgres="postgres" in dbs)
    results: dict[str, Any] = {"machine": machine_description("postgres" in dbs), "runs": []}
    try:
        floor = await measure_floor(infra, args.floor_samples)
        results["floor"] = floor
        for name, spread in floor.items():
            say(f"[floor] {name}: p50 {spread['p50']:.2f} ms, p99 {spread['p99']:.2f} ms")
        loads: list[tuple[str, float | None, str]] = [("idle", None, "send_and_wait")]
        loads += [(f"{rate:g}/s", rate, mode) for rate in rates for mode in modes]
        # Repeats go round every load in turn, so a slow minute of the machine spreads
        # over all columns rather than landing on one.
        for repeat in range(args.repeat):
            for db in dbs:
                for index, (label, rate, mode) in enumerate(loads):
                    result = await one_load(
                        infra, db, label, rate=rate, mode=mode, args=args, seed=3_000 + index
                    )
                    result["repeat"] = repeat
                    results["runs"].append(result)
                    _print_run(result)
    finally:
        await infra.close_admin()
        infra.stop()
    results["load"] = [load_before, os.getloadavg()[0]]
    write_json(args.json, results)
    if not args.no_docs:
        report.update_section("timeline", section(results, args))
    return results


def _print_run(result: dict[str, Any]) -> None:
    say(
        f"[{result['db']} {result['load']} {result['mode']}] {result['events']} events at "
        f"{result['achieved']:,.0f}/s, {result['replies']} replies, daemon CPU "
        f"{result['cpu_us_per_event']:.0f} µs/event, model "
        f"{'==' if result['verified'] else '!='} database"
    )
    for name, spread in result["steps"].items():
        say(f"    {name:58} p50 {spread['p50']:8.2f}  p99 {spread['p99']:8.2f} ms")


def columns(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs of each (database, load, producer) column, in the order first run."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run_ in runs:
        grouped.setdefault(f"{run_['db']} {run_['load']} {run_['mode']}", []).append(run_)
    return grouped


def _cell(values: list[float], digits: int = 1) -> str:
    """The median, and the range when there are several runs: how far a re-run moves."""
    ordered = sorted(values)
    middle = ordered[len(ordered) // 2]
    if len(ordered) == 1:
        return f"{middle:,.{digits}f}"
    return f"{middle:,.{digits}f} ({ordered[0]:,.{digits}f}-{ordered[-1]:,.{digits}f})"


def section(results: dict[str, Any], args: argparse.Namespace) -> str:
    machine = results["machine"]
    floor_rows = "\n".join(
        f"| {name} | {s['p50']:.2f} | {s['p99']:.2f} |" for name, s in results["floor"].items()
    )
    grouped = columns(results["runs"])
    header = " | ".join(grouped)
    rows = "\n".join(
        f"| {name} p50 | "
        + " | ".join(_cell([r["steps"][name]["p50"] for r in runs]) for runs in grouped.values())
        + f" |\n| {name} p99 | "
        + " | ".join(_cell([r["steps"][name]["p99"] for r in runs]) for runs in grouped.values())
        + " |"
        for name, _, _ in STEPS
    )
    achieved = " | ".join(_cell([r["achieved"] for r in runs], 0) for runs in grouped.values())
    verified = " | ".join(
        "yes" if all(r["verified"] for r in runs) else "**no**" for runs in grouped.values()
    )
    cpu = " | ".join(_cell([r["cpu_us_per_event"] for r in runs], 0) for runs in grouped.values())
    command = "python -m benchmarks timeline " + " ".join(
        [f"--db {args.db}", *(f"--rate {r:g}" for r in (args.rate or [1000, 5000]))]
        + [f"--seconds {args.seconds:g}", f"--mode {args.mode}", f"--repeat {args.repeat}"]
        + [f"--set {s}" for s in args.set]
    )
    return f"""## Timeline: where an event's milliseconds go (`{command}`)

{machine.get("date", "?")}, {machine.get("cpu", "?")} ({machine.get("cores", "?")} cores),
1-minute load average {results["load"][0]:.1f} before and {results["load"][1]:.1f} after
(the benchmark's own broker, database, daemon and load generator share the machine).

The floor, measured in the same run (ms, {args.floor_samples} samples each):

| floor | p50 | p99 |
| --- | --- | --- |
{floor_rows}

Per step in ms over every event of a run, p50 and p99 as the median of {args.repeat} run(s)
(the range in brackets; loads interleaved). Idle: `EventProducer.send_and_wait`, one
event at a time, {args.idle_gap * 1000:g} ms apart; per-request: applications sending one
record per request, linger 0, one send awaited at a time; batching: one producer, linger 0,
sends not awaited one by one, batched by the client while a request is in flight:

| step | {header} |
| --- | {" | ".join("---" for _ in grouped)} |
{rows}
| achieved events/s | {achieved} |
| daemon CPU µs/event (whole run, idle included) | {cpu} |
| database == model | {verified} |
"""
