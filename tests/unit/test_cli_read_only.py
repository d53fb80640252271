"""No command but ``db upgrade`` creates a database: a wrong SQLite path (or a run from
another folder) is a clear error naming the resolved path, exit 2, and no file appears.
The read-only commands open it read-only.

Against an existing database they read it, and Alembic's INFO lines stay out of their
output (those belong to ``db upgrade``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.store.migrate import upgrade

UUID = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"


def _read_only_commands(archive: Path) -> list[list[str]]:
    return [
        ["show", UUID],
        ["show", UUID, "--json"],
        ["db", "current"],
        ["db", "prune", "--dry-run"],
        ["verify", "--archive", str(archive)],
        ["replay", "--dry-run", "--archive", str(archive)],
        # These write, into an existing database only: only `db upgrade` creates one.
        ["replay", "--archive", str(archive)],
        ["run"],
    ]


@pytest.mark.parametrize("index", range(8))
def test_a_missing_database_is_named_and_not_created(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "empty.jsonl"
    archive.write_text("")
    args = _read_only_commands(archive)[index]
    elsewhere = tmp_path / "another-folder"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative path, run from another folder
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(elsewhere))
    result = CliRunner().invoke(
        cli,
        [*args[:1], *args[1:], "--database-url", "sqlite+aiosqlite:///consumergen.sqlite3"]
        if args[0] != "db"
        else [*args[:2], "--database-url", "sqlite+aiosqlite:///consumergen.sqlite3", *args[2:]],
        catch_exceptions=False,
    )
    assert result.exit_code == 2, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert f"no SQLite database at {elsewhere / 'consumergen.sqlite3'}" in last
    assert "nothing was created" in last
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(elsewhere))) == before


def test_read_only_commands_read_an_existing_database_quietly(tmp_path: Path) -> None:
    database = tmp_path / "live.sqlite3"
    url = f"sqlite+aiosqlite:///{database}"
    asyncio.run(upgrade(url))
    before = database.stat().st_mtime_ns, database.stat().st_size
    env = {"CONSUMERGEN_DATABASE_URL": url, "CONSUMERGEN_LOG_LEVEL": "INFO"}
    show = CliRunner().invoke(cli, ["show", UUID, "--json"], env=env, catch_exceptions=False)
    assert show.exit_code == 1, show.stderr  # no such consumer: the work's answer
    assert '"found": false' in show.stdout
    current = CliRunner().invoke(cli, ["db", "current"], env=env, catch_exceptions=False)
    assert current.exit_code == 0 and "(head)" in current.stdout
    for result in (show, current):
        assert "Context impl" not in result.stderr and "Will assume" not in result.stderr
    assert (database.stat().st_mtime_ns, database.stat().st_size) == before
