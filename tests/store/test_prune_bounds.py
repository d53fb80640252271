"""`db prune`'s edges (``service.store.prune``): the bound itself, the batches each
transaction deletes, the clock it reads when not told, a database that is not there,
and the durations an operator may write."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError
from service.store.prune import parse_duration, prune
from service.store.schema import consumers, processed_events
from tests.apply.helpers import Db, delete, new_id, settings_for, upsert

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
BOUND = timedelta(days=1)
CUTOFF = NOW - BOUND


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("1w 2d", 9 * 86400), (" 1h 30m ", 5400), ("1s", 1), ("0.5s", 0.5)],
)
def test_parse_duration_takes_spaces_between_parts_and_any_positive_length(
    written: str, seconds: float
) -> None:
    assert parse_duration(written) == timedelta(seconds=seconds)


def test_a_zero_duration_is_refused_saying_why() -> None:
    """The message is what `db prune --older-than 0d` prints (one line, exit 2)."""
    with pytest.raises(ValueError) as caught:
        parse_duration("0d")
    assert str(caught.value) == "duration must be positive: '0d'"


async def test_rows_exactly_at_the_bound_are_kept(db: Db) -> None:
    """Only rows *older* than the bound go: an inbox row processed, or a tombstone
    deleted, at the cutoff instant itself stays (and one a microsecond older goes)."""
    at, older = new_id(), new_id()
    events = {at: [upsert(at, None), delete(at)], older: [upsert(older, None), delete(older)]}
    for evs in events.values():
        for ev in evs:
            await db.applier.apply(ev)
    moment = {at: CUTOFF, older: CUTOFF - timedelta(microseconds=1)}
    # Through the typed columns: stored exactly as the service stores its times.
    async with db.engine.begin() as connection:
        for consumer, evs in events.items():
            await connection.execute(
                update(consumers)
                .where(consumers.c.uuid == consumer)
                .values(deleted_at=moment[consumer])
            )
            await connection.execute(
                update(processed_events)
                .where(processed_events.c.event_id.in_([ev.event_id for ev in evs]))
                .values(processed_at=moment[consumer])
            )

    dry = await prune(db.engine, BOUND, now=NOW, dry_run=True)
    assert (dry.cutoff, dry.inbox_rows, dry.tombstones) == (CUTOFF, 2, 1)
    result = await prune(db.engine, BOUND, now=NOW)

    assert (result.inbox_rows, result.tombstones) == (2, 1)
    assert await db.generation(at) == (2, True)
    assert await db.generation(older) is None
    left = await db.rows("SELECT event_id FROM processed_events ORDER BY event_id")
    assert sorted(row[0] for row in left) == sorted(ev.event_id for ev in events[at])


async def _old_inbox_rows(db: Db, count: int) -> None:
    """``count`` inbox rows processed before the cutoff, written in one statement."""
    rows = [
        {
            "event_id": new_id(),
            "consumer_uuid": new_id(),
            "event_type": "upsert",
            "payload_hash": "0" * 64,
            "outcome": "applied",
            "attempts": 1,
            "processed_at": CUTOFF - timedelta(hours=1),
        }
        for _ in range(count)
    ]
    async with db.engine.begin() as connection:
        await connection.execute(insert(processed_events), rows)


class Deletes:
    """The row count of each DELETE ``prune`` runs on ``engine`` (each in a transaction
    of its own), per table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.counts: dict[str, list[int]] = {"processed_events": [], "consumers": []}

    def __enter__(self) -> Deletes:
        event.listen(self.engine, "after_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "after_cursor_execute", self._seen)

    def _seen(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        if words[:2] == ["DELETE", "FROM"]:
            self.counts[words[2]].append(cursor.rowcount)


async def test_each_transaction_deletes_at_most_a_batch(db: Db) -> None:
    await _old_inbox_rows(db, 5)

    with Deletes(db.engine) as deletes:
        result = await prune(db.engine, BOUND, batch_size=2, now=NOW)

    assert result.inbox_rows == 5
    assert deletes.counts == {"processed_events": [2, 2, 1], "consumers": [0]}


async def test_a_batch_is_a_thousand_rows_unless_told(db: Db) -> None:
    await _old_inbox_rows(db, 1001)

    with Deletes(db.engine) as deletes:
        result = await prune(db.engine, BOUND, now=NOW)

    assert result.inbox_rows == 1001
    assert deletes.counts["processed_events"] == [1000, 1]


@pytest.fixture
def far_east() -> Iterator[None]:
    """The process's local time zone nine hours ahead of UTC, for one test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT-9"  # POSIX sign: nine hours *ahead* of UTC
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("far_east")
async def test_without_now_the_bound_counts_from_utc_whatever_the_local_zone(db: Db) -> None:
    """`db prune` on a machine whose clock is set to local time ahead of UTC: a row two
    hours old is not older than five hours."""
    assert datetime.now().hour != datetime.now(UTC).hour  # the zone took effect
    recent = upsert(new_id(), None)
    await db.applier.apply(recent)
    async with db.engine.begin() as connection:
        await connection.execute(
            update(processed_events).values(processed_at=datetime.now(UTC) - timedelta(hours=2))
        )

    result = await prune(db.engine, timedelta(hours=5))

    assert result.inbox_rows == 0
    assert await db.count("processed_events") == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_database_is_a_transient_failure_saying_so(
    postgres_server_url: str,
) -> None:
    unreachable = postgres_server_url.rsplit("@", 1)[0] + f"@127.0.0.1:{_closed_port()}/nowhere"
    engine = create_engine(settings_for(unreachable))
    try:
        with pytest.raises(TransientDatabaseError) as caught:
            await prune(engine, BOUND, now=NOW)
    finally:
        await engine.dispose()
    # What the operator reads: that prune stopped, and the driver's own words why.
    assert str(caught.value).startswith("prune interrupted: ConnectionRefusedError: ")


async def test_a_batch_of_no_rows_is_refused_before_anything_runs(sqlite_url: str) -> None:
    """A zero batch would delete nothing and never see its last batch: an endless loop.
    (The CLI's ``--batch-size`` stops it earlier; a caller in code reads this.)"""
    engine = create_engine(settings_for(sqlite_url))
    try:
        with pytest.raises(ValueError) as caught:
            await prune(engine, BOUND, batch_size=0, now=NOW)
    finally:
        await engine.dispose()
    assert str(caught.value) == "batch_size must be at least 1"
