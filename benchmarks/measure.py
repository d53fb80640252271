"""The measurements themselves: Kafka limit, database limit, naive peer, daemon, latency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.drivers import Mode, drive
from benchmarks.infra import Infra
from benchmarks.workload import Record, Workload
from service.testing.database import asyncpg_url, consumer_state, inbox
from service.testing.model import Model

#: Partitions of the events topic (the issue's workload).
PARTITIONS = 6


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- producing -----------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: list[Record]) -> float:
    """Write ``records`` (key, value) as fast as the producer goes; returns events/s."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        began = time.perf_counter()
        for start in range(0, len(records), 5_000):
            futures = [
                await producer.send(topic, key=key, value=value)
                for key, value in records[start : start + 5_000]
            ]
            await asyncio.gather(*futures)
        return len(records) / (time.perf_counter() - began)
    finally:
        await producer.stop()


# --- (a) Kafka-side limit ---------------------------------------------------------------


async def raw_consume(bootstrap: str, topic: str, total: int, parse: bool = False) -> float:
    """Read the whole topic and discard it: events/s, from the first fetch to the last.
    With ``parse``, every value also goes through ``json.loads`` (a2): the least work
    a reader that looks at the events at all must do, so the fairer limit to compare
    the daemon with."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        seen = 0
        began = time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=10_000)
            for records in batches.values():
                if parse:
                    for record in records:
                        json.loads(record.value)
                else:
                    for record in records:
                        _ = record.value  # read and discard
            seen += sum(len(records) for records in batches.values())
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


# --- (b) database-side limit ------------------------------------------------------------

_ROW_SQL = (
    "CREATE TABLE bench_rows (event_id VARCHAR(36) PRIMARY KEY, consumer_uuid VARCHAR(36) NOT NULL,"
    " event_type VARCHAR(32) NOT NULL, payload_hash VARCHAR(64) NOT NULL,"
    " outcome VARCHAR(16) NOT NULL, reason VARCHAR(32), generation_after BIGINT,"
    " attempts INTEGER NOT NULL, source_topic VARCHAR(255), source_partition INTEGER,"
    " source_offset BIGINT, processed_at {ts} NOT NULL)"
)
_COLUMNS = (
    "event_id",
    "consumer_uuid",
    "event_type",
    "payload_hash",
    "outcome",
    "reason",
    "generation_after",
    "attempts",
    "source_topic",
    "source_partition",
    "source_offset",
    "processed_at",
)


def _rows(n: int) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    return [
        (
            str(uuid.UUID(int=i + 1)),
            str(uuid.UUID(int=(i % 10_000) + 1)),
            "consumer.upsert",
            f"{i:064x}",
            "applied",
            None,
            i % 50 + 1,
            1,
            "consumer-events",
            i % PARTITIONS,
            i,
            now,
        )
        for i in range(n)
    ]


async def raw_db_write(url: str, n: int, batch: int, *, sqlite_synchronous: str = "FULL") -> float:
    """Insert ``n`` inbox-like rows, ``batch`` rows per transaction, with the fastest plain
    means of each database: SQLite ``executemany`` (stdlib sqlite3, WAL, and the
    ``sqlite_synchronous`` PRAGMA value the daemon of the same run uses: a limit measured
    with fewer fsyncs than the daemon makes is not its limit), PostgreSQL ``COPY``
    (asyncpg ``copy_records_to_table``)."""
    rows = _rows(n)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]

        def run() -> float:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {sqlite_synchronous}")
                conn.execute(_ROW_SQL.format(ts="TIMESTAMP"))
                insert = f"INSERT INTO bench_rows VALUES ({', '.join('?' * len(_COLUMNS))})"
                plain = [(*row[:-1], row[-1].isoformat()) for row in rows]
                began = time.perf_counter()
                for start in range(0, n, batch):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(insert, plain[start : start + batch])
                    conn.execute("COMMIT")
                return n / (time.perf_counter() - began)
            finally:
                conn.close()

        return await asyncio.to_thread(run)
    import asyncpg

    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        await conn.execute(_ROW_SQL.format(ts="TIMESTAMPTZ"))
        began = time.perf_counter()
        for start in range(0, n, batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bench_rows", records=rows[start : start + batch], columns=_COLUMNS
                )
        return n / (time.perf_counter() - began)
    finally:
        await conn.close()


# --- (c) the naive peer -------------------------------------------------------------------


async def naive_peer(bootstrap: str, topic: str, url: str, n: int) -> float:
    """What people write first: one message, one transaction (the same rules, through
    ``Applier.apply``), one offset commit, then the next message.  Events/s over ``n``."""
    from service.apply.applier import Applier
    from service.config import load_settings
    from service.contract.decode import decode_event
    from service.domain.outcomes import EventSource
    from service.store.engine import create_engine
    from service.store.migrate import upgrade
    from service.store.unit_of_work import SqlUnitOfWorkFactory

    settings = load_settings(database_url=url, bootstrap_servers=bootstrap)
    await upgrade(settings)
    engine = create_engine(settings)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"naive-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        applier = Applier(SqlUnitOfWorkFactory(engine), settings)
        first = await consumer.getone()  # after the group join: not part of the rate
        began = time.perf_counter()
        message = first
        for done in range(n):
            if done:
                message = await consumer.getone()
            event = decode_event(message.value, max_bytes=settings.max_event_bytes)
            await applier.apply(
                event, EventSource(message.topic, message.partition, message.offset)
            )
            await consumer.commit(
                {TopicPartition(message.topic, message.partition): message.offset + 1}
            )
        return n / (time.perf_counter() - began)
    finally:
        await consumer.stop()
        await engine.dispose()


# --- (d) the daemon -------------------------------------------------------------------------


@dataclass
class DaemonRun:
    rate: float  # events/s from the partitions' assignment to the last committed offset
    steady_rate: float  # events/s between 10% and 90% committed
    seconds: float
    peak_rss_mib: float
    cpu_seconds: float
    verified: bool
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: Process CPU from the partitions' assignment to the last commit (start-up excluded).
    run_cpu_seconds: float = 0.0
    #: stage -> {"cpu": seconds, "wall": seconds}, summed over the daemons (their /metrics).
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The main thread's (event loop's) share of ``run_cpu_seconds``.
    loop_cpu_seconds: float = 0.0

    def cpu_us_per_event(self, total: int) -> float:
        return self.run_cpu_seconds / total * 1e6


def loop_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (the daemon's event loop), from /proc: the
    rest of its CPU is other threads' (aiosqlite's, which runs SQLite itself)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_seconds(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, dict[str, float]]:
    """The per-stage counters of one daemon's /metrics (``service.daemon.stages``)."""
    stages: dict[str, dict[str, float]] = {}
    for (name, labels), value in samples.items():
        clock = {
            "consumergen_stage_cpu_seconds_total": "cpu",
            "consumergen_stage_seconds_total": "wall",
        }.get(name)
        if clock is not None:
            stages.setdefault(dict(labels)["stage"], {})[clock] = value
    return stages


