"""service/failures.classify: each failure class is recognised positively."""

from __future__ import annotations

import sqlite3
import ssl

import pytest
from aiokafka import errors as kafka_errors
from asyncpg import exceptions as pg_errors
from sqlalchemy import exc as sa_exc

from service.failures import (
    FailureClass,
    classify,
    database_unavailable,
    infrastructure_kind,
    is_infrastructure,
)
from service.store.errors import TransientDatabaseError, is_transient


def _operational(message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


def _verify_failed(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    error.verify_code = code
    return error


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}]")
    error.reason = reason
    return error


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


CASES: list[tuple[str, BaseException, FailureClass, str | None]] = [
    # The broker cannot serve now.
    (
        "kafka connection",
        kafka_errors.KafkaConnectionError("refused"),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "request timed out",
        kafka_errors.RequestTimedOutError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "leader moved",
        kafka_errors.NotLeaderForPartitionError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "no coordinator",
        kafka_errors.CoordinatorNotAvailableError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    (
        "not coordinator",
        kafka_errors.NotCoordinatorForGroupError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("node not ready", kafka_errors.NodeNotReadyError(), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "too few replicas",
        kafka_errors.NotEnoughReplicasError(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("client timeout", kafka_errors.KafkaTimeoutError(), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "producer sequence",
        kafka_errors.OutOfOrderSequenceNumber(),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    ("connection reset", ConnectionResetError(), FailureClass.INFRASTRUCTURE, "broker"),
    ("timeout", TimeoutError(), FailureClass.INFRASTRUCTURE, "broker"),
    # A certificate the TLS handshake refused: mended outside the process, then resumed.
    ("tls untrusted", _verify_failed(20), FailureClass.INFRASTRUCTURE, "broker"),
    ("tls expired", _verify_failed(10), FailureClass.INFRASTRUCTURE, "broker"),
    ("tls wrong host", _verify_failed(64), FailureClass.INFRASTRUCTURE, "broker"),
    (
        "tls client cert refused",
        _ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
        FailureClass.INFRASTRUCTURE,
        "broker",
    ),
    # The database cannot serve now.
    ("transient db", TransientDatabaseError("down"), FailureClass.INFRASTRUCTURE, "database"),
    ("sqlite locked", _operational("database is locked"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg connection failure", _PgError("08006"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg serialization", _PgError("40001"), FailureClass.INFRASTRUCTURE, "database"),
    ("pg shutting down", _PgError("57P01"), FailureClass.INFRASTRUCTURE, "database"),
    # The broker refuses the record itself.
    ("message too large", kafka_errors.MessageSizeTooLargeError(), FailureClass.RECORD, None),
    ("record too large", kafka_errors.RecordTooLargeError(), FailureClass.RECORD, None),
    # Ours.
    ("value error", ValueError("x"), FailureClass.BUG, None),
    ("key error", KeyError("x"), FailureClass.BUG, None),
    (
        "integrity error",
        sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
        FailureClass.BUG,
        None,
    ),
    ("pg unique violation", _PgError("23505"), FailureClass.BUG, None),
    ("sqlite syntax", _operational('near "SELEC": syntax error'), FailureClass.BUG, None),
    ("topic authorization", kafka_errors.TopicAuthorizationFailedError(), FailureClass.BUG, None),
    ("illegal state", kafka_errors.IllegalStateError("x"), FailureClass.BUG, None),
    ("assertion", AssertionError("invariant"), FailureClass.BUG, None),
]


@pytest.mark.parametrize(
    ("error", "expected", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(error: BaseException, expected: FailureClass, kind: str | None) -> None:
    assert classify(error) is expected
    assert infrastructure_kind(error) == kind
    assert is_infrastructure(error) is (expected is FailureClass.INFRASTRUCTURE)


def _wrapped(kind: type[sa_exc.DBAPIError], orig: BaseException) -> sa_exc.DBAPIError:
    return kind("INSERT INTO processed_events ...", {}, orig)


DATABASE_CASES: list[tuple[str, BaseException, bool]] = [
    # Known infrastructure failures of the database: transient, retried after a pause.
    ("ours", TransientDatabaseError("down"), True),
    ("connection refused", ConnectionRefusedError(111, "refused"), True),
    ("connection reset", ConnectionResetError(104, "reset"), True),
    ("timeout", TimeoutError(), True),
    ("pool timeout", sa_exc.TimeoutError("QueuePool limit"), True),
    (
        "invalidated connection",
        sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
        True,
    ),
    ("sqlite locked", _operational("database is locked"), True),
    ("sqlite busy", _operational("database is busy"), True),
    ("sqlite disk i/o", _operational("disk I/O error"), True),
    ("pg admin shutdown", _wrapped(sa_exc.OperationalError, _PgError("57P01")), True),
    ("pg connection failure", _wrapped(sa_exc.OperationalError, _PgError("08006")), True),
    ("pg deadlock", _wrapped(sa_exc.OperationalError, _PgError("40P01")), True),
    ("pg serialization", _wrapped(sa_exc.OperationalError, _PgError("40001")), True),
    ("pg too many connections", _wrapped(sa_exc.OperationalError, _PgError("53300")), True),
    # The same, as asyncpg's own exception classes (wrapped as SQLAlchemy wraps them).
    (
        "asyncpg admin shutdown",
        _wrapped(sa_exc.OperationalError, pg_errors.AdminShutdownError()),
        True,
    ),
    (
        "asyncpg deadlock",
        _wrapped(sa_exc.OperationalError, pg_errors.DeadlockDetectedError()),
        True,
    ),
    (
        "asyncpg serialization",
        _wrapped(sa_exc.OperationalError, pg_errors.SerializationError()),
        True,
    ),
    ("asyncpg connection gone", pg_errors.ConnectionDoesNotExistError(), True),
    # As asyncpg raises them itself, outside SQLAlchemy's wrapping: PostgreSQL's unit of
    # work (service/store/postgresql_unit.py) sends its statements straight to asyncpg.
    ("asyncpg admin shutdown, unwrapped", pg_errors.AdminShutdownError(), True),
    ("asyncpg cannot connect now, unwrapped", pg_errors.CannotConnectNowError(), True),
    ("asyncpg connection failure, unwrapped", pg_errors.ConnectionFailureError(), True),
    (
        "asyncpg connection closed, unwrapped",
        pg_errors.InterfaceError("connection is closed"),
        True,
    ),
    ("asyncpg deadlock, unwrapped", pg_errors.DeadlockDetectedError(), True),
    ("asyncpg serialization, unwrapped", pg_errors.SerializationError(), True),
    ("asyncpg too many connections, unwrapped", pg_errors.TooManyConnectionsError(), True),
    ("asyncpg statement timeout, unwrapped", pg_errors.QueryCanceledError(), True),
    ("asyncpg lock timeout, unwrapped", pg_errors.LockNotAvailableError(), True),
    ("asyncpg unique violation, unwrapped", pg_errors.UniqueViolationError(), False),
    ("asyncpg check violation, unwrapped", pg_errors.CheckViolationError(), False),
    ("asyncpg syntax error, unwrapped", pg_errors.PostgresSyntaxError(), False),
    ("asyncpg undefined table, unwrapped", pg_errors.UndefinedTableError(), False),
    ("asyncpg value too long, unwrapped", pg_errors.StringDataRightTruncationError(), False),
    ("asyncpg data exception, unwrapped", pg_errors.DataError("invalid input"), False),
    # Bugs: never "transient", whatever they look like.
    (
        "asyncpg unique violation",
        _wrapped(sa_exc.IntegrityError, pg_errors.UniqueViolationError()),
        False,
    ),
    (
        "asyncpg check violation",
        _wrapped(sa_exc.IntegrityError, pg_errors.CheckViolationError()),
        False,
    ),
    (
        "asyncpg syntax error",
        _wrapped(sa_exc.ProgrammingError, pg_errors.PostgresSyntaxError()),
        False,
    ),
    ("value error", ValueError("x"), False),
    ("key error", KeyError("x"), False),
    ("assertion", AssertionError("invariant"), False),
    ("runtime error", RuntimeError("x"), False),
    (
        "sqlite integrity",
        _wrapped(sa_exc.IntegrityError, sqlite3.IntegrityError("UNIQUE constraint failed")),
        False,
    ),
    ("pg unique violation", _wrapped(sa_exc.IntegrityError, _PgError("23505")), False),
    ("pg check violation", _wrapped(sa_exc.IntegrityError, _PgError("23514")), False),
    ("pg syntax error", _wrapped(sa_exc.ProgrammingError, _PgError("42601")), False),
    ("sqlite no such table", _operational("no such table: consumers"), False),
]


@pytest.mark.parametrize(
    ("error", "transient"), [c[1:] for c in DATABASE_CASES], ids=[c[0] for c in DATABASE_CASES]
)
def test_known_infrastructure_errors_are_transient_and_bugs_are_not(
    error: BaseException, transient: bool
) -> None:
    """DESIGN.md, failure classes: the infrastructure is "recognised positively by the
    error, never by 'anything else'"; a bug (ValueError, KeyError, IntegrityError, ...)
    is never taken for a database that is down.  ``is_transient`` is the store's own
    line; ``classify`` is what the daemon acts on."""
    assert is_transient(error) is transient
    assert database_unavailable(error) is transient
    assert classify(error) is (FailureClass.INFRASTRUCTURE if transient else FailureClass.BUG)
