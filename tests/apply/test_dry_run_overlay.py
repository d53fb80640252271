"""The dry run across batches: what ``replay --dry-run`` tells an operator.

A replay's dry run decides batch after batch over an overlay of what the earlier
batches *would* have written, reading the database only for what it does not know yet.
Each test here runs the same batches through the dry run and then for real, and holds
the prediction to what really happened (SQLite and PostgreSQL): a create predicted in
one batch makes a conditional update in the next applicable, an event seen earlier is a
duplicate, and the generation changes it reports are the ones the database then shows.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest

from service.apply.dryrun import DryRun, GenerationChange
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.store.unit_of_work import SqlUnitOfWorkFactory
from tests.apply.helpers import Db, delete, migrated, new_id, upsert

Batch = Sequence[tuple[ConsumerEvent, EventSource | None]]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Db]:
    """A migrated database whose placeholder owners differ from each other."""
    async with migrated(
        database_url, incomplete_project_id="no-project", incomplete_user_id="no-user"
    ) as handle:
        yield handle


def dry_run(db: Db) -> DryRun:
    return DryRun(SqlUnitOfWorkFactory(db.engine), db.settings)


async def predicted_then_applied(
    db: Db, batches: Sequence[Batch]
) -> tuple[DryRun, list[list[Outcome]], list[list[Outcome]]]:
    """The dry run's outcomes of ``batches`` (one run), then the Applier's, batch by batch."""
    run = dry_run(db)
    predicted = [await run.apply_batch(batch) for batch in batches]
    applied = [await db.applier.apply_batch(batch) for batch in batches]
    return run, predicted, applied


def one(*events: ConsumerEvent) -> Batch:
    return [(e, None) for e in events]


async def test_a_create_predicted_in_one_batch_makes_the_next_batch_s_update_apply(
    store: Db,
) -> None:
    c = new_id()
    batches = [one(upsert(c, None)), one(upsert(c, 1, consumer_type="VM"))]
    run, predicted, applied = await predicted_then_applied(store, batches)
    assert [[(o.kind, o.generation_after) for o in b] for b in predicted] == [
        [(OutcomeKind.APPLIED, 1)],
        [(OutcomeKind.APPLIED, 2)],
    ]
    assert predicted == applied
    # Created without owners: the configured placeholders, each in its place.
    state = predicted[1][0].state_after
    assert state is not None and (state.project_id, state.user_id) == ("no-project", "no-user")
    assert run.changes() == {c: GenerationChange(None, 2, False, False)}


async def test_the_changes_are_from_the_database_s_row_to_the_prediction(store: Db) -> None:
    kept, deleted = new_id(), new_id()
    for c in (kept, deleted):
        await store.applier.apply(upsert(c, None))
    run = dry_run(store)
    await run.apply_batch(one(upsert(kept, 1), delete(deleted, 1)))
    await run.apply_batch(one(upsert(kept, 2)))
    assert run.changes() == {
        kept: GenerationChange(before=1, after=3, deleted_before=False, deleted_after=False),
        deleted: GenerationChange(before=1, after=2, deleted_before=False, deleted_after=True),
    }
    assert run.changes()[kept].changed and run.changes()[deleted].changed
    # Nothing was written: the database still has both at generation 1.
    assert await store.generation(kept) == (1, False) and await store.generation(deleted) == (
        1,
        False,
    )


async def test_an_event_predicted_earlier_in_the_run_is_a_duplicate_or_a_reused_id(
    store: Db,
) -> None:
    c = new_id()
    first = upsert(c, None)
    again = dataclasses.replace(first)
    reused = dataclasses.replace(first, consumer_type="OTHER")
    batches = [one(first), one(again, reused)]
    _, predicted, applied = await predicted_then_applied(store, batches)
    assert [(o.kind, o.reason, o.original) for o in predicted[1]] == [
        (OutcomeKind.DUPLICATE, None, OutcomeKind.APPLIED),
        (OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, None),
    ]
    assert predicted == applied


async def test_an_event_the_database_has_is_a_duplicate_for_a_consumer_the_run_knows(
    store: Db,
) -> None:
    # The consumer is in the overlay after batch 1; the repeated event is not: the run
    # must still read the inbox for it.
    c = new_id()
    earlier = upsert(c, None)
    await store.applier.apply(earlier)
    batches = [one(upsert(c, 1)), one(earlier)]
    _, predicted, applied = await predicted_then_applied(store, batches)
    assert [(o.kind, o.original) for o in predicted[1]] == [
        (OutcomeKind.DUPLICATE, OutcomeKind.APPLIED)
    ]
    assert predicted == applied


async def test_a_reused_id_on_a_consumer_the_run_has_not_read_reports_that_consumer(
    store: Db,
) -> None:
    # The event id is in the overlay after batch 1; its new consumer is not: the run
    # must still read that consumer, to report its state and its (unchanged) generation.
    a, b = new_id(), new_id()
    await store.applier.apply(upsert(b, None))
    first = upsert(a, None)
    batches = [one(first), one(dataclasses.replace(first, consumer_uuid=b))]
    run, predicted, applied = await predicted_then_applied(store, batches)
    (outcome,) = predicted[1]
    assert (outcome.kind, outcome.reason) == (OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED)
    assert outcome.state_after is not None and outcome.state_after.generation == 1
    assert predicted == applied
    assert run.changes()[b] == GenerationChange(1, 1, False, False)
    assert not run.changes()[b].changed


async def test_a_dry_run_reads_while_the_daemon_holds_the_write_turn(sqlite_url: str) -> None:
    # A dry run beside a running daemon must not queue behind its writes (SQLite: one
    # writer at a time, queued in-process on the factory).
    async with migrated(sqlite_url) as db:
        c = new_id()
        await db.applier.apply(upsert(c, None))
        units = SqlUnitOfWorkFactory(db.engine)
        writing, finish = asyncio.Event(), asyncio.Event()

        async def daemon_write() -> None:
            async with units.begin() as unit:
                await unit.load_consumers([c])
                writing.set()
                await finish.wait()

        writer = asyncio.create_task(daemon_write())
        await asyncio.wait_for(writing.wait(), 10)
        try:
            predicted = await asyncio.wait_for(
                DryRun(units, db.settings).apply_batch(one(upsert(c, 1))), 10
            )
        finally:
            finish.set()
            await writer
        assert [(o.kind, o.generation_after) for o in predicted] == [(OutcomeKind.APPLIED, 2)]
