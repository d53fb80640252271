"""The unit of work: set-based reads and compare-and-swap writes of one transaction.

Every function takes an open ``AsyncConnection`` inside a transaction; the caller
(``service.apply.engine``) owns the transaction, so an outcome and its effect always
commit together.  Reads are one statement per table for a whole batch; writes are one
``executemany`` (or one multi-row INSERT) per kind.  Every consumer write is a
compare-and-swap whose row count is checked; a write that matches nothing raises
``StoreRace`` and the caller rolls the transaction back.

Only SQLAlchemy Core with bound parameters is used: hostile strings are data, never SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from service.domain.consumer import ConsumerState
from service.domain.errors import ConcurrencyConflict
from service.domain.inbox import InboxEntry, InboxWrite
from service.domain.outcomes import OutcomeKind, Reason
from service.domain.rules import Write, WriteKind
from service.store.engine import read_only
from service.store.schema import (
    consumer_types,
    consumers,
    processed_events,
    projects,
    users,
)


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


def _insert_ignoring_conflicts(connection: AsyncConnection, table: Table, key: str) -> Insert:
    """``INSERT .. ON CONFLICT (key) DO NOTHING`` in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


# --- reads ------------------------------------------------------------------------


async def load_inbox(
    connection: AsyncConnection, event_ids: Iterable[str]
) -> dict[str, InboxEntry]:
    """The inbox rows of ``event_ids``, in one SELECT."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    t = processed_events
    rows = await connection.execute(
        select(
            t.c.event_id,
            t.c.consumer_uuid,
            t.c.payload_hash,
            t.c.outcome,
            t.c.reason,
            t.c.generation_after,
        ).where(t.c.event_id.in_(ids))
    )
    return {
        row.event_id: InboxEntry(
            event_id=row.event_id,
            consumer_uuid=row.consumer_uuid,
            payload_hash=row.payload_hash,
            outcome=OutcomeKind(row.outcome),
            reason=Reason(row.reason) if row.reason is not None else None,
            generation_after=row.generation_after,
        )
        for row in rows
    }


def _consumer_select() -> Any:
    c = consumers
    return select(
        c.c.uuid,
        c.c.generation,
        c.c.deleted_at,
        c.c.last_event_id,
        c.c.created_at,
        c.c.updated_at,
        projects.c.external_id.label("project_id"),
        users.c.external_id.label("user_id"),
        consumer_types.c.name.label("consumer_type"),
    ).select_from(
        c.join(projects, projects.c.id == c.c.project_id)
        .join(users, users.c.id == c.c.user_id)
        .outerjoin(consumer_types, consumer_types.c.id == c.c.consumer_type_id)
    )


def _state(row: Any) -> ConsumerState:
    return ConsumerState(
        uuid=row.uuid,
        generation=row.generation,
        deleted=row.deleted_at is not None,
        project_id=row.project_id,
        user_id=row.user_id,
        consumer_type=row.consumer_type,
        last_event_id=row.last_event_id,
    )


async def load_consumers(
    connection: AsyncConnection, uuids: Iterable[str]
) -> dict[str, ConsumerState]:
    """The consumer rows (tombstones included) of ``uuids``, in one SELECT."""
    wanted = sorted(set(uuids))
    if not wanted:
        return {}
    rows = await connection.execute(_consumer_select().where(consumers.c.uuid.in_(wanted)))
    return {row.uuid: _state(row) for row in rows}


# --- owners -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnerIds:
    projects: Mapping[str, int]
    users: Mapping[str, int]
    types: Mapping[str, int]


async def _get_or_create(
    connection: AsyncConnection,
    table: Table,
    column: str,
    names: set[str],
    now: datetime,
    cache: dict[str, int] | None = None,
) -> dict[str, int]:
    """Ids of ``names`` in ``table``, creating the missing ones race-safely.

    Insert-if-absent then re-read: a concurrent creator of the same name makes our
    insert a no-op (PostgreSQL waits for it to commit), and the re-read sees its row.
    Names are inserted sorted so concurrent transactions take index locks in one order.
    """
    if not names:
        return {}
    cached = {name: cache[name] for name in names if name in cache} if cache else {}
    if len(cached) == len(names):
        return cached
    key = table.c[column]
    found = {
        name: ident
        for name, ident in await connection.execute(
            select(key, table.c.id).where(key.in_(sorted(names - cached.keys())))
        )
    }
    if cache is not None:
        # Only rows that existed before this transaction: owner rows are never updated
        # or deleted, so their ids stay valid; rows we insert below might roll back.
        cache.update(found)
    found.update(cached)
    missing = sorted(names - found.keys())
    if missing:
        await connection.execute(
            _insert_ignoring_conflicts(connection, table, column),
            [{column: name, "created_at": now} for name in missing],
        )
        found.update(
            {
                name: ident
                for name, ident in await connection.execute(
                    select(key, table.c.id).where(key.in_(missing))
                )
            }
        )
    if len(found) != len(names):  # pragma: no cover - would be a bug, not a race
        raise RuntimeError(f"{table.name}: created names are not visible")
    return found


@dataclass
class OwnerCache:
    """Ids of committed owner rows, shared by the transactions of one Applier."""

    projects: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)

    def trim(self, limit: int = 100_000) -> None:
        for mapping in (self.projects, self.users, self.types):
            if len(mapping) > limit:
                mapping.clear()


async def resolve_owners(
    connection: AsyncConnection,
    writes: Sequence[Write],
    now: datetime,
    cache: OwnerCache | None = None,
) -> OwnerIds:
    """Row ids of every project, user and consumer type the writes refer to."""
    cache = cache or OwnerCache()
    cache.trim()
    project_names = {w.after.project_id for w in writes}
    user_names = {w.after.user_id for w in writes}
    type_names = {w.after.consumer_type for w in writes if w.after.consumer_type is not None}
    return OwnerIds(
        projects=await _get_or_create(
            connection, projects, "external_id", project_names, now, cache.projects
        ),
        users=await _get_or_create(connection, users, "external_id", user_names, now, cache.users),
        types=await _get_or_create(
            connection, consumer_types, "name", type_names, now, cache.types
        ),
    )


# --- consumer writes --------------------------------------------------------------

_CAS_UPDATE = (
    update(consumers)
    .where(
        and_(
            consumers.c.uuid == bindparam("b_uuid"),
            consumers.c.generation == bindparam("b_generation"),
            consumers.c.last_event_id == bindparam("b_last_event_id"),
        )
    )
    .values(
        generation=bindparam("a_generation"),
        project_id=bindparam("a_project_id"),
        user_id=bindparam("a_user_id"),
        consumer_type_id=bindparam("a_consumer_type_id"),
        last_event_id=bindparam("a_last_event_id"),
        updated_at=bindparam("a_now"),
        deleted_at=bindparam("a_deleted_at"),
    )
)


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
    anyone else in between matches nothing.  On PostgreSQL they are one statement over
    arrays whose RETURNING must name every row; elsewhere an ``executemany`` whose row
    count is checked where the driver reports it (SQLite), and otherwise by re-reading
    ``last_event_id`` of the updated rows in one SELECT: a row carries our event id only
    if our update hit it.
    """
    if not writes:
        return
    owners = await resolve_owners(connection, writes, now, owner_cache)
    inserts = [w for w in writes if w.kind is WriteKind.INSERT]
    updates = [w for w in writes if w.kind is WriteKind.UPDATE]
    if inserts:
        statement = _insert_ignoring_conflicts(connection, consumers, "uuid").returning(
            consumers.c.uuid
        )
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
        if connection.dialect.name == "postgresql":
            await _cas_update_postgresql(connection, params)
            return
        result = await connection.execute(_CAS_UPDATE, params)
        if len(params) == 1 or connection.dialect.supports_sane_multi_rowcount:
            if result.rowcount != len(params):
                raise StoreRace(RaceKind.CONSUMER)
        else:
            expected = {w.after.uuid: w.after.last_event_id for w in updates}
            seen = dict(
                (
                    await connection.execute(
                        select(consumers.c.uuid, consumers.c.last_event_id).where(
                            consumers.c.uuid.in_(sorted(expected))
                        )
                    )
                ).all()
            )
            if seen != expected:
                raise StoreRace(RaceKind.CONSUMER)


