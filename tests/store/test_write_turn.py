"""One factory's write transactions on SQLite take turns in-process
(``SqlUnitOfWorkFactory.write_turn``, which the group writer and the daemon queue on
too); read-only ones do not take it, and PostgreSQL has none."""

from __future__ import annotations

import asyncio

from service.store.unit_of_work import SqlUnitOfWorkFactory
from tests.apply.helpers import migrated, new_id


async def test_a_sqlite_writer_holds_the_factorys_turn_until_it_ends(sqlite_url: str) -> None:
    async with migrated(sqlite_url) as db:
        units = SqlUnitOfWorkFactory(db.engine)
        turn = units.write_turn
        assert isinstance(turn, asyncio.Lock)
        async with units.begin(read_only=True) as reader:
            await reader.load_consumers([new_id()])
            assert not turn.locked()
        async with units.begin() as writer:
            await writer.load_consumers([new_id()])
            assert turn.locked()
        assert not turn.locked()


async def test_postgresql_takes_concurrent_writers(postgres_url: str) -> None:
    async with migrated(postgres_url) as db:
        units = SqlUnitOfWorkFactory(db.engine)
        assert units.write_turn is None
        async with units.begin() as first, units.begin() as second:
            await first.load_consumers([new_id()])
            await second.load_consumers([new_id()])
