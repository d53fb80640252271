"""Real concurrency: 8 writers with their own engines hammer the same consumers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from prometheus_client import REGISTRY

from service.apply.applier import Applier
from service.domain.events import ConsumerEvent
from service.domain.outcomes import Outcome, OutcomeKind, Reason
from service.store.engine import create_engine
from service.store.unit_of_work import SqlUnitOfWorkFactory
from tests.apply.helpers import Db, delete, new_id, settings_for, upsert

TASKS = 8
EVENTS_PER_TASK = 15


def stamina_cas_retries() -> float:
    """stamina's own retry metric (``stamina_retries_total``) for our CAS losses."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name != "stamina_retries":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and "CasLost" in sample.labels.get("error_type", ""):
                total += sample.value
    return total


async def test_concurrent_unconditional_writers_lose_nothing_and_double_nothing(db: Db) -> None:
    consumers = [new_id(), new_id()]
    settings = settings_for(
        db.url,
        cas_retry_attempts=200,
        cas_retry_timeout_seconds=60,
        database_pool_size=2,
        sqlite_busy_timeout_ms=30_000,
    )
    engines = [create_engine(settings) for _ in range(TASKS)]
    appliers = [Applier(SqlUnitOfWorkFactory(engine), settings) for engine in engines]
    metric_before = stamina_cas_retries()

    async def writer(index: int) -> list[tuple[ConsumerEvent, Outcome]]:
        rng = random.Random(index)
        applier = appliers[index]
        done: list[tuple[ConsumerEvent, Outcome]] = []
        while len(done) < EVENTS_PER_TASK:
            events = [
                delete(c) if rng.random() < 0.15 else upsert(c, project_id=f"writer-{index}")
                for c in rng.choices(consumers, k=3 if index % 2 else 1)
            ]
            if len(events) == 1:
                outcomes = [await applier.apply(events[0])]
            else:
                outcomes = await applier.apply_batch([(e, None) for e in events])
            done.extend(zip(events, outcomes, strict=True))
        return done

    try:
        per_writer = await asyncio.gather(*(writer(i) for i in range(TASKS)))
    finally:
        for engine in engines:
            await engine.dispose()

    pairs = [pair for done in per_writer for pair in done]
    outcomes = [o for _, o in pairs]
    # Every event exactly one outcome, and recorded exactly once.
    assert len({o.event_id for o in outcomes}) == len(outcomes)
    assert all(o.event_id == e.event_id for e, o in pairs)
    assert await db.count("processed_events") == len(outcomes)
    kinds = Counter((o.kind, o.reason) for o in outcomes)
    assert set(kinds) <= {
        (OutcomeKind.APPLIED, None),
        (OutcomeKind.REJECTED, Reason.CONSUMER_NOT_FOUND),  # deleting a tombstone
    }
    # Generation equals the number of applied events, per consumer (nothing lost or doubled).
    for consumer in consumers:
        applied = [
            o for o in outcomes if o.consumer_uuid == consumer and o.kind is OutcomeKind.APPLIED
        ]
        state = await db.generation(consumer)
        assert state is not None and state[0] == len(applied)
        # Each applied event produced a distinct generation: 1..n, no gap, no repeat.
        assert sorted(o.generation_after for o in applied) == list(range(1, len(applied) + 1))
        recorded = await db.rows(
            "SELECT count(*) FROM processed_events"
            " WHERE consumer_uuid = :c AND outcome = 'applied'",
            c=consumer,
        )
        assert recorded == [(len(applied),)]

    retries = sum(a.stats.cas_retries for a in appliers)
    fallbacks = sum(a.stats.batch_fallbacks for a in appliers)
    if db.is_sqlite:
        # BEGIN IMMEDIATE serialises SQLite writers: waits, never lost CAS races.
        assert retries == 0 and fallbacks == 0
        assert all(o.attempts == 1 for o in outcomes)
    else:
        # PostgreSQL READ COMMITTED: writers really race between read and write.
        assert retries > 0 and any(o.attempts > 1 for o in outcomes)
        assert retries == sum(o.attempts - 1 for o in outcomes)
        assert stamina_cas_retries() - metric_before == retries
