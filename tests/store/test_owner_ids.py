"""Owner rows' ids (``service.store.owners``): created when missing, the same ids on
every later call, with or without a cache; a factory's transactions share its cache, so
owners already known are not looked up again; a broken ``OwnerRows`` stops loudly."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Table, event

from service.store.owners import SqlOwnerRows, get_or_create
from service.store.schema import projects
from tests.apply.helpers import Db, migrated, new_id, upsert

NOW = datetime(2026, 1, 2, tzinfo=UTC)


async def test_ids_without_a_cache_are_created_once_and_found_after(db: Db) -> None:
    async with db.engine.begin() as connection:
        rows = SqlOwnerRows(connection)
        created = await get_or_create(rows, projects, "external_id", {"a", "b"}, NOW)
        again = await get_or_create(rows, projects, "external_id", {"b", "c"}, NOW)
    assert set(created) == {"a", "b"} and set(again) == {"b", "c"}
    assert again["b"] == created["b"]
    assert len({*created.values(), again["c"]}) == 3
    assert await db.count("projects") == 3


async def test_a_factorys_transactions_share_the_owner_ids_they_read(sqlite_url: str) -> None:
    """The second event of known owners reads no owner table: the factory's cache has
    their ids (SQLite, whose unit runs every statement through SQLAlchemy)."""
    owners = {"project_id": "p", "user_id": "u", "consumer_type": "T"}
    async with migrated(sqlite_url) as db:
        await db.applier.apply(upsert(new_id(), None, **owners))
        await db.applier.apply(upsert(new_id(), None, **owners))  # now committed: cached
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        event.listen(db.engine.sync_engine, "after_cursor_execute", seen)
        try:
            outcome = await db.applier.apply(upsert(new_id(), None, **owners))
        finally:
            event.remove(db.engine.sync_engine, "after_cursor_execute", seen)
    assert outcome.generation_after == 1
    assert any("INSERT INTO consumers" in s for s in statements), statements
    owner_reads = re.compile(r"\b(FROM|INTO) (projects|users|consumer_types)\b")
    assert [s for s in statements if owner_reads.search(s)] == []


class Forgetful:
    """An ``OwnerRows`` whose inserts are never visible to its reads: a bug."""

    async def ids(self, table: Table, column: str, names: list[str]) -> dict[str, int]:
        return {}

    async def insert(self, table: Table, column: str, names: list[str], now: datetime) -> None:
        return None


async def test_names_that_stay_invisible_after_their_insert_stop_loudly() -> None:
    with pytest.raises(RuntimeError) as caught:
        await get_or_create(Forgetful(), projects, "external_id", {"a"}, NOW, {})
    assert str(caught.value) == "projects: created names are not visible"