#: Every CAS update of a batch in one PostgreSQL statement: the rows as read (uuid,
#: generation, last_event_id) and their new values travel as arrays, the rows are locked
#: in UUID order first (so that concurrent batches cannot deadlock on each other), and
#: RETURNING names the rows that matched.  Under READ COMMITTED a row changed by a
#: concurrent commit is re-checked against the WHERE clause on its newest version, so
#: a lost race is a missing row in RETURNING, never an overwrite.
_CAS_UPDATE_POSTGRESQL = text(
    """
WITH v AS (
    SELECT * FROM unnest(
        CAST(:b_uuid AS VARCHAR[]), CAST(:b_generation AS BIGINT[]),
        CAST(:b_last_event_id AS VARCHAR[]), CAST(:a_generation AS BIGINT[]),
        CAST(:a_project_id AS INTEGER[]), CAST(:a_user_id AS INTEGER[]),
        CAST(:a_consumer_type_id AS INTEGER[]), CAST(:a_last_event_id AS VARCHAR[]),
        CAST(:a_deleted_at AS TIMESTAMPTZ[])
    ) AS v(b_uuid, b_generation, b_last_event_id, a_generation, a_project_id, a_user_id,
           a_consumer_type_id, a_last_event_id, a_deleted_at)
), locked AS (
    SELECT c.id FROM consumers AS c JOIN v ON c.uuid = v.b_uuid
    ORDER BY c.uuid FOR UPDATE OF c
)
UPDATE consumers AS c
SET generation = v.a_generation, project_id = v.a_project_id, user_id = v.a_user_id,
    consumer_type_id = v.a_consumer_type_id, last_event_id = v.a_last_event_id,
    updated_at = :a_now, deleted_at = v.a_deleted_at
FROM v
WHERE c.uuid = v.b_uuid AND c.generation = v.b_generation
  AND c.last_event_id = v.b_last_event_id AND c.id IN (SELECT id FROM locked)
RETURNING c.uuid
"""
)

