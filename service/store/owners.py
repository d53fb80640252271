"""Owner rows (projects, users, consumer types): their ids, created when missing.

A consumer row refers to its owners by row id; events name them by external id.  The
ids of committed owner rows are cached per ``OwnerCache`` (one per unit-of-work
factory): owner rows are never updated or deleted, so a cached id stays valid.

The algorithm (``get_or_create``) is written once; how its two statements run is an
``OwnerRows``: SQLAlchemy's (``SqlOwnerRows``, here) or asyncpg's on PostgreSQL's hot
path (``service.store.postgresql_unit``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.rules import Write, owner_names
from service.store.dialects import dialect_for
from service.store.schema import consumer_types, projects, users


@dataclass(frozen=True, slots=True)
class OwnerIds:
    projects: Mapping[str, int]
    users: Mapping[str, int]
    types: Mapping[str, int]


@dataclass
class OwnerCache:
    """Ids of committed owner rows, shared by the transactions of one factory."""

    projects: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)

    def trim(self, limit: int = 100_000) -> None:
        for mapping in (self.projects, self.users, self.types):
            if len(mapping) > limit:
                mapping.clear()


class OwnerRows(Protocol):
    """The two statements of ``get_or_create`` on one connection, in its transaction."""

    async def ids(self, table: Table, column: str, names: list[str]) -> dict[str, int]:
        """``{name: id}`` of the rows of ``table`` whose ``column`` is one of ``names``."""
        ...

    async def insert(self, table: Table, column: str, names: list[str], now: datetime) -> None:
        """Insert ``names`` (sorted) into ``table``, skipping the ones that exist."""
        ...


class SqlOwnerRows:
    """``OwnerRows`` through SQLAlchemy (every database)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def ids(self, table: Table, column: str, names: list[str]) -> dict[str, int]:
        key = table.c[column]
        rows = await self.connection.execute(select(key, table.c.id).where(key.in_(names)))
        return {name: ident for name, ident in rows}

    async def insert(self, table: Table, column: str, names: list[str], now: datetime) -> None:
        dialect = dialect_for(self.connection.dialect.name)
        await self.connection.execute(
            dialect.insert_ignoring_conflicts(table, column),
            [{column: name, "created_at": now} for name in names],
        )


async def get_or_create(
    rows: OwnerRows,
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
    found = await rows.ids(table, column, sorted(names - cached.keys()))
    if cache is not None:
        # Only rows that existed before this transaction: owner rows are never updated
        # or deleted, so their ids stay valid; rows we insert below might roll back.
        cache.update(found)
    found.update(cached)
    missing = sorted(names - found.keys())
    if missing:
        await rows.insert(table, column, missing, now)
        found.update(await rows.ids(table, column, missing))
    if len(found) != len(names):  # pragma: no cover - would be a bug, not a race
        raise RuntimeError(f"{table.name}: created names are not visible")
    return found


async def resolve_owners(
    rows: OwnerRows,
    writes: Sequence[Write],
    now: datetime,
    cache: OwnerCache | None = None,
) -> OwnerIds:
    """Row ids of every project, user and consumer type the writes refer to."""
    cache = cache or OwnerCache()
    cache.trim()
    project_names, user_names, type_names = owner_names(writes)
    return OwnerIds(
        projects=await get_or_create(
            rows, projects, "external_id", project_names, now, cache.projects
        ),
        users=await get_or_create(rows, users, "external_id", user_names, now, cache.users),
        types=await get_or_create(rows, consumer_types, "name", type_names, now, cache.types),
    )
