"""The writes of a unit of work: consumer compare-and-swaps and inbox rows.

Every function takes an open ``AsyncConnection`` inside the caller's transaction, so an
outcome and its effect always commit together.  Writes are one ``executemany`` (or one
multi-row statement) per kind.  Every consumer write is a compare-and-swap whose
result is checked; a write that matches nothing raises ``StoreRace`` and the caller
rolls the transaction back.  What differs per database (insert-or-ignore, the bulk CAS)
is the dialect's (``service.store.dialects``).

Only SQLAlchemy Core with bound parameters is used: hostile strings are data, never SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.errors import ConcurrencyConflict
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind
from service.domain.rules import Write, WriteKind
from service.store.dialects import dialect_for
from service.store.owners import OwnerCache, OwnerIds, resolve_owners
from service.store.schema import consumers, processed_events


class RaceKind(StrEnum):
    #: A consumer CAS matched no row, or an insert-if-absent found the UUID taken.
    CONSUMER = "consumer"
    #: Another transaction recorded the same event id first.
    INBOX = "inbox"


class StoreRace(ConcurrencyConflict):
    """Another writer changed what this transaction read; roll back and decide again."""

    def __init__(self, kind: RaceKind) -> None:
        super().__init__(f"{kind.value} changed concurrently")
        self.kind = kind


# --- consumers --------------------------------------------------------------------


def _row_values(write: Write, owners: OwnerIds, now: datetime) -> dict[str, Any]:
    after = write.after
    return {
        "generation": after.generation,
        "project_id": owners.projects[after.project_id],
        "user_id": owners.users[after.user_id],
        "consumer_type_id": (
            owners.types[after.consumer_type] if after.consumer_type is not None else None
        ),
        "last_event_id": after.last_event_id,
        "deleted_at": now if after.deleted else None,
    }


async def write_consumers(
    connection: AsyncConnection,
    writes: Sequence[Write],
    now: datetime,
    owner_cache: OwnerCache | None = None,
) -> None:
    """Perform the consumer writes as compare-and-swaps; ``StoreRace`` if any missed.

    Inserts are insert-if-absent (``ON CONFLICT DO NOTHING .. RETURNING``: the rows
    returned are the rows inserted).  Updates match the row as read, by generation and
    by the id of the event that made it, so a row changed (or pruned and re-created) by
    anyone else in between matches nothing; the dialect performs them in bulk.
    """
    if not writes:
        return
    dialect = dialect_for(connection.dialect.name)
    owners = await resolve_owners(connection, writes, now, owner_cache)
    inserts = [w for w in writes if w.kind is WriteKind.INSERT]
    updates = [w for w in writes if w.kind is WriteKind.UPDATE]
    if inserts:
        statement = dialect.insert_ignoring_conflicts(consumers, "uuid").returning(consumers.c.uuid)
        rows = [
            {
                "uuid": w.after.uuid,
                "created_at": now,
                "updated_at": now,
                **_row_values(w, owners, now),
            }
            for w in inserts
        ]
        inserted = (await connection.execute(statement, rows)).all()
        if len(inserted) != len(inserts):
            raise StoreRace(RaceKind.CONSUMER)
    if updates:
        params = []
        for w in updates:
            assert w.before is not None
            values = _row_values(w, owners, now)
            params.append(
                {
                    "b_uuid": w.before.uuid,
                    "b_generation": w.before.generation,
                    "b_last_event_id": w.before.last_event_id,
                    "a_now": now,
                    **{f"a_{name}": value for name, value in values.items()},
                }
            )
        if not await dialect.update_consumers(connection, params):
            raise StoreRace(RaceKind.CONSUMER)


# --- the inbox --------------------------------------------------------------------

_REPLACE_FAILED = (
    update(processed_events)
    .where(
        and_(
            processed_events.c.event_id == bindparam("b_event_id"),
            processed_events.c.payload_hash == bindparam("b_payload_hash"),
            processed_events.c.outcome == OutcomeKind.FAILED.value,
        )
    )
    .values(
        outcome=bindparam("outcome"),
        reason=bindparam("reason"),
        generation_after=bindparam("generation_after"),
        attempts=bindparam("attempts"),
        source_topic=bindparam("source_topic"),
        source_partition=bindparam("source_partition"),
        source_offset=bindparam("source_offset"),
        processed_at=bindparam("processed_at"),
    )
)


def _inbox_values(row: ProcessedEvent, now: datetime) -> dict[str, Any]:
    if row.event_type is None or row.attempts is None:
        raise ValueError("an inbox row to write needs its event_type and attempts")
    source = row.source
    return {
        "event_id": row.event_id,
        "consumer_uuid": row.consumer_uuid,
        "event_type": row.event_type.value,
        "payload_hash": row.payload_hash,
        "outcome": row.outcome.value,
        "reason": row.reason.value if row.reason is not None else None,
        "generation_after": row.generation_after,
        "attempts": row.attempts,
        "source_topic": source.topic if source else None,
        "source_partition": source.partition if source else None,
        "source_offset": source.offset if source else None,
        "processed_at": now,
    }


async def write_inbox(
    connection: AsyncConnection,
    rows: Sequence[tuple[InboxWrite, ProcessedEvent]],
    now: datetime,
) -> None:
    """Record outcomes, each as its ``InboxWrite`` says (``processed_at`` is ``now``);
    ``StoreRace(INBOX)`` if another transaction recorded one first."""
    inserts = [_inbox_values(row, now) for how, row in rows if how is InboxWrite.INSERT]
    if inserts:
        dialect = dialect_for(connection.dialect.name)
        statement = dialect.insert_ignoring_conflicts(processed_events, "event_id").returning(
            processed_events.c.event_id
        )
        if len((await connection.execute(statement, inserts)).all()) != len(inserts):
            raise StoreRace(RaceKind.INBOX)
    for how, row in rows:
        if how is not InboxWrite.REPLACE_FAILED:
            continue
        values = _inbox_values(row, now)
        values["b_event_id"] = values.pop("event_id")
        values["b_payload_hash"] = values.pop("payload_hash")
        del values["consumer_uuid"], values["event_type"]
        result = await connection.execute(_REPLACE_FAILED, values)
        if result.rowcount != 1:
            raise StoreRace(RaceKind.INBOX)