_CAS_ARRAYS = (
    "b_uuid",
    "b_generation",
    "b_last_event_id",
    "a_generation",
    "a_project_id",
    "a_user_id",
    "a_consumer_type_id",
    "a_last_event_id",
    "a_deleted_at",
)


async def _cas_update_postgresql(
    connection: AsyncConnection, params: Sequence[Mapping[str, Any]]
) -> None:
    """The batch's CAS updates in one round trip; ``StoreRace`` unless every one hit."""
    arrays: dict[str, Any] = {name: [p[name] for p in params] for name in _CAS_ARRAYS}
    arrays["a_now"] = params[0]["a_now"]
    hit = (await connection.execute(_CAS_UPDATE_POSTGRESQL, arrays)).scalars().all()
    if len(hit) != len(params) or set(hit) != set(arrays["b_uuid"]):
        raise StoreRace(RaceKind.CONSUMER)


# --- inbox writes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One ``processed_events`` row to write, and how (insert, or replace a FAILED one)."""

    how: InboxWrite
    event_id: str
    consumer_uuid: str
    event_type: str
    payload_hash: str
    outcome: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    attempts: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None

    def values(self, now: datetime) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "consumer_uuid": self.consumer_uuid,
            "event_type": self.event_type,
            "payload_hash": self.payload_hash,
            "outcome": self.outcome.value,
            "reason": self.reason.value if self.reason is not None else None,
            "generation_after": self.generation_after,
            "attempts": self.attempts,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "processed_at": now,
        }


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


