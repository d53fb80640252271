"""Housekeeping: drop inbox rows and tombstones older than a bound, in small batches.

The trade-off, in one place: an inbox row is what makes a redelivered or replayed event
a *duplicate*; a tombstone is what makes a re-created consumer continue its generation.
Once pruned, a replay of an event older than the bound is processed as new (an
unconditional one would be applied a second time; a conditional one is rejected by its
stale generation unless its consumer's tombstone was pruned too, in which case the ABA
hole that tombstones close reopens for that UUID).  So the bound must be longer than
the topic's retention and than the age of any archive you may replay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.engine import read_only
from service.store.errors import TransientDatabaseError, describe, is_transient
from service.store.schema import consumers, processed_events

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``1w2d``, ``30m``, ``45s`` (combinations allowed) -> timedelta."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(
            f"not a duration: {text!r} (use a number with a unit w, d, h, m or s, e.g. 90d)"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


async def _delete_in_batches(
    engine: AsyncEngine,
    table: Table,
    key: ColumnElement[Any],
    condition: ColumnElement[bool],
    batch_size: int,
) -> int:
    """Delete the rows matching ``condition``, ``batch_size`` per transaction; returns
    how many went.  ``condition`` is checked again outside the id subquery (see ``prune``)."""
    deleted = 0
    while True:
        async with engine.begin() as connection:
            ids = select(key).where(condition).limit(batch_size)
            result = await connection.execute(
                delete(table).where(and_(key.in_(ids.scalar_subquery()), condition))
            )
        deleted += result.rowcount
        if result.rowcount < batch_size:
            return deleted


@dataclass(frozen=True, slots=True)
class PruneResult:
    cutoff: datetime
    inbox_rows: int
    tombstones: int
    dry_run: bool = False


async def prune(
    engine: AsyncEngine,
    older_than: timedelta,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneResult:
    """Delete inbox rows processed before ``now - older_than`` and tombstones deleted
    before it, ``batch_size`` rows per transaction so that writers are never blocked
    for long.  The age condition is repeated outside the id subquery on purpose: under
    PostgreSQL's READ COMMITTED, a row revived (or re-recorded) concurrently is
    re-checked against it and survives."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = (now or datetime.now(UTC)) - older_than
    old_inbox = processed_events.c.processed_at < cutoff
    old_tombstone = and_(consumers.c.deleted_at.is_not(None), consumers.c.deleted_at < cutoff)
    try:
        if dry_run:
            async with engine.connect() as connection:
                connection = await read_only(connection)
                inbox_rows = (
                    await connection.execute(
                        select(func.count()).select_from(processed_events).where(old_inbox)
                    )
                ).scalar_one()
                tombstones = (
                    await connection.execute(
                        select(func.count()).select_from(consumers).where(old_tombstone)
                    )
                ).scalar_one()
            return PruneResult(cutoff, int(inbox_rows), int(tombstones), dry_run=True)

        inbox_rows = await _delete_in_batches(
            engine, processed_events, processed_events.c.event_id, old_inbox, batch_size
        )
        tombstones = await _delete_in_batches(
            engine, consumers, consumers.c.id, old_tombstone, batch_size
        )
    except Exception as exc:
        if is_transient(exc):
            raise TransientDatabaseError(f"prune interrupted: {describe(exc)}") from exc
        raise
    return PruneResult(cutoff, inbox_rows, tombstones)
