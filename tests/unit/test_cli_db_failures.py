"""`consumergen db`'s one place for database trouble (``service/cli/db.py``'s ``_run``):
each kind of failure is one line on stderr naming the verb and what happened, with its
exit code (a database missing for a read 2; the database unreachable, locked or on
another schema 1; anything else from the driver 1, described without its SQL); the
engine it opens is read-only when asked, so a read creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli import db
from service.config import Settings, load_settings
from service.store.errors import DatabaseNotFound, SchemaNotCurrentError, TransientDatabaseError


def settings(tmp_path: Path) -> Settings:
    return load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (DatabaseNotFound("no such file x.db"), 2, "consumergen db current: no such file x.db"),
        (TransientDatabaseError("locked"), 1, "consumergen db current: locked"),
        (
            SchemaNotCurrentError("at 0001, needs 0002"),
            1,
            "consumergen db current: at 0001, needs 0002",
        ),
        (
            PermissionError("folder not writable\nsecond line"),
            1,
            "consumergen db current: database error: PermissionError: folder not writable",
        ),
    ],
)
def test_each_failure_is_one_line_and_its_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
    line: str,
) -> None:
    async def work(_: AsyncEngine) -> None:
        raise error

    with pytest.raises(SystemExit) as stopped:
        db._run("current", settings(tmp_path), work)
    assert stopped.value.code == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


def test_work_gets_an_engine_read_only_when_asked(tmp_path: Path) -> None:
    """A read-only engine on a missing SQLite file refuses to open it (and creates
    nothing); the default engine makes it."""
    seen: list[str] = []

    async def work(engine: AsyncEngine) -> str:
        async with engine.connect() as connection:
            seen.append(str(connection.dialect.name))
        return "done"

    with pytest.raises(SystemExit) as stopped:
        db._run("current", settings(tmp_path), work, read_only=True)
    assert stopped.value.code == 2 and not (tmp_path / "x.db").exists()
    assert db._run("upgrade", settings(tmp_path), work) == "done"
    assert seen == ["sqlite"] and (tmp_path / "x.db").exists()


def test_a_failure_s_default_exit_code_is_1(capsys: pytest.CaptureFixture[str]) -> None:
    stop = db._fail("prune", "went wrong")
    assert isinstance(stop, SystemExit) and stop.code == 1
    assert capsys.readouterr().err == "consumergen db prune: went wrong\n"
