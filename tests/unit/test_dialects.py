"""The dialect seam: finding a dialect, refusing unknown databases, and each dialect's
table of transient errors (no database needed: the errors are built by hand)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from service.cli import cli
from service.config import load_settings
from service.domain.errors import ConfigurationError
from service.store.dialects import Dialect, dialect_for, dialect_for_url, known
from service.store.dialects import postgresql as pg
from service.store.dialects import sqlite as lite
from service.store.engine import create_engine
from service.store.errors import DatabaseNotFound, TransientDatabaseError, is_transient


class PgError(Exception):
    """Stands in for an asyncpg server error: it carries a SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server error {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(kind: type[sa_exc.DBAPIError], orig: BaseException) -> sa_exc.DBAPIError:
    return kind("SELECT 1", {}, orig)  # type: ignore[arg-type]


# --- finding a dialect ----------------------------------------------------------------


def test_the_dialects_are_the_modules_of_the_package() -> None:
    assert known() == ("postgresql", "sqlite")
    for name in known():
        dialect = dialect_for(name)
        assert isinstance(dialect, Dialect) and dialect.name == name
    assert dialect_for_url("sqlite+aiosqlite:///x.sqlite3") is lite.DIALECT
    assert dialect_for_url("postgresql+asyncpg://u:p@h:5432/d") is pg.DIALECT
    assert lite.DIALECT.single_writer and not pg.DIALECT.single_writer


@pytest.mark.parametrize("name", ["mysql", "oracle", "Sqlite", "../sqlite", "", "_private"])
def test_an_unknown_dialect_is_a_configuration_error_naming_the_setting(name: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSUMERGEN_DATABASE_URL") as caught:
        dialect_for(name)
    assert "postgresql, sqlite" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql+aiomysql://u@h/d", "no support for the 'mysql' database"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://"),
        ("sqlite+pysqlite:///x", "sqlite+aiosqlite://"),
        ("not a url", "not a database URL"),
    ],
)
def test_an_unusable_url_is_refused_clearly(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSUMERGEN_DATABASE_URL") as caught:
        dialect_for_url(url)
    assert says in str(caught.value)


def test_a_url_with_another_driver_is_told_the_one_to_use() -> None:
    with pytest.raises(ConfigurationError) as caught:
        dialect_for_url("postgresql+psycopg2://u@h/d")
    assert str(caught.value) == (
        "CONSUMERGEN_DATABASE_URL: the service speaks postgresql through"
        " postgresql+asyncpg:// only (asyncio drivers)"
    )


def test_no_engine_for_an_unknown_database() -> None:
    settings = load_settings(database_url="mysql+aiomysql://u@h/d")
    with pytest.raises(ConfigurationError, match="CONSUMERGEN_DATABASE_URL"):
        create_engine(settings)


def test_the_cli_refuses_an_unknown_database_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUMERGEN_DATABASE_URL", "mysql+aiomysql://u@h/d")
    result = CliRunner().invoke(cli, ["show", str(uuid.uuid4())])
    assert result.exit_code == 2
    assert "CONSUMERGEN_DATABASE_URL" in result.output and "mysql" in result.output


# --- PostgreSQL: by SQLSTATE ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("08006", True),  # connection failure
        ("08001", True),  # cannot connect
        ("40001", True),  # serialization failure
        ("40P01", True),  # deadlock
        ("53300", True),  # too many connections
        ("57P01", True),  # admin shutdown
        ("57P03", True),  # cannot connect now (starting up)
        ("58030", True),  # I/O error
        ("55P03", True),  # lock not available
        ("57014", True),  # query cancelled (statement timeout)
        ("25P03", True),  # idle-in-transaction timeout
        ("23505", False),  # unique violation: a bug
        ("42601", False),  # syntax error
        ("22001", False),  # value too long
        ("42P01", False),  # undefined table
        ("57000", False),  # class 57 outside 57P
    ],
)
def test_postgresql_classifies_by_sqlstate(sqlstate: str, transient: bool) -> None:
    error = PgError(sqlstate)
    assert pg.DIALECT.transient(error) is transient
    assert pg.DIALECT.transient(wrapped(sa_exc.DBAPIError, error)) is transient
    assert is_transient(wrapped(sa_exc.OperationalError, error)) is transient


@pytest.mark.parametrize(
    "name",
    [
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "CannotConnectNowError",
        "ConnectionFailureError",
    ],
)
def test_postgresql_driver_connection_errors_without_sqlstate_are_transient(name: str) -> None:
    error = type(name, (Exception,), {})("connection is closed")
    assert pg.DIALECT.transient(error) is True
    assert is_transient(error)


def test_postgresql_has_no_verdict_on_errors_that_are_not_its_own() -> None:
    for error in (ValueError("x"), wrapped(sa_exc.OperationalError, sqlite3.Error("locked"))):
        assert pg.DIALECT.transient(error) is None


# --- SQLite: by message ----------------------------------------------------------------


