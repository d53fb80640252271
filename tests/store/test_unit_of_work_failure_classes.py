"""A unit of work turns infrastructure failures, and only those, into
``TransientDatabaseError``: a constraint violation or any other bug passes through as
itself (the daemon must stop on it, not wait and retry for ever), and the service's own
errors pass through unchanged.  Nothing of the failing unit is committed.  On a real
SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind
from service.store.errors import TransientDatabaseError
from service.store.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from service.store.writes import RaceKind, StoreRace
from tests.apply.helpers import Db, new_id


async def test_a_constraint_violation_is_a_bug_not_a_transient_failure(db: Db) -> None:
    units = SqlUnitOfWorkFactory(db.engine)
    consumer = new_id()
    with pytest.raises(sa_exc.IntegrityError) as caught:
        async with units.begin() as unit:
            assert isinstance(unit, SqlUnitOfWork)
            # A consumer row naming a project that does not exist: NOT NULL / FK.
            await unit.connection.execute(
                text(
                    "INSERT INTO consumers (uuid, project_id, user_id, generation,"
                    " last_event_id, created_at, updated_at) VALUES"
                    " (:u, NULL, NULL, 1, :u, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"u": consumer},
            )
    assert not isinstance(caught.value, TransientDatabaseError)
    assert await db.count("consumers") == 0


async def test_a_bug_of_ours_inside_a_unit_passes_through_and_rolls_back(db: Db) -> None:
    units = SqlUnitOfWorkFactory(db.engine)
    row = ProcessedEvent(new_id(), new_id(), "h", OutcomeKind.APPLIED, None, 1)
    with pytest.raises(ValueError, match="event_type and attempts"):
        async with units.begin() as unit:
            await unit.write_inbox([(InboxWrite.INSERT, row)], datetime.now(UTC))
    with pytest.raises(KeyError):
        async with units.begin() as unit:
            await unit.load_consumers([new_id()])
            raise KeyError("an invariant of ours")
    assert await db.count("processed_events") == 0


async def test_the_services_own_errors_pass_through_unchanged(db: Db) -> None:
    units = SqlUnitOfWorkFactory(db.engine)
    race = StoreRace(RaceKind.INBOX)
    with pytest.raises(StoreRace) as caught:
        async with units.begin():
            raise race
    assert caught.value is race
