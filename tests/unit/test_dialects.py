"""The dialect seam: finding a dialect, refusing unknown databases, and each dialect's
table of transient errors (no database needed: the errors are built by hand)."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import exc as sa_exc

from service.cli import cli
from service.config import load_settings
from service.domain.errors import ConfigurationError
from service.store.dialects import Dialect, dialect_for, dialect_for_url, known
from service.store.dialects import postgresql as pg
from service.store.dialects import sqlite as lite
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError, is_transient


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
