"""The writes of a unit of work: consumer compare-and-swaps and inbox rows.

Every function takes an open ``AsyncConnection`` inside the caller's transaction, so an
outcome and its effect always commit together.  Writes are one driver ``executemany``
(SQLite) or one statement over a JSON array of the rows (PostgreSQL) per kind, from
plain tuples.  Every consumer write is a compare-and-swap whose result is checked; a
write that matches nothing raises ``StoreRace`` and the caller rolls the transaction
back.  What differs per database (insert-or-ignore, the bulk CAS) is the dialect's
(``service.store.dialects``).

Only bound parameters carry values (statements are compiled from the schema's tables):
hostile strings are data, never SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import and_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.errors import ConcurrencyConflict
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind
from service.domain.rules import Write, WriteKind
from service.store.dialects import bind_timestamp, dialect_for
from service.store.owners import OwnerCache, OwnerIds, SqlOwnerRows, resolve_owners
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


#: The columns of a consumer insert, in the order of its tuples (the table's order,
#: which is the order SQLAlchemy compiles them in).
CONSUMER_COLUMNS: Final = (
    "uuid",
    "project_id",
    "user_id",
    "consumer_type_id",
    "generation",
    "last_event_id",
    "created_at",
    "updated_at",
    "deleted_at",
)


async def write_consumers(
    connection: AsyncConnection,
    writes: Sequence[Write],
    now: datetime,
    owner_cache: OwnerCache | None = None,
) -> None:
    """Perform the consumer writes as compare-and-swaps; ``StoreRace`` if any missed.

    Inserts are insert-if-absent (the dialect counts the rows it inserted).  Updates
    match the row as read, by generation and by the id of the event that made it, so a
    row changed (or pruned and re-created) by anyone else in between matches nothing;
    the dialect performs them in bulk.  Rows travel as plain tuples with ``now`` bound
    once (``bind_timestamp``): no per-row parameter processing in SQLAlchemy.
    """
    if not writes:
        return
    dialect = dialect_for(connection.dialect.name)
    owners = await resolve_owners(SqlOwnerRows(connection), writes, now, owner_cache)
    stamp = bind_timestamp(connection, now)
    inserts, updates = consumer_rows(writes, owners, stamp)
    if inserts:
        inserted = await dialect.insert_new(
            connection, consumers, "uuid", CONSUMER_COLUMNS, inserts
        )
        if inserted != len(inserts):
            raise StoreRace(RaceKind.CONSUMER)
    if updates and not await dialect.update_consumers(connection, updates, stamp):
        raise StoreRace(RaceKind.CONSUMER)


def consumer_rows(
    writes: Sequence[Write], owners: OwnerIds, stamp: Any
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The writes as plain tuples: inserts in ``CONSUMER_COLUMNS`` order, updates in
    ``CAS_COLUMNS`` order (``stamp``: the batch's bound timestamp).  One conversion for
    every driver that performs them (here and ``store.postgresql_unit``)."""
    projects, users, types = owners.projects, owners.users, owners.types
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    for w in writes:
        after = w.after
        kind = after.consumer_type
        project, user = projects[after.project_id], users[after.user_id]
        type_id = types[kind] if kind is not None else None
        deleted_at = stamp if after.deleted else None
        if w.kind is WriteKind.INSERT:
            inserts.append(
                (
                    after.uuid,
                    project,
                    user,
                    type_id,
                    after.generation,
                    after.last_event_id,
                    stamp,
                    stamp,
                    deleted_at,
                )
            )
        else:
            before = w.before
            assert before is not None
            updates.append(
                (
                    before.uuid,
                    before.generation,
                    before.last_event_id,
                    after.generation,
                    project,
                    user,
                    type_id,
                    after.last_event_id,
                    deleted_at,
                )
            )
    return inserts, updates


# --- the inbox --------------------------------------------------------------------

REPLACE_FAILED = (
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


#: The columns of an inbox insert, in the order of its tuples.
INBOX_COLUMNS: Final = (
    "event_id",
    "consumer_uuid",
    "event_type",
    "payload_hash",
    "outcome",
    "reason",
    "generation_after",
    "attempts",
    "source_topic",
    "source_partition",
    "source_offset",
    "processed_at",
)


def inbox_values(row: ProcessedEvent, stamp: Any) -> tuple[Any, ...]:
    if row.event_type is None or row.attempts is None:
        raise ValueError("an inbox row to write needs its event_type and attempts")
    source = row.source
    return (
        row.event_id,
        row.consumer_uuid,
        row.event_type.value,
        row.payload_hash,
        row.outcome.value,
        row.reason.value if row.reason is not None else None,
        row.generation_after,
        row.attempts,
        source.topic if source else None,
        source.partition if source else None,
        source.offset if source else None,
        stamp,
    )


async def write_inbox(
    connection: AsyncConnection,
    rows: Sequence[tuple[InboxWrite, ProcessedEvent]],
    now: datetime,
) -> None:
    """Record outcomes, each as its ``InboxWrite`` says (``processed_at`` is ``now``);
    ``StoreRace(INBOX)`` if another transaction recorded one first."""
    stamp = bind_timestamp(connection, now)
    inserts = [inbox_values(row, stamp) for how, row in rows if how is InboxWrite.INSERT]
    if inserts:
        dialect = dialect_for(connection.dialect.name)
        inserted = await dialect.insert_new(
            connection, processed_events, "event_id", INBOX_COLUMNS, inserts
        )
        if inserted != len(inserts):
            raise StoreRace(RaceKind.INBOX)
    for how, row in rows:
        if how is not InboxWrite.REPLACE_FAILED:
            continue
        values = dict(zip(INBOX_COLUMNS, inbox_values(row, now), strict=True))
        values["b_event_id"] = values.pop("event_id")
        values["b_payload_hash"] = values.pop("payload_hash")
        del values["consumer_uuid"], values["event_type"]
        result = await connection.execute(REPLACE_FAILED, values)
        if result.rowcount != 1:
            raise StoreRace(RaceKind.INBOX)
