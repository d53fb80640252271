"""What the Applier records besides the outcome: where each event came from (in every
path: a batch of one, a FAILED record), its counters (each event, each fallback, each
failure counted, not merely set), and timestamps in UTC whatever the machine's zone.
On a real SQLite file (the race is forced on the applier's own connection)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from service.domain.outcomes import EventSource, OutcomeKind
from service.store import recent_events
from tests.apply.helpers import Bumping, Db, migrated, new_id, upsert


async def sources(db: Db, event_id: str) -> list[tuple[object, ...]]:
    return await db.rows(
        "SELECT outcome, source_topic, source_partition, source_offset FROM processed_events"
        " WHERE event_id = :e",
        e=event_id,
    )


async def test_a_batch_of_one_records_its_source(sqlite_url: str) -> None:
    async with migrated(sqlite_url) as db:
        event = upsert(new_id())
        await db.applier.apply_batch([(event, EventSource("t", 2, 30))])
        assert await sources(db, event.event_id) == [("applied", "t", 2, 30)]


async def test_a_failed_record_keeps_its_source(sqlite_url: str) -> None:
    async with migrated(sqlite_url, cas_retry_attempts=2) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        event = upsert(c)
        outcome = await Bumping(db, c, times=100).apply(event, EventSource("t", 1, 9))
        assert outcome.kind is OutcomeKind.FAILED
        assert await sources(db, event.event_id) == [("failed", "t", 1, 9)]


async def test_the_counters_count(sqlite_url: str) -> None:
    async with migrated(sqlite_url, cas_retry_attempts=2) as db:
        a, b = new_id(), new_id()
        applier = Bumping(db, b, times=0)
        await applier.apply(upsert(a))
        await applier.apply(upsert(b))
        assert applier.stats.events == 2
        # Raced twice: the batch of four, then its first half.
        applier.remaining = 2
        stream = [upsert(b), upsert(a), upsert(b), upsert(a)]
        await applier.apply_batch([(e, None) for e in stream])
        assert (applier.stats.events, applier.stats.batch_fallbacks) == (6, 2)
        # Two failures, one after the other.
        applier.remaining = 100
        for _ in range(2):
            assert (await applier.apply(upsert(b))).kind is OutcomeKind.FAILED
        assert applier.stats.failed == 2


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone is nine hours east of UTC for the test."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
async def test_timestamps_are_utc_whatever_the_machines_zone(database_url: str) -> None:
    async with migrated(database_url, cas_retry_attempts=1) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        await Bumping(db, c, times=100).apply(upsert(c))  # FAILED, recorded on its own path
        now = datetime.now(UTC)
        history = await recent_events(db.engine, c, 10)
        assert [h.outcome for h in history] == [OutcomeKind.FAILED, OutcomeKind.APPLIED]
        for entry in history:
            assert entry.processed_at is not None
            assert abs(entry.processed_at - now) < timedelta(minutes=5), entry