async def write_inbox(connection: AsyncConnection, rows: Sequence[InboxRow], now: datetime) -> None:
    """Record outcomes; ``StoreRace(INBOX)`` if another transaction recorded one first."""
    inserts = [r.values(now) for r in rows if r.how is InboxWrite.INSERT]
    if inserts:
        statement = _insert_ignoring_conflicts(connection, processed_events, "event_id").returning(
            processed_events.c.event_id
        )
        if len((await connection.execute(statement, inserts)).all()) != len(inserts):
            raise StoreRace(RaceKind.INBOX)
    for row in rows:
        if row.how is not InboxWrite.REPLACE_FAILED:
            continue
        values = row.values(now)
        values["b_event_id"] = values.pop("event_id")
        values["b_payload_hash"] = values.pop("payload_hash")
        del values["consumer_uuid"], values["event_type"]
        result = await connection.execute(_REPLACE_FAILED, values)
        if result.rowcount != 1:
            raise StoreRace(RaceKind.INBOX)


# --- read helpers for `show` and `verify` -----------------------------------------


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _utc_required(moment: datetime) -> datetime:
    result = _utc(moment)
    assert result is not None
    return result


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    uuid: str
    generation: int
    deleted: bool
    project_id: str
    user_id: str
    consumer_type: str | None
    last_event_id: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class ProcessedEvent:
    event_id: str
    consumer_uuid: str
    event_type: str
    payload_hash: str
    outcome: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    attempts: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    processed_at: datetime


async def get_consumer(engine: AsyncEngine, uuid: str) -> ConsumerRecord | None:
    """The consumer row of ``uuid`` (a tombstone has ``deleted``), or None."""
    async with engine.connect() as connection:
        connection = await read_only(connection)
        row = (await connection.execute(_consumer_select().where(consumers.c.uuid == uuid))).first()
    if row is None:
        return None
    return ConsumerRecord(
        uuid=row.uuid,
        generation=row.generation,
        deleted=row.deleted_at is not None,
        project_id=row.project_id,
        user_id=row.user_id,
        consumer_type=row.consumer_type,
        last_event_id=row.last_event_id,
        created_at=_utc_required(row.created_at),
        updated_at=_utc_required(row.updated_at),
        deleted_at=_utc(row.deleted_at),
    )


async def recent_events(engine: AsyncEngine, uuid: str, limit: int = 10) -> list[ProcessedEvent]:
    """The last ``limit`` inbox rows of consumer ``uuid``, newest first."""
    t = processed_events
    async with engine.connect() as connection:
        connection = await read_only(connection)
        rows = await connection.execute(
            select(t)
            .where(t.c.consumer_uuid == uuid)
            .order_by(t.c.processed_at.desc(), t.c.event_id.desc())
            .limit(limit)
        )
        return [
            ProcessedEvent(
                event_id=row.event_id,
                consumer_uuid=row.consumer_uuid,
                event_type=row.event_type,
                payload_hash=row.payload_hash,
                outcome=OutcomeKind(row.outcome),
                reason=Reason(row.reason) if row.reason is not None else None,
                generation_after=row.generation_after,
                attempts=row.attempts,
                source_topic=row.source_topic,
                source_partition=row.source_partition,
                source_offset=row.source_offset,
                processed_at=_utc_required(row.processed_at),
            )
            for row in rows
        ]


async def applied_counts(engine: AsyncEngine) -> dict[str, int]:
    """Per consumer UUID, the number of APPLIED inbox rows (for `verify`'s invariant:
    while nothing was pruned, it equals the consumer's generation)."""
    t = processed_events
    async with engine.connect() as connection:
        connection = await read_only(connection)
        rows = await connection.execute(
            select(t.c.consumer_uuid, func.count())
            .where(t.c.outcome == OutcomeKind.APPLIED.value)
            .group_by(t.c.consumer_uuid)
        )
        return {uuid: int(count) for uuid, count in rows}


__all__ = [
    "ConsumerRecord",
    "InboxRow",
    "OwnerCache",
    "OwnerIds",
    "ProcessedEvent",
    "RaceKind",
    "StoreRace",
    "applied_counts",
    "get_consumer",
    "load_consumers",
    "load_inbox",
    "recent_events",
    "resolve_owners",
    "write_consumers",
    "write_inbox",
]