def describe_stages(run: DaemonRun, total: int) -> str:
    """CPU µs per event: the process, each stage's own loop CPU, and what no stage owns."""
    parts = [f"{stage} {seconds['cpu'] / total * 1e6:.0f}" for stage, seconds in run.stages.items()]
    owned = sum(seconds["cpu"] for seconds in run.stages.values())
    unowned = (run.loop_cpu_seconds - owned) / total * 1e6
    threads = (run.run_cpu_seconds - run.loop_cpu_seconds) / total * 1e6
    return (
        f"CPU {run.cpu_us_per_event(total):.0f} µs/event (process, during the run); "
        f"stages (loop CPU µs/event): {', '.join(parts)}; loop thread outside the stages "
        f"{unowned:.0f}; other threads (aiosqlite's SQLite, ...) {threads:.0f}"
    )


def _crossing(samples: list[tuple[float, int]], target: float) -> float:
    """Interpolated time at which the committed total reached ``target``."""
    previous = samples[0]
    for moment, count in samples:
        if count >= target:
            if count == previous[1]:
                return moment
            share = (target - previous[1]) / (count - previous[1])
            return previous[0] + share * (moment - previous[0])
        previous = (moment, count)
    return samples[-1][0]


async def daemon_run(
    infra: Infra,
    topic: str,
    db: str,
    total: int,
    model: Model | None,
    *,
    outcomes: bool,
    processes: int = 1,
    label: str = "daemon",
    extra: dict[str, object] | None = None,
) -> DaemonRun:
    """Run ``processes`` daemons in one fresh group over the whole topic until every event's
    offset is committed; then check the database against the independent model."""
    from service.store.migrate import upgrade

    url = await infra.fresh_database(db)
    await upgrade(url)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    settings: dict[str, object] = {
        "database_url": url,
        "topic": topic,
        "dlq_topic": await infra.new_topic("dlq", 1),
        "group_id": group,
        "log_level": "INFO",
        **(extra or {}),
    }
    if outcomes:
        settings["outcomes_topic"] = await infra.new_topic("outcomes", PARTITIONS)
    daemons = [
        infra.daemon(f"{label}-{uuid.uuid4().hex[:6]}-{i}", **settings) for i in range(processes)
    ]
    for daemon in daemons:
        daemon.start()
    try:
        for daemon in daemons:
            await daemon.wait_assigned()
        cpu_at_start = sum(d.cpu_seconds() for d in daemons)
        loop_at_start = sum(loop_thread_cpu(d.pid) for d in daemons)
        assigned = [d.assigned_at() for d in daemons]
        began = min(moment for moment in assigned if moment is not None)
        samples: list[tuple[float, int]] = [(began, 0)]
        deadline = time.monotonic() + 120 + total / 200
        while True:
            committed = await infra.committed_total(group, topic)
            samples.append((time.time(), committed))
            if committed >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemons did not finish: {committed}/{total} committed")
            for daemon in daemons:
                daemon.check_alive()
            await asyncio.sleep(0.1)
        ended = samples[-1][0]
        peak = sum(d.peak_rss_kib() for d in daemons) / 1024
        cpu = sum(d.cpu_seconds() for d in daemons)
        loop_cpu = sum(loop_thread_cpu(d.pid) for d in daemons)
        stages: dict[str, dict[str, float]] = {}
        for daemon in daemons:
            for stage, seconds in stage_seconds(await asyncio.to_thread(daemon.metrics)).items():
                for clock, value in seconds.items():
                    stages.setdefault(stage, {}).setdefault(clock, 0.0)
                    stages[stage][clock] += value
    finally:
        await asyncio.gather(*(d.terminate() for d in daemons))
    verified = True
    if model is not None:
        verified = await verify(url, model)
    await infra.drop_database(url)
    steady = (0.8 * total) / max(
        1e-9, _crossing(samples, 0.9 * total) - _crossing(samples, 0.1 * total)
    )
    return DaemonRun(
        rate=total / (ended - began),
        steady_rate=steady,
        seconds=ended - began,
        peak_rss_mib=peak,
        cpu_seconds=cpu,
        verified=verified,
        samples=[(t - began, c) for t, c in samples],
        run_cpu_seconds=cpu - cpu_at_start,
        loop_cpu_seconds=loop_cpu - loop_at_start,
        stages=stages,
    )


