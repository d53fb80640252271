"""The database as start-up lines and messages name it: password masked, a SQLite file
as its resolved path."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store.engine import describe_database


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+asyncpg://app:s3cret@db.internal:5432/consumers",
            "postgresql+asyncpg://app:***@db.internal:5432/consumers",
        ),
        ("postgresql+asyncpg://app@db/consumers", "postgresql+asyncpg://app@db/consumers"),
        ("sqlite+aiosqlite:///data/c.sqlite3", f"sqlite+aiosqlite:///{Path.cwd()}/data/c.sqlite3"),
        ("sqlite+aiosqlite:////var/lib/c.sqlite3", "sqlite+aiosqlite:////var/lib/c.sqlite3"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("not a url", "(not a database URL)"),
    ],
)
def test_describe_database(url: str, shown: str) -> None:
    assert describe_database(url) == shown
    assert "s3cret" not in describe_database(url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:c.sqlite3?mode=ro&uri=true",
    ],
)
def test_a_sqlite_database_that_is_not_a_file_path_is_not_shown_as_one(url: str) -> None:
    """In memory, or an SQLite URI: there is no file in the working folder to name."""
    shown = describe_database(url)
    assert shown.startswith("sqlite+aiosqlite:///")
    assert str(Path.cwd()) not in shown