@pytest.mark.parametrize("message", lite.TRANSIENT_MESSAGES)
def test_sqlite_busy_locked_and_io_messages_are_transient(message: str) -> None:
    error = wrapped(sa_exc.OperationalError, sqlite3.OperationalError(message.upper()))
    assert lite.DIALECT.transient(error) is True
    assert is_transient(error)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (wrapped(sa_exc.OperationalError, sqlite3.OperationalError("no such table: x")), False),
        (wrapped(sa_exc.IntegrityError, sqlite3.IntegrityError("UNIQUE constraint")), False),
        (wrapped(sa_exc.ProgrammingError, sqlite3.ProgrammingError("syntax error")), False),
        (wrapped(sa_exc.InterfaceError, sqlite3.InterfaceError("bad parameter")), True),
    ],
    ids=["operational-other", "integrity", "programming", "interface"],
)
def test_sqlite_other_errors(error: sa_exc.DBAPIError, transient: bool) -> None:
    assert lite.DIALECT.transient(error) is None
    assert is_transient(error) is transient


# --- what every driver shares ------------------------------------------------------------


def _caused_by(cause: BaseException) -> Exception:
    error = RuntimeError("wrapped")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientDatabaseError("down"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (sa_exc.TimeoutError("pool"), True),
        (sa_exc.DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True), True),
        (_caused_by(ConnectionResetError()), True),
        (ValueError("a bug"), False),
        (RuntimeError("a bug"), False),
    ],
    ids=["ours", "oserror", "timeout", "pool-timeout", "invalidated", "cause", "value", "runtime"],
)
def test_is_transient_outside_the_dialects(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


# --- where the SQLSTATE is found -----------------------------------------------------------


def test_postgresql_reads_the_sqlstate_of_the_errors_cause() -> None:
    """An error raised ``from`` a real asyncpg error (no ``orig``) is classified by its
    cause's SQLSTATE: a deadlock is transient, a unique violation is a bug."""
    deadlock = RuntimeError("batch failed")
    deadlock.__cause__ = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    duplicate = RuntimeError("batch failed")
    duplicate.__cause__ = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert pg.sqlstate(deadlock) == "40P01"
    assert pg.DIALECT.transient(deadlock) is True
    assert pg.DIALECT.transient(duplicate) is False


class PgcodeError(Exception):
    """Stands in for a driver that names the SQLSTATE ``pgcode`` (psycopg's spelling)."""

    pgcode = "40001"


def test_postgresql_reads_a_sqlstate_spelled_pgcode() -> None:
    assert pg.sqlstate(PgcodeError("could not serialize access")) == "40001"
    assert pg.DIALECT.transient(wrapped(sa_exc.DBAPIError, PgcodeError())) is True


@pytest.mark.parametrize("blank", ["", 40001], ids=["empty", "not-text"])
def test_a_blank_or_non_text_sqlstate_is_passed_over_for_the_drivers(blank: object) -> None:
    """Only a non-empty string is a SQLSTATE: the wrapped driver error's is used."""
    error = wrapped(sa_exc.DBAPIError, asyncpg.exceptions.SerializationError("retry"))
    error.sqlstate = blank  # type: ignore[attr-defined]
    assert pg.sqlstate(error) == "40001"
    assert pg.DIALECT.transient(error) is True


def test_postgresql_durability_problems_of_a_partial_show() -> None:
    """A setting missing from what was shown is no problem (nothing known against it)."""
    assert pg.durability_problems({}) == []
    (problem,) = pg.durability_problems({"fsync": " OFF "})
    assert problem.startswith("fsync=off:")


# --- SQLite: the driver's message, the file a URL names ----------------------------------


def test_sqlite_classifies_by_the_drivers_message_not_the_statement_or_its_values() -> None:
    """A real "no such table" (a bug) whose bound value reads like a busy message stays
    a bug: SQLAlchemy's text of the error carries the parameters, the driver's does not."""
    engine = create_sync_engine("sqlite://")
    with engine.connect() as connection, pytest.raises(sa_exc.OperationalError) as caught:
        connection.execute(text("SELECT * FROM nowhere WHERE x = :x"), {"x": "database is locked"})
    engine.dispose()
    assert "database is locked" in str(caught.value)  # the parameters, in SQLAlchemy's text
    assert lite.DIALECT.transient(caught.value) is None
    assert is_transient(caught.value) is False


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:somewhere.sqlite3?mode=ro&uri=true",
    ],
    ids=["no-database", "memory", "uri"],
)
def test_sqlite_urls_that_name_no_plain_file(url: str) -> None:
    """Memory, and a URI the operator wrote: no file of ours, so no group writer (it
    would open a database of its own) and a read-only engine takes the URL as it is."""
    settings = load_settings(database_url=url)
    assert lite.database_path(url) is None
    assert lite.DIALECT.group_writer(settings) is None
    assert lite.existing_file_url(url, "ro") == url


def test_a_missing_sqlite_file_is_named_with_the_way_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite3"
    with pytest.raises(DatabaseNotFound) as caught:
        lite.existing_file_url(f"sqlite+aiosqlite:///{path}", "rw")
    assert str(caught.value) == (
        f"no SQLite database at {path} (CONSUMERGEN_DATABASE_URL); nothing was created."
        " Check the path (a relative one is taken from the current folder), or create"
        " the database there with `consumergen db upgrade`"
    )
    assert not path.exists()
