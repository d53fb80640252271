"""The bounds of an unconditional event's compare-and-swap retries (``Applier._apply_one``):

* each wait is drawn with *full* jitter, uniform(0, min(max, initial * 2 ** (attempt - 1))),
  so racing writers spread out instead of colliding again in lock-step;
* the retries stop at ``cas_retry_attempts`` or at ``cas_retry_timeout_seconds``,
  whichever comes first, and the event is then recorded FAILED;
* only a lost compare-and-swap is retried there: an infrastructure failure leaves at once
  (the daemon's own backoff handles it).

The waits are read from stamina's retry hooks: what the retry loop actually waited.
On a real SQLite file (the race is forced on the applier's own connection between its
read and its write, and undone by its rollback).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.domain.outcomes import OutcomeKind, Reason
from service.store.errors import TransientDatabaseError
from tests.apply.helpers import Bumping, migrated, new_id, upsert


@contextmanager
def retries_seen() -> Iterator[list[RetryDetails]]:
    """Every retry stamina makes in the block (its process-wide hooks, restored after)."""
    seen: list[RetryDetails] = []
    previous = get_on_retry_hooks()
    set_on_retry_hooks([seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(previous)


INITIAL, MAXIMUM = 0.0004, 0.0032  # ceilings 0.4, 0.8, 1.6, 3.2, 3.2 ms for attempts 1..5


async def test_retry_waits_are_full_jitter_under_an_exponential_ceiling(sqlite_url: str) -> None:
    async with migrated(
        sqlite_url,
        cas_retry_attempts=6,
        cas_retry_timeout_seconds=60.0,
        cas_retry_wait_initial_seconds=INITIAL,
        cas_retry_wait_max_seconds=MAXIMUM,
    ) as db:
        consumer = new_id()
        await db.applier.apply(upsert(consumer))
        with retries_seen() as seen:
            for _ in range(40):
                applier = Bumping(db, consumer, times=5)
                outcome = await applier.apply(upsert(consumer))
                assert (outcome.kind, outcome.attempts) == (OutcomeKind.APPLIED, 6)
    # What stamina's log line and metric name as the cause: the lost race and its attempt.
    assert {str(d.caused_by) for d in seen if d.retry_num == 3} == {
        "compare-and-swap lost on attempt 3"
    }
    waits: dict[int, list[float]] = {}
    for details in seen:
        waits.setdefault(details.retry_num, []).append(details.wait_for)
    assert sorted(waits) == [1, 2, 3, 4, 5] and all(len(w) == 40 for w in waits.values())
    for attempt, drawn in waits.items():
        ceiling = min(MAXIMUM, INITIAL * 2 ** (attempt - 1))
        assert all(0.0 <= w <= ceiling for w in drawn), (attempt, ceiling, max(drawn))
        # Full jitter: spread over the whole range, not the ceiling (or any one value)
        # every time. Each bound fails by chance with probability 2**-40.
        assert min(drawn) < ceiling / 2 < max(drawn), (attempt, ceiling, drawn)


async def test_retries_stop_at_their_time_bound(sqlite_url: str) -> None:
    """Attempts without number: the time bound alone ends the retries, and the event is
    recorded FAILED with the attempts it made."""
    async with migrated(
        sqlite_url,
        cas_retry_attempts=10**6,
        cas_retry_timeout_seconds=0.05,
        cas_retry_wait_initial_seconds=0.002,
        cas_retry_wait_max_seconds=0.004,
    ) as db:
        consumer = new_id()
        await db.applier.apply(upsert(consumer))
        applier = Bumping(db, consumer, times=1000)
        event = upsert(consumer)
        outcome = await applier.apply(event)
        assert (outcome.kind, outcome.reason) == (OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED)
        # Each attempt lost one race; 200 of them take far longer than 50 ms (a whole
        # transaction each), so the time bound, not the count, ended the retries.
        assert outcome.attempts == 1000 - applier.remaining
        assert 2 <= outcome.attempts < 200
        assert applier.stats.failed == 1
        assert applier.stats.cas_retries == outcome.attempts - 1
        rows = await db.rows(
            "SELECT outcome, attempts FROM processed_events WHERE event_id = :e",
            e=event.event_id,
        )
        assert rows == [("failed", outcome.attempts)]


async def test_an_infrastructure_failure_is_not_retried_as_a_lost_race(sqlite_url: str) -> None:
    async with migrated(sqlite_url, sqlite_busy_timeout_ms=50, cas_retry_attempts=5) as db:
        path = sqlite_url.split(":///", 1)[1]
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with retries_seen() as seen, pytest.raises(TransientDatabaseError, match="locked"):
                await db.applier.apply(upsert(new_id()))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert seen == [] and db.applier.stats.cas_retries == 0