async def verify(url: str, model: Model) -> bool:
    """Database state and inbox == the independent model (nothing lost, nothing doubled)."""
    state = await consumer_state(url)
    recorded = await inbox(url)
    expected = {
        event_id: (outcome.split(":")[0], outcome.split(":")[1] if ":" in outcome else None)
        for event_id, outcome in model.outcomes.items()
    }
    ok = state == model.state() and recorded == expected
    if not ok:
        wrong = [k for k, v in model.state().items() if state.get(k) != v]
        print(
            f"[verify] MISMATCH: {len(wrong)} consumers differ, inbox {len(recorded)} rows vs "
            f"{len(expected)} expected",
            flush=True,
        )
    return ok


# --- latency at a fixed offered load ---------------------------------------------------------


@dataclass
class LoadRun:
    rate_offered: float
    rate_achieved: float
    events: int
    latencies_ms: list[float]
    #: minute index -> latencies of the events produced in that minute
    by_minute: dict[int, list[float]]
    #: (seconds since start, RSS MiB) samples of the daemon
    rss: list[tuple[float, float]]
    peak_rss_mib: float
    unmatched: int
    #: the database ended in the independent model's state (``verify``)
    verified: bool


async def offered_load(
    infra: Infra,
    db: str,
    *,
    rate: float,
    seconds: float,
    seed: int,
    consumers: int = 10_000,
    rss_every: float = 5.0,
    progress: Callable[[str], None] = print,
    extra: dict[str, object] | None = None,
    producer: Mode = "batching",
) -> LoadRun:
    """A daemon (outcomes topic on) fed ``rate`` events/s for ``seconds`` by ``producer``
    (``benchmarks.drivers``: one record per request, or batching); latency of each event =
    the outcome record's timestamp (sent right after the database commit) minus the moment
    the producer handed the event over."""
    from service.store.migrate import upgrade

    topic = await infra.new_topic("load", PARTITIONS)
    outcomes_topic = await infra.new_topic("load-outcomes", PARTITIONS)
    url = await infra.fresh_database(db)
    await upgrade(url)
    group = f"load-{uuid.uuid4().hex[:8]}"
    daemon = infra.daemon(
        f"load-{db}-{uuid.uuid4().hex[:6]}",
        database_url=url,
        topic=topic,
        dlq_topic=await infra.new_topic("dlq", 1),
        outcomes_topic=outcomes_topic,
        group_id=group,
        **(extra or {}),
    ).start()
    workload = Workload(consumers=consumers, seed=seed)
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    by_minute: dict[int, list[float]] = {}
    pending: list[tuple[int, int, float]] = []
    rss: list[tuple[float, float]] = []
    stop_reading = asyncio.Event()
    produced = 0
    start_ms = 0

    def account(partition: int, offset: int, outcome_ms: float) -> bool:
        sent_ms = sent.pop((partition, offset), None)
        if sent_ms is None:
            return False
        latency = float(outcome_ms - sent_ms)
        latencies.append(latency)
        by_minute.setdefault(int((sent_ms - start_ms) / 60_000), []).append(latency)
        return True

    async def read_outcomes() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=infra.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        seen = 0
        try:
            consumer.assign([TopicPartition(outcomes_topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
            while not (stop_reading.is_set() and seen >= produced):
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        seen += 1
                        source = json.loads(record.value)["source"]
                        if source["topic"] != topic:
                            continue
                        if not account(source["partition"], source["offset"], record.timestamp):
                            pending.append(
                                (source["partition"], source["offset"], record.timestamp)
                            )
        finally:
            await consumer.stop()
        return seen

    async def report_every_minute(began: float) -> None:
        while True:
            await asyncio.sleep(60)
            daemon.check_alive()
            progress(
                f"  {int(time.monotonic() - began)}s: {len(sent) + len(latencies)} produced, "
                f"{len(latencies)} outcomes, RSS {rss[-1][1] if rss else 0:.0f} MiB"
            )

    async def sample_rss(began: float) -> None:
        while True:
            with contextlib.suppress(OSError):
                rss.append((time.monotonic() - began, daemon.rss_kib() / 1024))
            await asyncio.sleep(rss_every)

    try:
        await daemon.wait_assigned()
        reader = asyncio.create_task(read_outcomes())
        began = time.monotonic()
        start_ms = int(time.time() * 1000)
        sampler = asyncio.create_task(sample_rss(began))
        reporter = asyncio.create_task(report_every_minute(began))

        def remember(_: int, partition: int, offset: int, sent_at: float, __: float) -> None:
            sent[(partition, offset)] = sent_at * 1000

        try:
            offered = await drive(
                producer,
                infra.bootstrap,
                topic,
                workload.records(),
                rate=rate,
                seconds=seconds,
                on_sent=remember,
            )
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        produced, achieved = offered.events, offered.achieved
        deadline = time.monotonic() + 120
        while await infra.committed_total(group, topic) < produced:
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not catch up with the offered load")
            await asyncio.sleep(0.1)
        stop_reading.set()
        await asyncio.wait_for(reader, 120)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        rss.append((time.monotonic() - began, daemon.rss_kib() / 1024))
        peak = daemon.peak_rss_kib() / 1024
    finally:
        await daemon.terminate()
    unmatched = 0
    for partition, offset, outcome_ms in pending:
        if not account(partition, offset, outcome_ms):
            unmatched += 1
    verified = await verify(url, workload.belief)
    await infra.drop_database(url)
    return LoadRun(
        rate_offered=rate,
        rate_achieved=achieved,
        events=produced,
        latencies_ms=latencies,
        by_minute=by_minute,
        rss=rss,
        peak_rss_mib=peak,
        unmatched=unmatched,
        verified=verified,
    )


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str))


__all__ = [
    "DaemonRun",
    "LoadRun",
    "daemon_run",
    "describe_stages",
    "median",
    "naive_peer",
    "offered_load",
    "percentile",
    "produce",
    "raw_consume",
    "raw_db_write",
    "verify",
]
