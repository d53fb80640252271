"""`db prune` against a concurrent revival, on the real PostgreSQL: a tombstone that a
writer revives while prune is deleting it must survive (``service.store.prune``: the
age condition is checked again by the DELETE itself, so PostgreSQL's READ COMMITTED
re-check sees the revived row and skips it).

The interleaving is forced, not hoped for: the reviving transaction holds the row's
lock, prune's DELETE is seen waiting on it in ``pg_stat_activity``, and only then does
the revival commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from service.store.prune import prune
from service.testing.polling import poll
from tests.apply.helpers import delete, migrated, new_id, upsert

pytestmark = pytest.mark.postgres


async def test_a_tombstone_revived_while_prune_runs_is_not_deleted(postgres_url: str) -> None:
    revived, pruned = new_id(), new_id()
    async with migrated(postgres_url) as db:
        for consumer in (revived, pruned):
            await db.applier.apply(upsert(consumer, None))
            await db.applier.apply(delete(consumer))
        now = datetime.now(UTC)
        async with db.engine.begin() as connection:
            await connection.execute(
                text("UPDATE consumers SET deleted_at = :t"), {"t": now - timedelta(days=2)}
            )

        async with db.engine.connect() as writer:
            # The revival, as the applier's compare-and-swap writes it: not committed yet.
            transaction = await writer.begin()
            await writer.execute(
                text(
                    "UPDATE consumers SET deleted_at = NULL, generation = generation + 1,"
                    " updated_at = :t WHERE uuid = :u"
                ),
                {"t": now, "u": revived},
            )
            pruning = asyncio.create_task(
                prune(db.engine, timedelta(days=1), batch_size=10, now=now)
            )

            async def prune_waits_on_the_row() -> bool:
                if pruning.done():
                    return True  # it did not wait: the assertions below say what it did
                rows = await db.rows(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM consumers%'"
                )
                return int(rows[0][0]) == 1

            await poll(prune_waits_on_the_row, within=30, what="prune's DELETE waits on the lock")
            assert not pruning.done()
            await transaction.commit()
        result = await asyncio.wait_for(pruning, 30)

        assert result.tombstones == 1  # the other tombstone, which nobody revived
        assert await db.generation(pruned) is None
        assert await db.generation(revived) == (3, False)
