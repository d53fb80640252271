"""`db prune`: inbox rows and tombstones older than a bound go, in batches; the rest stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from service.cli import cli
from service.domain.outcomes import OutcomeKind
from service.store.prune import parse_duration, prune
from tests.apply.helpers import Db, delete, new_id, upsert


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("1w2d", 9 * 86400), ("1.5h", 5400), ("45s", 45)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["banana", "", "10", "d", "-1d", "0s", "5y"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


async def test_prune_removes_old_rows_in_batches_and_keeps_the_rest(db: Db) -> None:
    gone, kept, alive = new_id(), new_id(), new_id()
    old_events = [upsert(gone), delete(gone), upsert(kept), upsert(alive)]
    for ev in old_events:
        await db.applier.apply(ev)
    await db.applier.apply(delete(kept))  # a tombstone newer than the bound
    await db.applier.apply(upsert(alive))
    # Backdate the first four inbox rows and the first tombstone by two days.
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=2)
    async with db.engine.begin() as connection:
        for ev in old_events:
            await connection.execute(
                text("UPDATE processed_events SET processed_at = :t WHERE event_id = :e"),
                {"t": long_ago, "e": ev.event_id},
            )
        await connection.execute(
            text("UPDATE consumers SET deleted_at = :t WHERE uuid = :u"), {"t": long_ago, "u": gone}
        )
    boundary = now - timedelta(days=1)

    bound = timedelta(hours=1)
    dry = await prune(db.engine, bound, now=boundary + bound, dry_run=True)
    assert (dry.inbox_rows, dry.tombstones, dry.dry_run) == (4, 1, True)
    assert await db.count("processed_events") == 6

    result = await prune(db.engine, bound, batch_size=3, now=boundary + bound)
    assert (result.inbox_rows, result.tombstones) == (4, 1)
    assert await db.generation(gone) is None
    assert await db.generation(kept) == (2, True)
    assert await db.generation(alive) == (2, False)
    assert await db.count("processed_events") == 2

    # The documented trade-off: an event older than the bound is no longer a duplicate.
    replay = await db.applier.apply(old_events[3])
    assert replay.kind is OutcomeKind.APPLIED and replay.generation_after == 3
    # ... and a pruned tombstone's UUID starts a fresh count.
    assert (await db.applier.apply(upsert(gone, None))).generation_after == 1


async def test_cli_prune(db: Db) -> None:
    await db.applier.apply(upsert(new_id()))
    env = {"CONSUMERGEN_DATABASE_URL": db.url}
    runner = CliRunner()
    bad = await asyncio.to_thread(
        runner.invoke, cli, ["db", "prune", "--older-than", "banana"], env=env
    )
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "banana" in bad.output
    dry = await asyncio.to_thread(runner.invoke, cli, ["db", "prune", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would delete 0 inbox rows and 0 tombstones" in dry.output
    done = await asyncio.to_thread(
        runner.invoke, cli, ["db", "prune", "--older-than", "1000d", "--batch-size", "1"], env=env
    )
    assert done.exit_code == 0, done.output
    assert "deleted 0 inbox rows and 0 tombstones" in done.output
    assert await db.count("processed_events") == 1
