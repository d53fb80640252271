"""A migrated database (SQLite file and PostgreSQL, via ``database_url``) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.apply.helpers import Db, migrated


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    async with migrated(database_url) as handle:
        yield handle
